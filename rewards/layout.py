"""The R1 answer layout, written once: its tags, the text a well-formed completion is, and the
system prompt that asks for it.

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

The tag names are a setting: ``Layout(reasoning="think")`` is DeepSeek-R1's ``<think>`` layout.
The format and correctness rewards score against a layout (the built-ins take it as
``kwargs: {tags: {reasoning: think}}``), the cold start trains on reference solutions rendered
with ``Layout.text``, and ``rewards check`` builds its sample completions with it. ``R1`` is the
seed's layout, the default everywhere. Nothing here imports anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_TAG_NAME = re.compile(r"[A-Za-z][\w.-]*")


@dataclass(frozen=True)
class Layout:
    """The names of the two tags a completion is laid out in: ``<reasoning>`` and ``<answer>`` by default."""

    reasoning: str = "reasoning"
    answer: str = "answer"

    def __post_init__(self) -> None:
        for role in ("reasoning", "answer"):
            name = getattr(self, role)
            if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
                raise ValueError(
                    f"tag name {name!r} for the {role} is not a tag name; write the bare name, e.g. "
                    f"tags: {{{role}: {'think' if role == 'reasoning' else 'answer'}}} (no '<' or '>')"
                )
        if self.reasoning == self.answer:
            raise ValueError(f"the reasoning and answer tags are both {self.reasoning!r}; give them different names")

    @property
    def reasoning_open(self) -> str:
        return f"<{self.reasoning}>"

    @property
    def reasoning_close(self) -> str:
        return f"</{self.reasoning}>"

    @property
    def answer_open(self) -> str:
        return f"<{self.answer}>"

    @property
    def answer_close(self) -> str:
        return f"</{self.answer}>"

    @property
    def tags(self) -> tuple[str, str, str, str]:
        """The four tags in the order they must come."""
        return (self.reasoning_open, self.reasoning_close, self.answer_open, self.answer_close)

    def text(self, reasoning: str, answer: str) -> str:
        """A completion in the exact layout (what ``strict_format`` pays for), without a final newline:
        a model ends it with its end-of-sequence token."""
        parts = (self.reasoning_open, reasoning, self.reasoning_close, self.answer_open, answer, self.answer_close)
        return "\n".join(parts)

    def system_prompt(self) -> str:
        """The system prompt that asks for this layout (the seed's, for the default tags)."""
        return f"Respond in the following format:\n{self.text('...', '...')}"


R1 = Layout()

# The default layout's tags and prompt, for code that does not take a layout.
REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = R1.tags
TAGS = R1.tags
SYSTEM_PROMPT = R1.system_prompt()


def layout_from(tags: Mapping[str, Any] | None) -> Layout:
    """The layout a reward's ``tags`` setting names: ``{reasoning: think}``, ``{answer: final}``, both, or None.

    Raises ValueError naming the fix for unknown keys or names that are not tag names.
    """
    if tags is None:
        return R1
    if isinstance(tags, Layout):
        return tags
    if not isinstance(tags, Mapping):
        raise ValueError(f"tags must be a mapping such as {{reasoning: think, answer: answer}}, got {tags!r}")
    unknown = sorted(set(tags) - {"reasoning", "answer"})
    if unknown:
        raise ValueError(
            f"tags has unknown keys {unknown}; it takes 'reasoning' and 'answer', "
            "e.g. {reasoning: think, answer: answer}"
        )
    return Layout(**{str(key): value for key, value in tags.items()})


def r1_text(reasoning: str, answer: str) -> str:
    """``R1.text``: a completion in the seed's exact layout."""
    return R1.text(reasoning, answer)
