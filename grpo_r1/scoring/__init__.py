"""The machinery around reward functions: load, check, guard and tabulate them.

The rewards themselves live in the top-level `rewards/` library (built-ins, and where users add
their own); this package is how a recipe's `rewards:` list becomes the guarded functions TRL calls:

    loading.py    names -> functions (built-ins, modules, files, factories), each checked and guarded
    signature.py  whether TRL can call a function with the dataset's columns
    guard.py      a reward that raises or returns garbage stops the run, naming it and the completion
    table.py      every reward on sample completions, as TRL scores them at a step
    samples.py    sample completions of a row, and the call of every reward on them before training
    check.py      `python -m grpo_r1.rewards check`: the table for a recipe's own data
"""

from grpo_r1.scoring.guard import RewardFunc, guard_reward
from grpo_r1.scoring.loading import load_reward_functions, resolve_reward, reward_name
from grpo_r1.scoring.samples import sample_completions, try_rewards_on_samples
from grpo_r1.scoring.signature import NOT_PASSED_COLUMNS, TRL_KEYWORDS, check_reward_signature, passed_keywords
from grpo_r1.scoring.table import RewardRow, format_reward_table, print_reward_table, reward_table

__all__ = [
    "NOT_PASSED_COLUMNS",
    "TRL_KEYWORDS",
    "RewardFunc",
    "RewardRow",
    "check_reward_signature",
    "format_reward_table",
    "guard_reward",
    "load_reward_functions",
    "passed_keywords",
    "print_reward_table",
    "resolve_reward",
    "reward_name",
    "reward_table",
    "sample_completions",
    "try_rewards_on_samples",
]
