"""A reward for benchmarks only: it varies from completion to completion and teaches nothing.

A model at random init (``model.init: random``, the bench recipes) writes noise, so every
learning reward pays each completion of a group the same (usually 0): every advantage is 0,
the loss and the gradient are 0, and a benchmark of such steps does not time the path a real
run takes. ``text_hash`` pays each completion a pseudo-random value in [0, 1) drawn from a hash
of its text, so the completions of a group differ, the advantages and the gradient are not 0,
and the optimizer really moves the adapter. The same text always gets the same value (no
random state, nothing to seed), on any machine.

    rewards:
      - {name: rewards.benchmark:text_hash}

It pays for nothing a model can learn on purpose: never use it to train.
"""

import hashlib
from typing import Any

from rewards.parsing import Completion, completion_text

_HASH_BYTES = 8  # 64 bits of the hash: values 2**-64 apart, far finer than any reward scale


def text_hash_value(text: str) -> float:
    """A deterministic value in [0, 1) for `text`: its BLAKE2b hash read as a fraction of 2**64."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=_HASH_BYTES).digest()
    return int.from_bytes(digest, "big") / 2 ** (8 * _HASH_BYTES)


def text_hash(prompts: list[Any], completions: list[Completion], **kwargs: Any) -> list[float]:
    """Benchmarking reward: each completion's text hashed to a value in [0, 1) (see the module doc).

    TRL's signature; plain-text and conversational completions of the same text score the same.
    Never None: every completion has a text, if only the empty one.
    """
    return [text_hash_value(completion_text(completion)) for completion in completions]
