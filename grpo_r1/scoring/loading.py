"""Load the reward functions a recipe names: import, check and guard each.

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

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import math
import numbers
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from grpo_r1.errors import RewardError
from grpo_r1.scoring.guard import RewardFunc, describe_error, guard_reward
from grpo_r1.scoring.signature import check_reward_signature, signature_of
from rewards import BUILTIN_REWARDS

# Installable names of modules the built-ins need, for "pip install" hints.
PIP_NAMES = {"math_verify": "math-verify", "latex2sympy2_extended": "math-verify", "sympy": "sympy"}

_FILE_MODULE_PREFIX = "grpo_r1_reward_file_"


class RewardSpecLike(Protocol):
    """What ``load_reward_functions`` reads from a recipe's reward entry (``recipe.RewardSpec``)."""

    name: str
    weight: float
    kwargs: dict[str, Any]
    timeout_s: float


def load_reward_functions(
    specs: Sequence[RewardSpecLike], columns: Iterable[str], base_dir: Path | None = None
) -> list[RewardFunc]:
    """Import, check and guard the rewards a recipe names, in order; raise RewardError on any problem.

    Args:
        specs: the recipe's reward entries (``name``, ``weight``, ``kwargs``, ``timeout_s``).
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
    for index, (spec, name) in enumerate(zip(specs, names, strict=True)):
        func = resolve_reward(spec.name, spec.kwargs or {}, base_dir)
        check_reward_signature(func, name, columns)
        funcs.append(guard_reward(func, name, timeout_s=spec.timeout_s, setting=f"rewards.{index}.timeout_s"))
    return funcs


def reward_name(spec_name: str) -> str:
    """The name a reward is logged under: the built-in name, or the part after the last ":"."""
    return spec_name.rsplit(":", 1)[-1].strip()


def resolve_reward(spec_name: str, kwargs: Mapping[str, Any], base_dir: Path | None = None) -> RewardFunc:
    """Import the object ``spec_name`` names and, when ``kwargs`` are given, call it as a factory."""
    if ":" not in spec_name:
        if spec_name not in BUILTIN_REWARDS:
            raise RewardError(_unknown_builtin_message(spec_name))
        unknown = sorted(set(kwargs) - {"tags"})
        if unknown:
            raise RewardError(
                f"reward {spec_name!r} is a built-in, whose one setting is 'tags' (e.g. kwargs: {{tags: {{reasoning: "
                f"think}}}}), but got {unknown}; scale it with 'weight', or copy it into your own file and name "
                "that (see rewards/README.md)"
            )
        module_name, attribute = BUILTIN_REWARDS[spec_name].split(":")
        factory = _get_attribute(_import_module(module_name, spec_name), attribute, spec_name)
        return _call_factory(factory, kwargs, spec_name)
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
            f"reward {spec_name!r}: importing {module_name!r} failed with {describe_error(exc)}; fix that module"
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
        raise RewardError(f"reward {spec_name!r}: running {found} failed with {describe_error(exc)}; "
                          "fix that file") from exc
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
    signature = signature_of(obj)
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
            f"reward {spec_name!r}: factory called with {dict(kwargs)} failed with {describe_error(exc)}; "
            f"fix the kwargs"
        ) from exc
    if not callable(made):
        raise RewardError(
            f"reward {spec_name!r}: factory returned a {type(made).__name__}, not a reward function; a factory "
            "named with kwargs must return f(prompts, completions, **kwargs) -> list[float | None]"
        )
    return made
