"""The architecture's rules, checked on the code itself (each checker is also shown failing on a
deliberate violation, so a rule that stopped being enforced would be noticed):

    * no import cycles between grpo_r1's (and rewards') modules, at any depth of the file
    * grpo_r1/engines/ and grpo_r1/recipe/ import no trl
    * one file, grpo_r1/trainer/trl_private.py, names GRPOTrainer's private parts
    * every `section.key` a message names is a key of the recipe (no advice to set a key that does not exist)
"""

from __future__ import annotations

import ast
import dataclasses
import re
import textwrap
from pathlib import Path

import pytest
import trl.trainer.grpo_trainer

from grpo_r1.recipe import sections
from grpo_r1.recipe.sections import Recipe
from tests.helpers import ROOT

PACKAGES = ("grpo_r1", "rewards")
TRL_PRIVATES_FILE = Path("grpo_r1/trainer/trl_private.py")
NO_TRL = ("grpo_r1/engines", "grpo_r1/recipe")


# ----------------------------------------------------------------------------- the checkers


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under `root`."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """The modules of `known` that the file imports anywhere (top level or inside a function)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # a name imported from a module: the module itself
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_cycles(root: Path, packages=PACKAGES) -> list[list[str]]:
    """Every cycle of modules importing each other (as lists of module names), none when the graph is a DAG.

    A package's __init__ importing its own submodules is not a cycle with them (Python runs the
    __init__ first); a submodule importing its package's __init__ is counted.
    """
    modules = module_files(root, packages)
    known = set(modules)
    graph = {m: {d for d in imported_modules(p, m, known) if not d.startswith(m + ".")} for m, p in modules.items()}
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def trl_importers(root: Path, folders=NO_TRL) -> list[str]:
    """Files under `folders` that import trl (at any depth of the file)."""
    offenders = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                if any(name == "trl" or name.startswith("trl.") for name in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    return offenders


def grpo_trainer_privates() -> set[str]:
    """The private names (`_x`) GRPOTrainer's own source defines or sets on itself."""
    source = Path(trl.trainer.grpo_trainer.__file__).read_text()
    names = set(re.findall(r"\bself\.(_[a-z]\w*)", source)) | set(re.findall(r"\bdef (_[a-z]\w*)", source))
    return {name for name in names if not name.startswith("__")}


def private_uses(root: Path, privates: set[str], allowed: Path = TRL_PRIVATES_FILE) -> list[str]:
    """`obj._name` attribute uses and `"_name"` strings, outside `allowed`, of a name in `privates`
    on an object that is not the file's own `self` (our classes may have privates of their own)."""
    offenders = []
    for path in sorted((root / "grpo_r1").rglob("*.py")):
        if path.relative_to(root) == allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in privates:
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in privates:
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    return offenders


SECTIONS = {f.name: f.type for f in dataclasses.fields(Recipe) if f.name not in ("base_dir", "source")}
# section.key, but not module:function (rewards.benchmark:text_hash names a reward, not a key)
_KEY = re.compile(r"(?<![\w./-])(" + "|".join(SECTIONS) + r")\.([a-z_][a-z0-9_]*)\b(?!:)")
_FILE_SUFFIXES = {"json", "jsonl", "yaml", "py", "png", "pt", "txt"}  # guards.jsonl is a file, not a key


def recipe_keys() -> dict[str, set[str]]:
    """Section -> its keys (training: the fields of TRL's GRPOConfig; rewards: a reward entry's)."""
    keys = {}
    for name in SECTIONS:
        if name == "training":
            keys[name] = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
        elif name == "rewards":
            keys[name] = {f.name for f in dataclasses.fields(sections.RewardSpec)}
        else:
            hint = getattr(sections, SECTIONS[name]) if isinstance(SECTIONS[name], str) else SECTIONS[name]
            keys[name] = {f.name for f in dataclasses.fields(hint)}
    return keys


def message_strings(path: Path) -> list[tuple[int, str]]:
    """The string literals of a file that are not docstrings (messages, log lines, help texts)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            found.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append((node.lineno, node.value))
    return found


def unknown_keys_named(root: Path, keys: dict[str, set[str]]) -> list[str]:
    """`section.key` mentions in grpo_r1's messages whose key the section does not have."""
    offenders = []
    for path in sorted((root / "grpo_r1").rglob("*.py")):
        for line, text in message_strings(path):
            for section, key in _KEY.findall(text):
                if key not in keys[section] and key not in _FILE_SUFFIXES:
                    offenders.append(f"{path.relative_to(root)}:{line} {section}.{key}")
    return sorted(set(offenders))


# ----------------------------------------------------------------------------- the rules, on the code


def test_no_import_cycles():
    assert import_cycles(ROOT) == []


def test_engines_and_recipe_import_no_trl():
    assert trl_importers(ROOT) == []


def test_only_trl_private_names_trls_private_parts():
    privates = grpo_trainer_privates()
    assert {"_generate", "_calculate_rewards", "_buffered_inputs", "_metrics"} <= privates  # read from TRL itself
    assert private_uses(ROOT, privates) == []


def test_every_recipe_key_a_message_names_exists():
    assert unknown_keys_named(ROOT, recipe_keys()) == []


# ----------------------------------------------------------------------------- each checker catches a violation


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_a_cycle_is_found_even_through_a_function_level_import(tmp_path):
    root = _tree(tmp_path, {
        "grpo_r1/__init__.py": "",
        "grpo_r1/a.py": "from grpo_r1.b import f\n",
        "grpo_r1/b.py": "def f():\n    from grpo_r1 import a\n",
        "grpo_r1/pkg/__init__.py": "from grpo_r1.pkg.c import x\n",
        "grpo_r1/pkg/c.py": "x = 1\n",
        "rewards/__init__.py": "",
    })
    assert import_cycles(root) == [["grpo_r1.a", "grpo_r1.b", "grpo_r1.a"]]  # the package __init__ is not one


def test_trl_in_the_engines_is_found(tmp_path):
    root = _tree(tmp_path, {"grpo_r1/engines/x.py": "def f():\n    from trl import GRPOConfig\n",
                            "grpo_r1/recipe/y.py": "import os\n"})
    assert trl_importers(root) == ["grpo_r1/engines/x.py:2"]


def test_a_trl_private_outside_its_file_is_found(tmp_path):
    root = _tree(tmp_path, {
        "grpo_r1/trainer/trl_private.py": "def f(trainer):\n    return trainer._metrics\n",
        "grpo_r1/run/x.py": "def g(trainer):\n    trainer._buffered_inputs = None\n    setattr(trainer, '_step', 0)\n",
        "grpo_r1/y.py": "class A:\n    def f(self):\n        return self._step\n",  # its own private: allowed
    })
    assert private_uses(root, {"_metrics", "_buffered_inputs", "_step"}) == [
        "grpo_r1/run/x.py:2 ._buffered_inputs", "grpo_r1/run/x.py:3 '_step'"]


def test_a_message_naming_a_key_that_does_not_exist_is_found(tmp_path):
    root = _tree(tmp_path, {"grpo_r1/x.py": '''
        """Docstrings may say model.generate() freely."""
        def f(rank):
            raise ValueError(f"raise generation.max_lora_rank to {rank}, or lower lora.r; see grpo_r1.run.folder")
        '''})
    assert unknown_keys_named(root, recipe_keys()) == ["grpo_r1/x.py:4 generation.max_lora_rank"]


@pytest.mark.parametrize("text", ["model.backend", "training.max_steps", "rewards.weight", "run.output_dir"])
def test_real_keys_pass(tmp_path, text):
    root = _tree(tmp_path, {"grpo_r1/x.py": f"MESSAGE = 'set {text}'\n"})
    assert unknown_keys_named(root, recipe_keys()) == []


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    unnamed = [str(path.relative_to(ROOT)) for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
               if path.name != "__init__.py" and path.name not in table]
    assert unnamed == [], "add these modules to README.md's layout table, with what each holds"
