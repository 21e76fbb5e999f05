"""Load, check and guard the reward functions a recipe names, and tabulate what they score.

A recipe lists its rewards as ``rewards: [{name: ..., weight: ..., kwargs: {...}}]``. A name is
one of three forms:

    gsm8k_correctness                       a built-in (see rewards/__init__.py)
    my_package.my_rewards:brevity           a function in an importable module
    rewards/examples/length_penalty.py:length_penalty
                                            a function in a file, relative to the recipe's
                                            folder or the current directory

With non-empty ``kwargs`` the named object is a factory: it is called with them and must return
the reward function. Each reward is logged by TRL as ``rewards/<name>/mean`` where ``<name>`` is
the last part of the name you wrote (``brevity``, ``length_penalty``), whatever the factory's
inner function is called, so two rewards may not share it.

``load_reward_functions`` does everything that can go wrong before a model loads: it imports
only the selected rewards, checks each signature against the dataset's columns, and wraps each
in ``guard_reward`` so that during training a reward that raises or returns garbage stops the
run with a ``RewardError`` naming the reward and the completion, never a silent zero.
"""

import asyncio
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import re
import statistics
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TextIO

from grpo_r1.errors import DataError, RewardError
from rewards import BUILTIN_REWARDS
from rewards.parsing import completion_text, excerpt, gold_number

RewardFunc = Callable[..., Any]

# What GRPOTrainer (TRL 1.14.2, _calculate_rewards) passes to every reward function, all as
# keywords, besides the dataset columns.
TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
# Dataset columns TRL does not pass on under their own name (the prompt arrives as ``prompts``).
NOT_PASSED_COLUMNS = ("prompt", "completion", "completion_ids")
# Installable names of modules the built-ins need, for "pip install" hints.
PIP_NAMES = {"math_verify": "math-verify", "latex2sympy2_extended": "math-verify", "sympy": "sympy"}

_GUARDED = "__grpo_r1_guarded__"
_FILE_MODULE_PREFIX = "grpo_r1_reward_file_"


class RewardSpecLike(Protocol):
    """What ``load_reward_functions`` reads from a recipe's reward entry (``recipe.RewardSpec``)."""

    name: str
    weight: float
    kwargs: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_reward_functions(
    specs: Sequence[RewardSpecLike], columns: Iterable[str], base_dir: Path | None = None
) -> list[RewardFunc]:
    """Import, check and guard the rewards a recipe names, in order; raise RewardError on any problem.

    Args:
        specs: the recipe's reward entries (``name``, ``weight``, ``kwargs``).
        columns: the training dataset's column names; TRL passes each (but ``prompt``) to every reward.
        base_dir: the recipe file's folder; relative file paths are looked up there, then in the cwd.

    Returns:
        The guarded reward functions, each named as TRL will log it. Their weights stay in the
        specs: pass ``[spec.weight for spec in specs]`` as ``GRPOConfig.reward_weights``.
    """
    columns = list(columns)
    if not specs:
        raise RewardError(
            "the recipe names no rewards, so GRPO has nothing to learn from; add some, e.g. "
            "rewards: [{name: gsm8k_correctness}, {name: strict_format}]"
        )
    names = [_check_spec(index, spec) for index, spec in enumerate(specs)]
    _check_unique(specs, names)
    funcs = []
    for spec, name in zip(specs, names, strict=True):
        func = resolve_reward(spec.name, spec.kwargs or {}, base_dir)
        check_reward_signature(func, name, columns)
        funcs.append(guard_reward(func, name))
    return funcs


def reward_name(spec_name: str) -> str:
    """The name a reward is logged under: the built-in name, or the part after the last ":"."""
    return spec_name.rsplit(":", 1)[-1].strip()


def resolve_reward(spec_name: str, kwargs: Mapping[str, Any], base_dir: Path | None = None) -> RewardFunc:
    """Import the object ``spec_name`` names and, when ``kwargs`` are given, call it as a factory."""
    if ":" not in spec_name:
        if spec_name not in BUILTIN_REWARDS:
            raise RewardError(_unknown_builtin_message(spec_name))
        if kwargs:
            raise RewardError(
                f"reward {spec_name!r} is a built-in and takes no kwargs (got {dict(kwargs)}); scale it with "
                "'weight', or copy it into your own file and name that (see rewards/README.md)"
            )
        module_name, attribute = BUILTIN_REWARDS[spec_name].split(":")
        return _get_attribute(_import_module(module_name, spec_name), attribute, spec_name)
    source, attribute = (part.strip() for part in spec_name.rsplit(":", 1))
    if not attribute.isidentifier():
        raise RewardError(
            f"reward {spec_name!r}: {attribute!r} after the ':' is not a function name; "
            "write 'package.module:function' or 'path/to/file.py:function'"
        )
    if source.endswith(".py") or "/" in source or "\\" in source:
        module = _import_file(source, spec_name, base_dir)
    else:
        module = _import_module(source, spec_name)
    obj = _get_attribute(module, attribute, spec_name)
    if kwargs:
        obj = _call_factory(obj, kwargs, spec_name)
    elif not callable(obj):
        raise RewardError(
            f"reward {spec_name!r} is a {type(obj).__name__}, not a function; name a function "
            "f(prompts, completions, **kwargs) -> list[float | None]"
        )
    return obj


def _check_spec(index: int, spec: RewardSpecLike) -> str:
    """Check one entry's fields and return its logged name."""
    where = f"rewards[{index}]"
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise RewardError(
            f"{where} has no name; give a built-in ({', '.join(BUILTIN_REWARDS)}), "
            "'package.module:function' or 'path/to/file.py:function'"
        )
    weight = getattr(spec, "weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise RewardError(f"{where} ({name!r}) has weight {weight!r}; give a finite number such as 1.0")
    kwargs = getattr(spec, "kwargs", None)
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise RewardError(
            f"{where} ({name!r}) has kwargs {kwargs!r}; give a mapping of setting names to values, "
            "e.g. kwargs: {max_chars: 400}"
        )
    return reward_name(name.strip())


def _check_unique(specs: Sequence[RewardSpecLike], names: list[str]) -> None:
    """Two rewards with one name would overwrite each other's rewards/<name>/mean: refuse them."""
    first_index: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first_index:
            earlier = first_index[name]
            raise RewardError(
                f"rewards[{earlier}] ({specs[earlier].name!r}) and rewards[{index}] ({specs[index].name!r}) "
                f"are both named {name!r}, and TRL logs each reward as rewards/<name>/mean; remove the "
                "duplicate or, to use one reward twice with different settings, bind the settings under a "
                "new name in a file of your own (e.g. short_penalty = length_penalty(max_chars=200)) and "
                "name that"
            )
        first_index[name] = index


def _unknown_builtin_message(spec_name: str) -> str:
    message = f"unknown reward {spec_name!r}"
    close = difflib.get_close_matches(spec_name, list(BUILTIN_REWARDS), n=3, cutoff=0.5)
    message += f"; did you mean {' or '.join(repr(name) for name in close)}?" if close else "."
    message += f" Built-in rewards: {', '.join(BUILTIN_REWARDS)}."
    if spec_name.endswith(".py"):
        message += f" To use a file, name its function: '{spec_name}:my_function'."
    elif "." in spec_name:
        module, _, function = spec_name.rpartition(".")
        message += f" To use a function in a module, separate it with ':': '{module}:{function}'."
    else:
        message += " Your own rewards are named 'package.module:function' or 'path/to/file.py:function'."
    return message


def _import_module(module_name: str, spec_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise RewardError(
                f"reward {spec_name!r}: no module named {missing!r}; check the spelling, run from the folder "
                "that contains it (or add that folder to PYTHONPATH), or name the file instead: "
                "'path/to/file.py:function'"
            ) from exc
        pip_name = PIP_NAMES.get(missing.split(".")[0], missing.split(".")[0])
        raise RewardError(
            f"reward {spec_name!r}: module {module_name!r} imports {missing!r}, which is not installed; "
            f"install it (pip install {pip_name}) or choose another reward"
        ) from exc
    except Exception as exc:
        raise RewardError(
            f"reward {spec_name!r}: importing {module_name!r} failed with {_describe(exc)}; fix that module"
        ) from exc


def _import_file(source: str, spec_name: str, base_dir: Path | None) -> ModuleType:
    """Run a .py file as a module (once per process) and return it."""
    path = Path(source).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = ([base_dir / path] if base_dir is not None else []) + [Path.cwd() / path]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        tried = ", ".join(str(candidate) for candidate in candidates)
        raise RewardError(
            f"reward {spec_name!r}: file {source!r} not found (tried {tried}); a relative path is looked up "
            "in the recipe's folder, then in the current directory"
        )
    if found.suffix != ".py":
        raise RewardError(f"reward {spec_name!r}: {found} is not a Python file; name a .py file")
    found = found.resolve()
    digest = hashlib.sha1(str(found).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", found.stem)
    module_name = f"{_FILE_MODULE_PREFIX}{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, found)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            raise RewardError(
                f"reward {spec_name!r}: {found} imports {exc.name!r}, which is not installed or not on the "
                f"path; install it (pip install {PIP_NAMES.get(exc.name, exc.name)}) or fix the import"
            ) from exc
        raise RewardError(f"reward {spec_name!r}: running {found} failed with {_describe(exc)}; fix that file") from exc
    return module


def _get_attribute(module: ModuleType, attribute: str, spec_name: str) -> Any:
    if hasattr(module, attribute):
        return getattr(module, attribute)
    defined = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and callable(value) and getattr(value, "__module__", None) == module.__name__
    ]
    message = f"reward {spec_name!r}: {_module_label(module)} has no {attribute!r}"
    close = difflib.get_close_matches(attribute, defined, n=3, cutoff=0.5)
    message += f"; did you mean {' or '.join(repr(name) for name in close)}?" if close else "."
    message += f" It defines: {', '.join(defined) or 'no functions'}."
    raise RewardError(message)


def _module_label(module: ModuleType) -> str:
    if module.__name__.startswith(_FILE_MODULE_PREFIX):
        return str(module.__file__)
    return f"module {module.__name__!r}"


def _call_factory(obj: Any, kwargs: Mapping[str, Any], spec_name: str) -> RewardFunc:
    """Call the named factory with the recipe's kwargs and return the reward function it makes."""
    if not callable(obj):
        raise RewardError(
            f"reward {spec_name!r} has kwargs, so it must be a factory that returns the reward function, "
            f"but it is a {type(obj).__name__}"
        )
    signature = _signature(obj)
    if signature is not None:
        if "completions" in signature.parameters:
            raise RewardError(
                f"reward {spec_name!r} was given kwargs {dict(kwargs)}, so it is called as a factory, but it takes "
                "'completions': it is a reward function itself. Remove the kwargs, or name a factory that takes "
                "the settings and returns the reward function (see rewards/examples/length_penalty.py)"
            )
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise RewardError(
                f"reward {spec_name!r}: factory does not accept kwargs {dict(kwargs)} ({exc}); "
                f"its parameters are {signature}"
            ) from exc
    try:
        made = obj(**kwargs)
    except Exception as exc:
        raise RewardError(
            f"reward {spec_name!r}: factory called with {dict(kwargs)} failed with {_describe(exc)}; fix the kwargs"
        ) from exc
    if not callable(made):
        raise RewardError(
            f"reward {spec_name!r}: factory returned a {type(made).__name__}, not a reward function; a factory "
            "named with kwargs must return f(prompts, completions, **kwargs) -> list[float | None]"
        )
    return made


def _signature(func: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Signature check
# ---------------------------------------------------------------------------------------------


def passed_keywords(columns: Iterable[str]) -> list[str]:
    """Every keyword TRL passes to a reward function for a dataset with these columns."""
    passed = list(TRL_KEYWORDS)
    passed += [column for column in columns if column not in NOT_PASSED_COLUMNS and column not in passed]
    return passed


def check_reward_signature(func: RewardFunc, name: str, columns: Iterable[str]) -> None:
    """Raise RewardError unless TRL can call ``func`` with this dataset's columns.

    TRL calls ``func(prompts=..., completions=..., completion_ids=..., trainer_state=...,
    log_extra=..., log_metric=..., **columns)``, so ``func`` must accept each of those keywords
    (by name, or through ``**kwargs``), and every parameter it requires must be among them.
    """
    columns = list(columns)
    passed = passed_keywords(columns)
    signature = _signature(func)
    if signature is None:
        raise RewardError(
            f"reward {name!r}: cannot read the parameters of {func!r}; wrap it in a Python function "
            "def f(prompts, completions, **kwargs)"
        )
    parameters = list(signature.parameters.values())
    shown_columns = ", ".join(column for column in columns if column not in NOT_PASSED_COLUMNS) or "none"
    for parameter in parameters:
        required = parameter.default is inspect.Parameter.empty
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY and required:
            raise RewardError(
                f"reward {name!r}: parameter {parameter.name!r} is positional-only, but TRL passes everything by "
                "keyword; remove the '/' from its parameters"
            )
        if not required or parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if parameter.name not in passed:
            message = (
                f"reward {name!r} requires {parameter.name!r}, which is not a dataset column. "
                f"Columns it can read: {shown_columns} (and TRL's {', '.join(TRL_KEYWORDS)})."
            )
            close = difflib.get_close_matches(parameter.name, passed, n=1, cutoff=0.6)
            if close:
                message += f" Did you mean {close[0]!r}?"
            message += " Rename the parameter, give it a default, or add the column to the dataset."
            raise RewardError(message)
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    accepted = {
        parameter.name
        for parameter in parameters
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    missing = [keyword for keyword in passed if keyword not in accepted]
    if missing:
        message = (
            f"reward {name!r} does not accept {', '.join(repr(keyword) for keyword in missing)}, which TRL passes "
            "to every reward (all dataset columns but 'prompt', plus completion_ids, trainer_state, log_extra and "
            "log_metric), so it would crash at the first step; add **kwargs: "
            f"def {name}(prompts, completions, ..., **kwargs)"
        )
        if "completions" in missing:
            message += f". If {name!r} is a factory, give it kwargs in the recipe so that it is called with them"
        raise RewardError(message)


# ---------------------------------------------------------------------------------------------
# Guard
# ---------------------------------------------------------------------------------------------


def guard_reward(func: RewardFunc, name: str | None = None) -> RewardFunc:
    """Wrap a reward so misbehaviour stops the run with a RewardError instead of a silent zero.

    The wrapper has ``__name__`` ``name`` (default: the function's own), so TRL logs it under that
    name. It raises RewardError, naming the reward, the completion's index and an excerpt of it,
    when the reward raises, returns something other than one value per completion, or returns a
    value that is not a number or None, or is NaN or infinite. It returns the values as a list of
    floats and Nones. Async rewards get an async wrapper.
    """
    if getattr(func, _GUARDED, False):
        if name is None or func.__name__ == name:
            return func
        func = func.__wrapped__  # re-guard under the new name, not twice
    name = name or getattr(func, "__name__", type(func).__name__)

    if _is_async(func):

        async def guarded(*args: Any, **kwargs: Any) -> list[float | None]:
            completions = _completions_of(name, args, kwargs)
            try:
                output = await func(*args, **kwargs)
            except Exception as exc:
                raise _raised_error(name, exc, None, completions) from exc
            return _checked_output(name, output, completions)

    else:

        def guarded(*args: Any, **kwargs: Any) -> list[float | None]:  # type: ignore[misc]
            completions = _completions_of(name, args, kwargs)
            try:
                output = func(*args, **kwargs)
            except Exception as exc:
                index = None if args else _failing_index(func, kwargs)
                raise _raised_error(name, exc, index, completions) from exc
            return _checked_output(name, output, completions)

    functools.update_wrapper(guarded, func)
    guarded.__name__ = name
    guarded.__qualname__ = name
    setattr(guarded, _GUARDED, True)
    return guarded


def _is_async(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    # A callable class instance carries its "async" on the class's __call__.
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def _completions_of(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Sequence[Any]:
    """The completions a reward was called with: TRL passes them by keyword, people sometimes by position."""
    completions = kwargs["completions"] if "completions" in kwargs else args[1] if len(args) > 1 else None
    if not isinstance(completions, Sequence) or isinstance(completions, str):
        raise RewardError(
            f"reward {name!r} must be called with completions=<a list, one item per completion>, as GRPOTrainer "
            f"does; got {type(completions).__name__}"
        )
    return completions


def _checked_output(name: str, output: Any, completions: Sequence[Any]) -> list[float | None]:
    count = len(completions)
    if output is None or isinstance(output, (str, bytes, Mapping)) or not isinstance(output, Iterable):
        raise RewardError(
            f"reward {name!r} returned {type(output).__name__} {output!r:.60}; return a list with one value per "
            "completion: a float, or None to skip that completion"
        )
    values = list(output)
    if len(values) != count:
        raise RewardError(
            f"reward {name!r} returned {len(values)} values for {count} completions; return exactly one value per "
            "completion, in order (a float, or None to skip that completion)"
        )
    checked: list[float | None] = []
    for index, value in enumerate(values):
        if value is None:
            checked.append(None)
            continue
        number = _as_float(value)
        where = f"completion {index} of {count} ({_completion_excerpt(completions, index)})"
        if number is None:
            raise RewardError(
                f"reward {name!r} returned {value!r:.60} ({type(value).__name__}) for {where}; return a float, "
                "or None to skip that completion"
            )
        if not math.isfinite(number):
            raise RewardError(
                f"reward {name!r} returned {number} for {where}; rewards must be finite numbers (return None "
                "to skip a completion on purpose)"
            )
        checked.append(number)
    return checked


def _as_float(value: Any) -> float | None:
    """The value as a float when it is a number (int, float, bool, NumPy or 0-d tensor), else None."""
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _failing_index(func: RewardFunc, kwargs: Mapping[str, Any]) -> int | None:
    """Find which completion makes ``func`` raise by calling it on one completion at a time."""
    completions = kwargs.get("completions")
    if not isinstance(completions, Sequence):
        return None
    count = len(completions)
    if count <= 1:
        return 0 if count == 1 else None
    for index in range(count):
        single = {
            key: value[index : index + 1] if isinstance(value, list) and len(value) == count else value
            for key, value in kwargs.items()
        }
        for key in ("log_extra", "log_metric"):
            if key in single:
                single[key] = _ignore
        try:
            func(**single)
        except Exception:
            return index
    return None


def _ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for TRL's log_extra / log_metric where nothing is logged."""


def _raised_error(name: str, exc: Exception, index: int | None, completions: Sequence[Any]) -> RewardError:
    if index is not None:
        where = f" on completion {index} of {len(completions)} ({_completion_excerpt(completions, index)})"
    else:
        where = ""
    return RewardError(
        f"reward {name!r} raised {_describe(exc)}{where}; fix the reward (return None for a completion it cannot score)"
    )


def _describe(exc: BaseException) -> str:
    """'TypeError: message (at file.py:12 in function)' for the innermost frame of the error."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} (at {exc.filename}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        frame = frames[-1]
        text += f" (at {frame.filename}:{frame.lineno} in {frame.name})"
    return text


def _completion_excerpt(completions: Any, index: int) -> str:
    try:
        return excerpt(completion_text(completions[index]))
    except Exception:
        return excerpt(repr(completions[index]))


# ---------------------------------------------------------------------------------------------
# Reward table (core of `python -m grpo_r1.rewards check`)
# ---------------------------------------------------------------------------------------------


@dataclass
class RewardRow:
    """What one reward scored on a set of sample completions."""

    name: str
    values: list[float | None]  # one per sample, None where the reward skipped it
    mean: float | None  # over the non-None values, as TRL logs rewards/<name>/mean
    std: float | None  # sample standard deviation of the same, as TRL logs rewards/<name>/std
    none_rate: float  # fraction of samples the reward skipped
    warning: str | None  # set when the reward cannot tell these samples apart


def reward_table(
    funcs: Sequence[RewardFunc],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    *,
    completion_ids: Sequence[Sequence[int]] | None = None,
    trainer_state: Any = None,
) -> list[RewardRow]:
    """Score every sample with every reward, as TRL would at a training step; one row per reward.

    Args:
        funcs: reward functions (unguarded ones are guarded here, so errors name the completion).
        prompts, completions: one prompt and one completion per sample, conversational or plain.
        columns: dataset columns, each a list with one item per sample (``prompt`` is ignored).
        completion_ids: token ids per completion; without a tokenizer, empty lists are passed.
        trainer_state: passed as ``trainer_state``; default a fresh ``transformers.TrainerState``.
    """
    count = len(completions)
    if len(prompts) != count:
        raise ValueError(f"reward_table got {len(prompts)} prompts for {count} completions; give one per completion")
    for column, values in columns.items():
        if len(values) != count:
            raise ValueError(
                f"column {column!r} has {len(values)} items for {count} completions; give one per completion"
            )
    if trainer_state is None:
        from transformers.trainer_callback import TrainerState  # noqa: PLC0415 (slow import, only here)

        trainer_state = TrainerState()
    kwargs: dict[str, Any] = {key: list(values) for key, values in columns.items() if key not in NOT_PASSED_COLUMNS}
    kwargs["completion_ids"] = [list(ids) for ids in completion_ids] if completion_ids is not None else [[]] * count
    kwargs.update(trainer_state=trainer_state, log_extra=_ignore, log_metric=_ignore)
    rows = []
    for func in funcs:
        guarded = guard_reward(func)
        output = guarded(prompts=list(prompts), completions=list(completions), **kwargs)
        if inspect.isawaitable(output):
            output = asyncio.run(output)
        rows.append(_summarize(guarded.__name__, output))
    return rows


def _summarize(name: str, values: list[float | None]) -> RewardRow:
    scored = [value for value in values if value is not None]
    mean = statistics.fmean(scored) if scored else None
    std = statistics.stdev(scored) if len(scored) > 1 else None
    none_rate = (len(values) - len(scored)) / len(values) if values else 0.0
    warning = None
    if values and not scored:
        warning = "returned None for every sample: it skipped them all; check the columns it reads"
    elif len(values) > 1 and len(set(scored)) == 1:
        warning = (
            f"is {scored[0]:g} on every sample: it cannot tell these completions apart, and in GRPO a reward that "
            "scores a whole group the same adds nothing to the advantage"
        )
    return RewardRow(name=name, values=values, mean=mean, std=std, none_rate=none_rate, warning=warning)


def format_reward_table(rows: Sequence[RewardRow], labels: Sequence[str] | None = None) -> str:
    """Render rows as a plain-text table: one line per reward, one column per sample, then stats."""
    count = max((len(row.values) for row in rows), default=0)
    labels = list(labels) if labels is not None else [f"#{index}" for index in range(count)]
    if len(labels) != count:
        raise ValueError(f"format_reward_table got {len(labels)} labels for {count} samples")
    header = ["reward", *labels, "mean", "std", "None"]
    lines = [
        [
            row.name,
            *(_cell(value) for value in row.values),
            _cell(row.mean),
            _cell(row.std),
            f"{row.none_rate:.0%}",
        ]
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *lines]) for column in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [render(header), *(render(line) for line in lines)]
    out += [f"warning: {row.name} {row.warning}" for row in rows if row.warning]
    return "\n".join(out)


def print_reward_table(
    rows: Sequence[RewardRow], labels: Sequence[str] | None = None, file: TextIO | None = None
) -> None:
    """Print ``format_reward_table(rows, labels)``."""
    print(format_reward_table(rows, labels), file=file or sys.stdout)


def _cell(value: float | None) -> str:
    return "None" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------
# Sample completions
# ---------------------------------------------------------------------------------------------

XML_TEMPLATE = "<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def gsm8k_reasoning(solution: str) -> str:
    """A GSM8K solution as plain reasoning: ``<<48/2=24>>`` calculator notes and the ``#### 72`` line removed."""
    without_notes = re.sub(r"<<[^<>]*>>", "", solution)
    return without_notes.split("####")[0].strip()


def sample_completions(row: Mapping[str, Any]) -> dict[str, str]:
    """Make three completions for a dataset row, to see what each reward pays for.

    Returns ``{"gold": ..., "wrong": ..., "malformed": ...}``: the row's own GSM8K solution in the
    target layout (``<reasoning>`` the solution without calculator notes, ``<answer>`` the gold),
    the same with a wrong answer, and the same reasoning as plain prose ending "The answer is 72."
    with no tags, as a model that ignores the format writes it. Raises DataError when the row has
    no ``solution`` or ``answer``.
    """
    missing = [key for key in ("solution", "answer") if key not in row or row[key] is None]
    if missing:
        raise DataError(
            f"sample_completions needs the row's {' and '.join(repr(key) for key in missing)}, but it has only "
            f"{', '.join(map(repr, row))}; use a GSM8K-style dataset with 'solution' (ending '#### <gold>') "
            "and 'answer'"
        )
    reasoning = gsm8k_reasoning(str(row["solution"]))
    answer = str(row["answer"]).strip()
    return {
        "gold": XML_TEMPLATE.format(reasoning=reasoning, answer=answer),
        "wrong": XML_TEMPLATE.format(reasoning=reasoning, answer=_wrong_answer(answer)),
        "malformed": f"{reasoning}\nThe answer is {answer}.",
    }


def try_rewards_on_samples(funcs: Sequence[RewardFunc], dataset: Any) -> None:
    """Call every reward once, as TRL would, on the sample completions of the dataset's first row.

    The samples are ``sample_completions``' three (the gold solution in the target layout, a wrong
    answer, prose without tags), the kinds of text a model writes. A reward that raises on them,
    returns the wrong number of values, or returns NaN raises the guard's RewardError now, before
    a run folder exists, instead of at the first training step. Does nothing for a dataset without
    rows or without the ``solution`` and ``answer`` columns the samples are made from.
    """
    if len(dataset) == 0 or not {"solution", "answer", "prompt"} <= set(dataset.column_names):
        return
    row = dataset[0]
    texts = list(sample_completions(row).values())
    columns = {name: [row[name]] * len(texts) for name in dataset.column_names}
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    try:
        reward_table(funcs, [row["prompt"]] * len(texts), completions, columns)
    except RewardError as exc:
        raise RewardError(f"{exc} (found before training, on sample completions of the data's first row)") from None


def _wrong_answer(answer: str) -> str:
    """A different answer: the gold plus one when it is a number."""
    value = gold_number(answer)
    if value is None:
        return f"not {answer}"
    wrong = value + 1
    return str(wrong.numerator) if wrong.denominator == 1 else f"{float(wrong):g}"


if __name__ == "__main__":
    from grpo_r1.reward_check import main

    sys.exit(main())
