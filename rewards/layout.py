"""The R1 answer layout, written once: the tags, the text a well-formed completion is, and the
system prompt that asks for it.

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

The format rewards score against these tags, the default system prompt asks for this layout,
the cold start trains on reference solutions rendered with `r1_text`, and `rewards check` builds
its sample completions with it. Nothing here imports anything.
"""

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# The tags in the order they must come.
TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

SYSTEM_PROMPT = (
    "Respond in the following format:\n"
    f"{REASONING_OPEN}\n...\n{REASONING_CLOSE}\n"
    f"{ANSWER_OPEN}\n...\n{ANSWER_CLOSE}"
)


def r1_text(reasoning: str, answer: str) -> str:
    """A completion in the exact layout (what `strict_format` pays for), without a final newline:
    a model ends it with its end-of-sequence token."""
    return f"{REASONING_OPEN}\n{reasoning}\n{REASONING_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}"
