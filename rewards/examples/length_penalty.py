"""A custom reward with settings: a penalty for completions longer than a budget.

Use it from a recipe (``kwargs`` makes ``length_penalty`` a factory, called with them):

    rewards:
      - {name: gsm8k_correctness}
      - {name: rewards/examples/length_penalty.py:length_penalty, weight: 1.0, kwargs: {max_chars: 800}}

It is logged as ``rewards/length_penalty/mean``.
"""

from collections.abc import Callable
from typing import Any

from rewards.parsing import completion_text


def length_penalty(max_chars: int = 1000, per_char: float = 0.001) -> Callable[..., list[float]]:
    """Make a reward that costs ``per_char`` for each character beyond ``max_chars`` (0 within it).

    Each setting is checked here, when the recipe loads, rather than at the first training step.
    """
    if max_chars < 0 or per_char < 0:
        raise ValueError(f"max_chars and per_char must be >= 0, got max_chars={max_chars}, per_char={per_char}")

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        excess = [max(0, len(completion_text(completion)) - max_chars) for completion in completions]
        return [-per_char * chars if chars else 0.0 for chars in excess]

    return reward
