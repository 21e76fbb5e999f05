"""The reward library: built-in GRPO rewards and the registry a recipe names them by.

Every reward has TRL's signature ``f(prompts, completions, **columns) -> list[float | None]``
and takes conversational or plain-text completions. A recipe names a built-in by its key
below; ``grpo_r1.scoring.load_reward_functions`` imports only the modules of the rewards a
recipe selects, so this file stays a plain table (no imports of the reward modules here).
See ``rewards/README.md`` for what each reward scores and how to write your own.
"""

# Built-in name -> "module:factory". Each factory takes the built-ins' one setting, the tag names
# (``tags={"reasoning": "think"}``; default the seed's <reasoning>/<answer>), and returns the reward
# function; the module also holds that function made with the defaults, under the built-in's name
# (``rewards.format.xml_count``). The seed's five come first, with their published scales built in
# (a recipe's weight multiplies on top, default 1.0).
BUILTIN_REWARDS: dict[str, str] = {
    # The seed's rewards (willccbb's GRPO gist / Unsloth's Qwen2.5 GRPO notebook), multi-line safe.
    "xml_count": "rewards.format:xml_count_reward",  # max 0.5
    "soft_format": "rewards.format:soft_format_reward",  # max 0.5
    "strict_format": "rewards.format:strict_format_reward",  # max 0.5
    "int_answer": "rewards.format:int_answer_reward",  # max 0.5
    "gsm8k_correctness": "rewards.correctness:gsm8k_correctness_reward",  # max 2.0
    # Partial credit for weak models that never emit the tags on their own.
    "graded_format": "rewards.format:graded_format_reward",  # max 0.5
    "lenient_correctness": "rewards.correctness:lenient_correctness_reward",  # max 2.0 (1.0 without tags)
    # General math answers (fractions, LaTeX, \boxed{}) checked by math-verify.
    "math_correctness": "rewards.mathverify:math_correctness_reward",  # max 2.0
}

# The rewards that reproduce the seed recipe, in the seed's order, each with weight 1.0.
SEED_REWARDS: tuple[str, ...] = (
    "xml_count",
    "soft_format",
    "strict_format",
    "int_answer",
    "gsm8k_correctness",
)
