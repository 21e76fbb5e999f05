"""Errors grpo_r1 raises for bad input.

Every error here is meant for a person: its message says what was wrong and how to fix it.
The command-line entry points print such an error on one line and exit with status 2,
without a traceback; anything else is a bug and keeps its traceback.
"""


class GrpoR1Error(Exception):
    """Base class of the errors that name a fix."""


class RecipeError(GrpoR1Error):
    """The recipe (YAML file or command-line override) is malformed or inconsistent."""


class DataError(GrpoR1Error):
    """The dataset is missing, empty or lacks a column the run needs."""


class RewardError(GrpoR1Error):
    """A reward function cannot be loaded, has a bad signature, or misbehaved during training."""


class ModelError(GrpoR1Error):
    """The model, tokenizer or backend cannot be loaded on this machine."""


class EngineError(GrpoR1Error):
    """The generation engine cannot run here or returned something unusable."""


class StorageError(GrpoR1Error):
    """The run folder cannot be written: the disk is full (or over quota)."""


class ExportError(GrpoR1Error):
    """The run folder, the output folder or the hub push cannot be used as asked (python -m grpo_r1.export)."""
