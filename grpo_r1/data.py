"""Questions for GRPO: GSM8K (hub or local files) or generated arithmetic word problems.

Every source ends up as a `datasets.Dataset` with these columns, which reward functions see
as keyword arguments:

    prompt    chat messages: the recipe's system prompt, then the question
    question  the question text
    answer    the gold final answer, the number after `#### ` with commas removed ("1000")
    solution  the full reference solution, ending in `#### N`
"""

from __future__ import annotations

import random
import re
import zlib
from pathlib import Path
from typing import Any

import datasets

from grpo_r1.errors import DataError
from grpo_r1.prompts import build_prompt
from grpo_r1.recipe import DataConfig

GSM8K_HUB_ID = "openai/gsm8k"
_FINAL_ANSWER = re.compile(r"####\s*(.+?)\s*$")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_gold_answer(solution: str) -> str | None:
    """The final answer of a GSM8K-style solution (`... #### 1,000` gives "1000"), or None."""
    found = _FINAL_ANSWER.search(solution.strip())
    if not found:
        return None
    value = found.group(1).replace(",", "").replace("$", "").strip()
    return value if _NUMBER.fullmatch(value) else None


def load_questions(cfg: DataConfig, seed: int, split: str | None = None) -> datasets.Dataset:
    """Load `cfg.source` (split `split`, default `cfg.split`) into the columns described above."""
    split = split or cfg.split
    if cfg.source == "arithmetic":
        raw = arithmetic_problems(cfg.arithmetic_examples, seed=seed + zlib.crc32(split.encode()),
                                  max_ops=cfg.arithmetic_max_ops, min_ops=cfg.arithmetic_min_ops,
                                  distractors=cfg.arithmetic_distractors, wording=cfg.arithmetic_wording)
        question_column, answer_column = "question", "answer"
    else:
        raw = _load_raw(cfg, split)
        question_column, answer_column = cfg.question_column, cfg.answer_column
        missing = [c for c in (question_column, answer_column) if c not in raw.column_names]
        if missing:
            raise DataError(
                f"dataset {cfg.source!r} (split {split!r}) has no column {missing[0]!r}; its columns are "
                f"{raw.column_names}. Set data.question_column / data.answer_column to the right names"
            )
    if len(raw) == 0:
        raise DataError(f"dataset {cfg.source!r} (split {split!r}) is empty; point data.source at a file with rows")

    questions, solutions = raw[question_column], raw[answer_column]
    golds = []
    for index, solution in enumerate(solutions):
        gold = parse_gold_answer(str(solution)) if solution is not None else None
        if gold is None:
            excerpt = str(solution)[-60:].replace("\n", " ")
            raise DataError(
                f"dataset {cfg.source!r} row {index}: column {answer_column!r} must end with '#### <number>' as "
                f"GSM8K answers do, got ...{excerpt!r}; fix the row or set data.answer_column"
            )
        golds.append(gold)
    table = datasets.Dataset.from_dict({
        "prompt": [build_prompt(str(q), cfg.system_prompt) for q in questions],
        "question": [str(q) for q in questions],
        "answer": golds,
        "solution": [str(s) for s in solutions],
    })
    if cfg.limit is not None and cfg.limit < len(table):
        table = table.shuffle(seed=seed).select(range(cfg.limit))
    return table


def _load_raw(cfg: DataConfig, split: str) -> datasets.Dataset:
    source = cfg.source
    path = Path(source).expanduser()
    if path.exists():
        return _load_local(path, split)
    if source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json", ".parquet")):
        raise DataError(f"data.source {source!r} does not exist; give an existing .jsonl/.parquet file or folder, "
                        "'gsm8k' or 'arithmetic'")
    hub_id = GSM8K_HUB_ID if source == "gsm8k" else source
    try:
        return datasets.load_dataset(hub_id, cfg.hub_config or None, split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            raise DataError(f"dataset {hub_id!r} has no split {split!r}: {e}") from None
        raise DataError(f"dataset {hub_id!r} could not be loaded: {e}") from None
    except Exception as e:  # network, missing repo, gated access: datasets raises many kinds
        raise DataError(
            f"dataset {hub_id!r} could not be loaded from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); without network, download it once and set data.source "
            f"to the local folder or file (jsonl/parquet with columns question and answer)"
        ) from None


def _load_local(path: Path, split: str) -> datasets.Dataset:
    """A .jsonl/.json/.parquet file, or a folder holding `<split>.jsonl`, `<split>-*.parquet`, ..."""
    if path.is_file():
        files = [path]
    else:
        patterns = [f"{split}.jsonl", f"{split}.json", f"{split}.parquet", f"{split}-*.parquet",
                    f"*/{split}-*.parquet", f"{split}/*.parquet", f"{split}/*.jsonl"]
        files = next((sorted(path.glob(p)) for p in patterns if sorted(path.glob(p))), [])
        if not files:
            present = sorted(p.name for p in path.iterdir())[:10]
            raise DataError(f"folder {str(path)!r} has no file for split {split!r} (looked for {split}.jsonl, "
                            f"{split}.parquet, {split}-*.parquet); it holds {present}. Set data.split or data.source")
    kinds = {f.suffix for f in files}
    if len(kinds) != 1 or kinds.pop() not in (".jsonl", ".json", ".parquet"):
        raise DataError(f"data files must be .jsonl, .json or .parquet, got {[f.name for f in files]}")
    builder = "parquet" if files[0].suffix == ".parquet" else "json"
    # datasets' json reader stops on a 0-byte file with a bare StopIteration
    if all(f.stat().st_size == 0 for f in files):
        raise DataError(f"dataset {str(path)!r} is empty (0 bytes); point data.source at a file with rows")
    datasets.disable_progress_bars()  # local files load in a blink; keep the terminal for errors
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file's error is ours to report, on one line
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as e:
        if "corresponds to no data" in str(e):  # datasets' word for files without rows
            raise DataError(f"dataset {str(path)!r} is empty; point data.source at a file with rows") from None
        while e.__cause__ is not None:  # datasets wraps the reader's own error ("JSON parse error ... in row 3")
            e = e.__cause__
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not read {[str(f) for f in files]} as {builder}: {reason}; "
                        "fix the file or point data.source at another") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        datasets.enable_progress_bars()


# ----------------------------------------------------------------------------- arithmetic generator

_NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kira", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "cards", "stamps", "coins"]


def arithmetic_problems(count: int, seed: int, max_ops: int = 2, *, min_ops: int = 1, distractors: int = 0,
                        wording: str = "plain") -> datasets.Dataset:
    """`count` grade-school word problems with integer answers, the same for the same seed.

    Each problem starts with a quantity and applies `min_ops` to `max_ops` operations (add, take
    away, multiply, share equally). `wording="varied"` words each operation one of several ways,
    GSM8K-like, and adds a two-step one (buying packs of several items: a product, then a sum).
    `distractors`: up to this many sentences per problem with numbers that play no part in the
    answer. Solutions are written the way GSM8K's are, calculator annotations and `#### N`
    included, so everything downstream treats them alike. The plain wording without distractors
    gives the same problems as before these options existed.
    """
    if wording not in WORDINGS:
        raise DataError(f"data.arithmetic_wording must be one of {', '.join(WORDINGS)}, got {wording!r}")
    if not 1 <= min_ops <= max_ops:
        raise DataError(f"data.arithmetic_min_ops ({min_ops}) must be at least 1 and at most data.arithmetic_max_ops "
                        f"({max_ops})")
    if distractors < 0:
        raise DataError(f"data.arithmetic_distractors must be 0 or more, got {distractors}")
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"question": [], "answer": []}
    for _ in range(count):
        ops = rng.randint(min_ops, max_ops)
        if wording == "plain" and not distractors:
            question, solution = _one_problem(rng, ops)
        else:
            question, solution = _one_varied_problem(rng, ops, distractors, varied=wording == "varied")
        rows["question"].append(question)
        rows["answer"].append(solution)
    return datasets.Dataset.from_dict(rows)


WORDINGS = ("plain", "varied")


def _one_problem(rng: random.Random, ops: int) -> tuple[str, str]:
    name, friend = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    total = rng.randint(2, 30)
    sentences = [f"{name} has {total} {item}."]
    steps = []
    for _ in range(ops):
        kind = rng.choice(["add", "sub", "mul", "div"])
        if kind == "div":
            divisors = [d for d in (2, 3, 4, 5) if total % d == 0 and total // d > 0]
            kind = "div" if divisors else "add"
        if kind == "sub" and total < 2:
            kind = "add"
        if kind == "add":
            n = rng.randint(1, 30)
            sentences.append(f"{name} gets {n} more {item} from {friend}.")
            steps.append((f"{total}+{n}", total + n, f"After getting {n} more, {name} has"))
            total += n
        elif kind == "sub":
            n = rng.randint(1, total - 1)
            sentences.append(f"{name} gives {n} {item} to {friend}.")
            steps.append((f"{total}-{n}", total - n, f"After giving away {n}, {name} has"))
            total -= n
        elif kind == "mul":
            n = rng.randint(2, 4)
            sentences.append(f"Then the number of {item} {name} has becomes {n} times as large.")
            steps.append((f"{total}*{n}", total * n, f"{n} times as many is"))
            total *= n
        else:
            n = rng.choice(divisors)
            sentences.append(f"{name} splits the {item} equally into {n} boxes and keeps one box.")
            steps.append((f"{total}/{n}", total // n, f"One of {n} equal boxes holds"))
            total //= n
    sentences.append(f"How many {item} does {name} have now?")
    lines = [f"{text} {expr} = <<{expr}={value}>>{value} {item}." for expr, value, text in steps]
    return " ".join(sentences), "\n".join(lines + [f"#### {total}"])


# One way of wording each operation, or several ("varied"): (question sentence, solution text), with
# {name}, {friend}, {item}, {n} and {total} (the count before the step) filled in.
_WORDS: dict[str, list[tuple[str, str]]] = {
    "add": [("{name} gets {n} more {item} from {friend}.", "After getting {n} more, {name} has"),
            ("{friend} gives {name} another {n} {item}.", "With {friend}'s {n}, {name} has"),
            ("Later {name} finds {n} {item} and keeps them.", "With the {n} found, {name} has"),
            ("{name} buys {n} {item} at the market.", "After buying {n}, {name} has")],
    "sub": [("{name} gives {n} {item} to {friend}.", "After giving away {n}, {name} has"),
            ("{name} loses {n} of the {item} on the way home.", "After losing {n}, {name} has"),
            ("{friend} borrows {n} {item} from {name}.", "After lending {n}, {name} has"),
            ("{name} uses {n} {item} for a school project.", "After using {n}, {name} has")],
    "mul": [("Then the number of {item} {name} has becomes {n} times as large.", "{n} times as many is"),
            ("By the end of the month {name} has {n} times as many {item} as before.", "{n} times as many is")],
    "div": [("{name} splits the {item} equally into {n} boxes and keeps one box.", "One of {n} equal boxes holds"),
            ("{name} shares the {item} equally with friends so that {n} people, {name} included, get the same "
             "number, and keeps one share.", "One share of {n} equal shares is"),
            ("{name} puts the {item} into {n} equal piles and gives away all but one pile.",
             "One of {n} equal piles holds")],
}
_PACKS = ("{name} buys {k} packs of {item} with {m} in each pack.",
          "{k} packs of {m} hold", "Adding the packs, {name} has")
_DISTRACTORS = ("{friend} has {n} {other}.", "{name} is {n} years old.", "The walk to school takes {n} minutes.",
                "{friend} wants {n} {other} for a birthday.", "The shop has {n} {other} on its shelves.",
                "{name}'s class has {n} students.")


def _one_varied_problem(rng: random.Random, ops: int, distractors: int, *, varied: bool) -> tuple[str, str]:
    """A problem of `ops` operations, worded one way or several, with up to `distractors` irrelevant sentences."""
    name, friend = rng.sample(_NAMES, 2)
    item, other = rng.sample(_ITEMS, 2)
    total = rng.randint(2, 30)
    sentences = [f"{name} has {total} {item}."]
    lines = []
    for _ in range(ops):
        kinds = ["add", "sub", "mul", "div"] + (["packs"] if varied else [])
        kind = rng.choice(kinds)
        divisors = [d for d in (2, 3, 4, 5) if total % d == 0]
        if (kind == "div" and not divisors) or (kind == "sub" and total < 2) or (kind == "mul" and total > 50):
            kind = "add"
        fill = {"name": name, "friend": friend, "item": item, "total": total}
        if kind == "packs":
            k, m = rng.randint(2, 5), rng.randint(2, 12)
            ask, step_text, sum_text = _PACKS
            sentences.append(ask.format(k=k, m=m, **fill))
            lines.append(f"{step_text.format(k=k, m=m, **fill)} {k}*{m} = <<{k}*{m}={k * m}>>{k * m} {item}.")
            lines.append(f"{sum_text.format(**fill)} {total}+{k * m} = <<{total}+{k * m}={total + k * m}>>"
                         f"{total + k * m} {item}.")
            total += k * m
            continue
        n = {"add": lambda: rng.randint(1, 30), "sub": lambda: rng.randint(1, total - 1),
             "mul": lambda: rng.randint(2, 4), "div": lambda: rng.choice(divisors)}[kind]()
        ask, answer_text = rng.choice(_WORDS[kind]) if varied else _WORDS[kind][0]
        sentences.append(ask.format(n=n, **fill))
        symbol, value = {"add": ("+", total + n), "sub": ("-", total - n), "mul": ("*", total * n),
                         "div": ("/", total // n)}[kind]
        lines.append(f"{answer_text.format(n=n, **fill)} {total}{symbol}{n} = <<{total}{symbol}{n}={value}>>{value} "
                     f"{item}.")
        total = value
    for _ in range(rng.randint(0, distractors)):
        text = rng.choice(_DISTRACTORS).format(name=name, friend=friend, other=other, n=rng.randint(2, 40))
        sentences.insert(rng.randint(1, len(sentences)), text)
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), "\n".join(lines + [f"#### {total}"])
