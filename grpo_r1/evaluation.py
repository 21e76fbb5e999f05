"""Evaluate a model, or a trained adapter against its base model, on a recipe's questions
(the library behind `python -m grpo_r1.evaluate`).

Metrics, each over the evaluated questions:

    accuracy              greedy pass@1: the answer block commits to the gold value, as the
                          `gsm8k_correctness` reward judges it
    lenient accuracy      greedy: the last number anywhere in the completion equals the gold
                          (small models often answer right without the tags)
    strict / soft format  share of greedy completions the `strict_format` / `soft_format` rewards pay
    mean tokens           greedy completion length in tokens, EOS included
    truncation rate       share of greedy completions cut off at max_completion_length
    maj@K (K > 1)         majority vote over K sampled completions' answers (answer block), with
                          the recipe's temperature and top_p; `lenient maj@K` votes on last numbers
    sampled accuracy      mean accuracy of those K samples (and its lenient variant)

With `--adapter` the base model is evaluated too (unless `--no-base`) and both are printed side
by side; eval.json then goes into the run folder, else to `--out` (default ./eval.json).
Generation is transformers' `generate` whatever the recipe's training engine; the same seed
gives the same numbers.

The scoring functions (`score_completions`, `majority_vote`, `vote_metrics`) are pure and need
no model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from grpo_r1.data import load_questions
from grpo_r1.model import resolve_model_path
from grpo_r1.recipe import Recipe
from grpo_r1.run.folder import EVAL_FILE
from grpo_r1.sampling import adapter_base_model, find_adapter_dir, generate, load_for_generation
from rewards.correctness import gsm8k_correctness
from rewards.format import soft_format, strict_format
from rewards.parsing import answer_value, committed_answer, extract_answer, gold_number, last_number

logger = logging.getLogger(__name__)

# Row labels of the printed table, in order; maj@K rows are added when K > 1.
LABELS = {
    "accuracy": "accuracy (greedy pass@1)",
    "lenient_accuracy": "lenient accuracy",
    "strict_format_rate": "strict format rate",
    "soft_format_rate": "soft format rate",
    "mean_completion_tokens": "mean completion tokens",
    "truncation_rate": "truncation rate",
}


# ----------------------------------------------------------------------------- pure scoring


def strict_answer(text: str) -> Fraction | None:
    """The answer as `gsm8k_correctness` reads it: the value the last answer block commits to, else None."""
    block = extract_answer(text)
    return answer_value(committed_answer(block)) if block is not None else None


def lenient_answer(text: str) -> Fraction | None:
    """The last number anywhere in the completion, else None."""
    return last_number(text)


def score_completions(
    completions: Sequence[str],
    golds: Sequence[Any],
    num_tokens: Sequence[int] | None = None,
    truncated: Sequence[bool] | None = None,
) -> dict[str, float]:
    """Accuracy, lenient accuracy and format rates of one completion per question (plus length
    and truncation rate when token counts are given). Every rate is a fraction in [0, 1]."""
    count = len(completions)
    if count == 0 or len(golds) != count:
        raise ValueError(f"score_completions needs one gold per completion and at least one, "
                         f"got {count} and {len(golds)}")
    messages = [[{"role": "assistant", "content": text}] for text in completions]
    prompts = [[] for _ in completions]
    correct = gsm8k_correctness(prompts, messages, answer=list(golds))
    strict = strict_format(prompts, messages)
    soft = soft_format(prompts, messages)
    lenient = [_same(lenient_answer(text), gold) for text, gold in zip(completions, golds, strict=True)]
    metrics = {
        "accuracy": sum(1 for r in correct if r) / count,
        "lenient_accuracy": sum(lenient) / count,
        "strict_format_rate": sum(1 for r in strict if r > 0) / count,
        "soft_format_rate": sum(1 for r in soft if r > 0) / count,
    }
    if num_tokens is not None:
        metrics["mean_completion_tokens"] = sum(num_tokens) / count
    if truncated is not None:
        metrics["truncation_rate"] = sum(bool(t) for t in truncated) / count
    return metrics


def majority_vote(answers: Sequence[Fraction | None]) -> Fraction | None:
    """The most frequent answer, None answers (nothing extracted) abstaining.

    A tie goes to the answer that appeared first. None when every answer is None.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def vote_metrics(samples: Sequence[Sequence[str]], golds: Sequence[Any]) -> dict[str, float]:
    """maj@K, lenient maj@K and the mean accuracy of the samples, for K sampled completions per question."""
    if not samples or len(samples) != len(golds) or any(not group for group in samples):
        raise ValueError("vote_metrics needs a non-empty group of samples for each gold")
    k = len(samples[0])
    count = len(samples)
    maj = lenient_maj = sampled = lenient_sampled = 0.0
    for group, gold in zip(samples, golds, strict=True):
        strict = [strict_answer(text) for text in group]
        loose = [lenient_answer(text) for text in group]
        maj += _same(majority_vote(strict), gold)
        lenient_maj += _same(majority_vote(loose), gold)
        sampled += sum(_same(a, gold) for a in strict) / len(group)
        lenient_sampled += sum(_same(a, gold) for a in loose) / len(group)
    return {
        f"maj@{k}": maj / count,
        f"lenient_maj@{k}": lenient_maj / count,
        "sampled_accuracy": sampled / count,
        "lenient_sampled_accuracy": lenient_sampled / count,
    }


def _same(answer: Fraction | None, gold: Any) -> bool:
    value = gold_number(gold)
    return answer is not None and value is not None and answer == value


def _number_text(value: Fraction | None) -> str | None:
    if value is None:
        return None
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


# ----------------------------------------------------------------------------- evaluation with a model


@dataclass
class EvalReport:
    """What `evaluate` found: metrics and per-question records for each model evaluated."""

    settings: dict[str, Any]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # "base"/"adapter" -> metric -> value
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "metrics": self.metrics, "records": self.records}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """The metrics as a plain-text table, one column per model."""
        names = list(self.metrics)
        keys = [k for k in LABELS if any(k in m for m in self.metrics.values())]
        keys += dict.fromkeys(k for m in self.metrics.values() for k in m if k not in LABELS)  # each once
        rows = [["metric", *names]]
        for key in keys:
            label = LABELS.get(key, key.replace("_", " "))
            rows.append([label, *(_cell(key, self.metrics[name].get(key)) for name in names)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
            for row in rows
        )


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if key == "mean_completion_tokens" else f"{value:.3f}"


def evaluate(
    recipe: Recipe,
    *,
    adapter: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    samples: int = 1,
    batch_size: int = 8,
    seed: int | None = None,
    compare_base: bool = True,
) -> EvalReport:
    """Evaluate the recipe's model (with the adapter at `adapter` when given) on `split` of its data.

    Args:
        recipe: the recipe the adapter was trained with (model, data and generation settings).
        adapter: a run folder or its adapter/ folder; None evaluates the base model alone.
        split: the dataset split (the arithmetic source gives "test" its own problems).
        limit: evaluate the first `limit` questions only.
        samples: K > 1 adds maj@K over K completions sampled with the recipe's temperature and top_p.
        batch_size: sequences generated together.
        seed: sampling seed (default the recipe's run.seed).
        compare_base: with an adapter, evaluate the base model too.

    Progress is logged (one line per model evaluated).
    """
    if samples < 1 or batch_size < 1 or (limit is not None and limit < 1):
        raise ValueError(f"samples, batch_size and limit must be at least 1, got {samples}, {batch_size}, {limit}")
    seed = recipe.run.seed if seed is None else seed
    gen = recipe.generation
    questions = load_questions(dataclasses.replace(recipe.data, limit=None), seed=recipe.run.seed, split=split)
    if limit is not None and limit < len(questions):
        questions = questions.select(range(limit))
    if gen.engine != "hf":
        logger.info("note: evaluation uses HF generation (transformers generate), "
                    "not the recipe's %r engine", gen.engine)
    adapter_dir = find_adapter_dir(adapter) if adapter is not None else None
    settings = {
        "model": recipe.model.name_or_path,
        "adapter": str(adapter_dir) if adapter_dir else None,
        "data_source": recipe.data.source,
        "split": split,
        "questions": len(questions),
        "samples": samples,
        "seed": seed,
        "max_new_tokens": gen.max_completion_length,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
    }
    trained_on = adapter_base_model(adapter_dir) if adapter_dir is not None else None
    if trained_on and Path(trained_on).name != Path(resolve_model_path(recipe.model.name_or_path)).name:
        logger.info("note: the adapter was trained on %r; evaluating it on %r", trained_on, recipe.model.name_or_path)
    model, tokenizer = load_for_generation(recipe, adapter_dir)
    runs: list[tuple[str, Any]] = []
    if adapter_dir is None or compare_base:
        runs.append(("base", model.disable_adapter() if adapter_dir is not None else contextlib.nullcontext()))
    if adapter_dir is not None:
        runs.append(("adapter", contextlib.nullcontext()))

    report = EvalReport(settings=settings)
    prompts, golds = questions["prompt"], questions["answer"]
    sampling = f", then {samples} samples each" if samples > 1 else ""
    for name, context in runs:
        logger.info("evaluating %s on %d questions (greedy%s)", name, len(prompts), sampling)
        with context:
            greedy, sampled = _generate_all(model, tokenizer, prompts, gen, samples, batch_size, seed)
        metrics = score_completions([c.text for c in greedy], golds, [c.num_tokens for c in greedy],
                                    [c.truncated for c in greedy])
        if sampled is not None:
            metrics.update(vote_metrics([[c.text for c in group] for group in sampled], golds))
        report.metrics[name] = metrics
        report.records[name] = _records(questions["question"], golds, greedy, sampled)
    return report


def _generate_all(model: Any, tokenizer: Any, prompts: Sequence[Any], gen: Any, samples: int, batch_size: int,
                  seed: int) -> tuple[list[Any], list[list[Any]] | None]:
    """One greedy completion per prompt and, when samples > 1, that many sampled ones."""
    limit = gen.max_completion_length
    greedy = [outs[0] for outs in generate(model, tokenizer, prompts, max_new_tokens=limit, batch_size=batch_size,
                                           seed=seed)]
    if samples == 1:
        return greedy, None
    sampled = generate(model, tokenizer, prompts, max_new_tokens=limit, num_samples=samples, do_sample=True,
                       temperature=gen.temperature, top_p=gen.top_p, batch_size=batch_size, seed=seed)
    return greedy, sampled


def _records(questions: Sequence[str], golds: Sequence[str], greedy: Sequence[Any],
             sampled: Sequence[Any] | None) -> list[dict[str, Any]]:
    """One JSON-ready record per question: the greedy completion, the answers read from it, the votes."""
    out = []
    for index, (question, gold, completion) in enumerate(zip(questions, golds, greedy, strict=True)):
        record = {
            "question": question,
            "gold": gold,
            "completion": completion.text,
            "answer": _number_text(strict_answer(completion.text)),
            "lenient_answer": _number_text(lenient_answer(completion.text)),
            "correct": _same(strict_answer(completion.text), gold),
            "lenient_correct": _same(lenient_answer(completion.text), gold),
            "num_tokens": completion.num_tokens,
            "truncated": completion.truncated,
        }
        if sampled is not None:
            texts = [c.text for c in sampled[index]]
            record["sample_answers"] = [_number_text(strict_answer(t)) for t in texts]
            record["sample_lenient_answers"] = [_number_text(lenient_answer(t)) for t in texts]
            record["vote"] = _number_text(majority_vote([strict_answer(t) for t in texts]))
            record["lenient_vote"] = _number_text(majority_vote([lenient_answer(t) for t in texts]))
        out.append(record)
    return out


def default_output(adapter: str | Path | None, out: str | Path | None) -> Path:
    """Where eval.json goes: `out` when given, else the adapter's run folder, else ./eval.json."""
    if out is not None:
        return Path(out)
    if adapter is None:
        return Path(EVAL_FILE)
    adapter_dir = find_adapter_dir(adapter)
    run_dir = adapter_dir.parent if adapter_dir.name == "adapter" else adapter_dir
    return run_dir / EVAL_FILE
