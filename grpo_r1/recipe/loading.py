"""Read a recipe: YAML, command-line overrides, and the typed sections built and checked once.

`load_recipe(path, overrides)` reads the YAML, applies `a.b=value` overrides, and checks every
key and type. Unknown keys are errors that name the closest valid key; wrong types name the
key and what was expected. Nothing else in grpo_r1 reads YAML or environment-style settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from grpo_r1.errors import RecipeError
from grpo_r1.recipe.checks import check_recipe
from grpo_r1.recipe.sections import OWNED_ELSEWHERE, SECRETS_FROM_ENV, Recipe, RewardSpec

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML file, apply `dotted.key=value` overrides, and validate it.

    Raises RecipeError naming the file, the key and the fix for any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist; "
                          "pass the path of a YAML recipe, e.g. recipes/smollm2_gsm8k_cpu.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                          f"save the recipe as UTF-8 YAML") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        opened = getattr(e, "context_mark", None)
        if opened is not None and getattr(e, "context", None) and (mark is None or opened.line != mark.line):
            problem += f" ({e.context} that starts at line {opened.line + 1}, column {opened.column + 1})"
        if "'\\t'" in problem:
            problem += "; indent with spaces, YAML does not allow tabs"
        raise RecipeError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections (model:, data:, ...), "
                          f"got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    recipe = recipe_from_dict(data, source=str(path))
    recipe.base_dir = path.resolve().parent
    return recipe


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one command-line override `a.b.c=value` to raw recipe data, in place.

    The value is parsed as YAML (`5` is an int, `[a, b]` a list, `null` None). A number in
    the path indexes a list: `rewards.0.weight=2`.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {item!r} is not of the form section.key=value (e.g. training.max_steps=5)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, here, item)
            if isinstance(node[index], str) and parts[0] == "rewards" and depth == 1:
                node[index] = {"name": node[index]}  # a reward named alone is {name: ...}
            node = node[index]
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"override {item!r}: {here!r} is a single value, not a section")
            continue
        if node.get(part) is None:
            if parts[depth + 1].isdigit():
                raise RecipeError(f"override {item!r}: the recipe has no {here!r} list to index; "
                                  "write the list in the recipe file")
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {item!r}: {here!r} is a single value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key, item)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, here: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"override {item!r}: {here!r} indexes a list of {len(node)} items; "
                          f"use an index from 0 to {len(node) - 1}")
    return int(part)


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate raw recipe data (as read from YAML) into a Recipe, grpo_r1's training defaults filled in."""
    recipe = _build_dataclass(Recipe, data, prefix="", source=source, skip={"base_dir", "source"})
    recipe.source = source
    _check_owned_training_keys(recipe.training, source)
    check_recipe(recipe, source)
    return recipe


def _build_dataclass(cls: type, data: Any, prefix: str, source: str, skip: set[str] = frozenset()) -> Any:
    where = prefix.rstrip(".") or "the recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: {where!r} must be a mapping of keys, got {describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    for key in data:
        if key not in names:
            raise RecipeError(f"{source}: unknown key {prefix + str(key)!r}{did_you_mean(str(key), names, prefix)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name in names and f.name not in data
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{source}: {where!r} needs the key {prefix + missing[0]!r}")
    values = {key: coerce(hints[key], value, prefix + key, source) for key, value in data.items()}
    return cls(**values)


def coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    """Check `value` against the type `hint`; return it (built into a dataclass where the hint is one)."""
    if dataclasses.is_dataclass(hint):
        if hint is RewardSpec and isinstance(value, str):
            value = {"name": value}
        return _build_dataclass(hint, value, key + ".", source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, key, source)
            except RecipeError as e:
                errors.append(e)
        raise RecipeError(f"{source}: {key!r} must be {_expected(hint)}, got {describe(value)}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise RecipeError(f"{source}: {key!r} must be one of {', '.join(repr(a) for a in args)}, got {describe(value)}"
                          f"{did_you_mean(str(value), [str(a) for a in args], '')}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{source}: {key!r} must be {_expected(hint)}, got {describe(value)}")
        return [coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {key!r} must be a mapping, got {describe(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-3 (no dot) as a string
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str):
            return Path(value)
    else:
        # Enums and other types of GRPOConfig fields: TRL converts strings itself.
        return value
    raise RecipeError(f"{source}: {key!r} must be {_expected(hint)}, got {describe(value)}")


def _check_owned_training_keys(training: dict[str, Any], source: str) -> None:
    """Refuse `training:` keys another section owns or that hold a secret. Their names and types
    against TRL's GRPOConfig are checked where the section becomes one (grpo_r1.trainer.grpo_config)."""
    for key in training:
        if key in OWNED_ELSEWHERE:
            raise RecipeError(f"{source}: 'training.{key}' is set by {OWNED_ELSEWHERE[key]!r} in grpo_r1 recipes; "
                              "set it there")
        if key in SECRETS_FROM_ENV:
            raise RecipeError(f"{source}: 'training.{key}' is a secret and a recipe is saved with the run "
                              f"(recipe.yaml, W&B); remove it and set the {SECRETS_FROM_ENV[key]} environment variable "
                              f"instead")


def did_you_mean(key: str, options: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; valid keys here: {', '.join(options)}" if len(options) <= 12 else ""


def describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_expected(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + " or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list, each item {_expected(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if hint is RewardSpec:
        return "a reward name or a mapping with name, weight, kwargs and timeout_s"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
