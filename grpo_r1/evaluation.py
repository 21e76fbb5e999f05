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

Who samples is the recipe's `generation.engine` (or `engine=`): `hf` through transformers'
`generate` in batches of 8 sequences; `hf-compiled` and `vllm` through the training engines
(grpo_r1.engines), prompts tokenized as the trainer does, every question of a round of
`batch_size` sequences (default 256) in one call, greedy at temperature 0; `unsloth` through
`vllm`. The base model is the same model with its adapter disabled (hf, hf-compiled; the static
decoder is rebuilt for it) or vLLM requests without the LoRA. Greedy answers agree across
engines up to floating-point ties; the same seed gives the same numbers with one engine.

The scoring functions (`score_completions`, `majority_vote`, `vote_metrics`) are pure and need
no model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from grpo_r1.data import load_questions
from grpo_r1.engines import ENGINES, build_engine, check_engine, engine_settings
from grpo_r1.errors import EngineError
from grpo_r1.model import model_path, resolve_model_path
from grpo_r1.prompts import tokenize_prompts
from grpo_r1.recipe import Recipe
from grpo_r1.run.folder import EVAL_FILE
from grpo_r1.sampling import (
    Completion,
    adapter_base_model,
    decoded_completion,
    find_adapter_dir,
    generate,
    load_for_generation,
)
from rewards.correctness import gsm8k_correctness
from rewards.format import soft_format, strict_format
from rewards.parsing import answer_value, committed_answer, extract_answer, gold_number, last_number

logger = logging.getLogger(__name__)

HF_BATCH = 8  # sequences per batch of transformers' generate (engine hf)
ENGINE_ROUND = 256  # sequences per round of an engine (hf-compiled, vllm)

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
    seconds: dict[str, float] = field(default_factory=dict)  # "base"/"adapter" -> wall seconds spent sampling
    # "base"/"adapter" -> wall seconds of each batch (hf) or round (engines), greedy then sampled: the first
    # round of a compiled engine includes its compile
    round_seconds: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "metrics": self.metrics, "seconds": self.seconds,
                "round_seconds": self.round_seconds, "records": self.records}

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
    batch_size: int | None = None,
    seed: int | None = None,
    compare_base: bool = True,
    engine: str | None = None,
) -> EvalReport:
    """Evaluate the recipe's model (with the adapter at `adapter` when given) on `split` of its data.

    Args:
        recipe: the recipe the adapter was trained with (model, data and generation settings).
        adapter: a run folder or its adapter/ folder; None evaluates the base model alone.
        split: the dataset split (the arithmetic source gives "test" its own problems).
        limit: evaluate the first `limit` questions only.
        samples: K > 1 adds maj@K over K completions sampled with the recipe's temperature and top_p.
        batch_size: sequences generated together: a batch of transformers' generate (engine hf,
            default 8) or one engine round (default ENGINE_ROUND).
        seed: sampling seed (default the recipe's run.seed).
        compare_base: with an adapter, evaluate the base model too.
        engine: who samples (default the recipe's generation.engine): "hf" (transformers'
            generate), "hf-compiled" or "vllm" (the training engines, greedy at temperature 0);
            "unsloth" samples through "vllm" here.

    Progress: a bar per model and pass on stderr, and one logged line per model.
    """
    if samples < 1 or (batch_size is not None and batch_size < 1) or (limit is not None and limit < 1):
        raise ValueError(f"samples, batch_size and limit must be at least 1, got {samples}, {batch_size}, {limit}")
    seed = recipe.run.seed if seed is None else seed
    gen = recipe.generation
    kind = evaluation_engine(engine or gen.engine)
    batch_size = batch_size or (HF_BATCH if kind == "hf" else ENGINE_ROUND)
    questions = load_questions(dataclasses.replace(recipe.data, limit=None), seed=recipe.run.seed, split=split)
    if limit is not None and limit < len(questions):
        questions = questions.select(range(limit))
    adapter_dir = find_adapter_dir(adapter) if adapter is not None else None
    model_cfg = recipe.model
    settings = {
        "model": f"{model_cfg.architecture} (random init)" if model_cfg.init == "random" else model_cfg.name_or_path,
        "adapter": str(adapter_dir) if adapter_dir else None,
        "data_source": recipe.data.source,
        "split": split,
        "questions": len(questions),
        "samples": samples,
        "seed": seed,
        "max_new_tokens": gen.max_completion_length,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "engine": kind,
        "batch_size": batch_size,
    }
    trained_on = adapter_base_model(adapter_dir) if adapter_dir is not None else None
    if trained_on and Path(trained_on).name != Path(resolve_model_path(recipe.model.name_or_path)).name:
        logger.info("note: the adapter was trained on %r; evaluating it on %r", trained_on, recipe.model.name_or_path)
    if kind != "hf":
        check_engine(dataclasses.replace(engine_settings(recipe), engine=kind), recipe.model.name_or_path)
    model, tokenizer = load_for_generation(recipe, adapter_dir, device="cpu" if kind == "vllm" else None)
    names = (["base"] if adapter_dir is None or compare_base else []) + (["adapter"] if adapter_dir else [])
    prompts = questions["prompt"]
    sampler = (_HFSampler(model, tokenizer, recipe, prompts, batch_size, seed) if kind == "hf" else
               _EngineSampler(model, tokenizer, recipe, prompts, kind, batch_size, seed,
                              with_adapter=adapter_dir is not None))
    report = EvalReport(settings=settings)
    golds = questions["answer"]
    sampling = f", then {samples} samples each" if samples > 1 else ""
    try:
        for name in names:
            logger.info("evaluating %s on %d questions with engine %s (greedy%s)", name, len(golds), kind, sampling)
            started = time.perf_counter()
            sampler.round_seconds.clear()
            with sampler.serving(base=name == "base" and adapter_dir is not None):
                greedy = [group[0] for group in sampler.complete(1, f"{name} greedy")]
                sampled = sampler.complete(samples, f"{name} {samples} samples") if samples > 1 else None
            report.seconds[name] = round(time.perf_counter() - started, 3)
            report.round_seconds[name] = list(sampler.round_seconds)
            logger.info("%s: sampled in %.1f s", name, report.seconds[name])
            metrics = score_completions([c.text for c in greedy], golds, [c.num_tokens for c in greedy],
                                        [c.truncated for c in greedy])
            if sampled is not None:
                metrics.update(vote_metrics([[c.text for c in group] for group in sampled], golds))
            report.metrics[name] = metrics
            report.records[name] = _records(questions["question"], golds, greedy, sampled)
    finally:
        sampler.close()
    return report


def evaluation_engine(name: str) -> str:
    """The engine evaluation samples with for `name` (the recipe's generation.engine or --engine).

    "unsloth" becomes "vllm": Unsloth's fast_inference is a vLLM sharing the trainer's weights,
    and with no trainer to share them with, the vllm engine (base model + the adapter as a vLLM
    LoRA) samples the same way.
    """
    if name not in ENGINES:
        raise EngineError(f"the evaluation engine must be one of {', '.join(ENGINES)}; got {name!r}")
    if name == "unsloth":
        logger.info("note: evaluation samples an unsloth recipe through the vllm engine "
                    "(the base model in vLLM, the adapter as a vLLM LoRA)")
        return "vllm"
    return name


def balanced_rounds(count: int, per_round: int) -> tuple[int, list[range]]:
    """Split `count` items into the fewest rounds of at most `per_round`, all of one size (the last one
    may be shorter: padded up to that size by the caller, so a compiled engine sees one shape).

    Returns (the round size, the item ranges).
    """
    if count < 1 or per_round < 1:
        raise ValueError(f"balanced_rounds needs at least one item and one per round, got {count}, {per_round}")
    rounds = -(-count // per_round)
    size = -(-count // rounds)
    return size, [range(start, min(start + size, count)) for start in range(0, count, size)]


class _HFSampler:
    """Completions of the chat `prompts` through transformers' generate (grpo_r1.sampling), in batches of
    `batch_size` sequences."""

    def __init__(self, model: Any, tokenizer: Any, recipe: Recipe, prompts: Sequence[Any], batch_size: int,
                 seed: int) -> None:
        self.model, self.tokenizer, self.gen, self.prompts = model, tokenizer, recipe.generation, prompts
        self.batch_size, self.seed = batch_size, seed
        self.round_seconds: list[float] = []

    def serving(self, *, base: bool) -> contextlib.AbstractContextManager:
        """`base`: the model with its adapter disabled (PEFT), else the model as loaded."""
        return self.model.disable_adapter() if base else contextlib.nullcontext()

    def complete(self, count: int, label: str) -> list[list[Completion]]:
        """`count` completions per prompt: greedy when count is 1, else sampled."""
        with _Progress(len(self.prompts), label, self.round_seconds) as bar:
            return generate(self.model, self.tokenizer, self.prompts, max_new_tokens=self.gen.max_completion_length,
                            num_samples=count, do_sample=count > 1, temperature=self.gen.temperature,
                            top_p=self.gen.top_p, batch_size=self.batch_size, seed=self.seed, on_batch=bar.update)

    def close(self) -> None:
        """Nothing to free: the model goes when the caller drops it."""


class _EngineSampler:
    """Completions of the chat `prompts` through a training engine (hf-compiled, vllm): tokenized as the
    trainer does, every prompt of a round of `batch_size` sequences in one `generate` call, greedy at
    temperature 0."""

    def __init__(self, model: Any, tokenizer: Any, recipe: Recipe, prompts: Sequence[Any], kind: str,
                 batch_size: int, seed: int, *, with_adapter: bool) -> None:
        self.model, self.tokenizer, self.gen = model, tokenizer, recipe.generation
        self.batch_size, self.seed = batch_size, seed
        self.round_seconds: list[float] = []
        # As the trainer tokenizes them (grpo_r1.trainer.rollout): the tokenizer's chat template, TRL's kwargs.
        self.prompt_ids = tokenize_prompts(tokenizer, prompts,
                                           chat_template_kwargs=recipe.training.get("chat_template_kwargs"))
        settings = dataclasses.replace(
            engine_settings(recipe), engine=kind, temperature=0.0, top_p=1.0,
            merged_weights=recipe.generation.merged_weights and kind == "hf-compiled",
            max_lora_rank=None if with_adapter else recipe.lora.r,  # None: the adapter's own rank
        )
        self.engine = build_engine(
            settings, model, tokenizer, base_model_dir=model_path(recipe.model),
            llm_kwargs=None if with_adapter or kind != "vllm" else {"enable_lora": False},
            prompt_width=max(len(ids) for ids in self.prompt_ids),
        )

    @contextlib.contextmanager
    def serving(self, *, base: bool) -> Iterator[None]:
        """`base`: the engine samples the base model (adapter left out), else the model's adapter. A model
        loaded without an adapter is always sampled as the base."""
        if base or not hasattr(self.model, "peft_config"):
            self.engine.serve_base(self.model)
        else:
            self.engine.sync(self.model, 0)
        yield

    def complete(self, count: int, label: str) -> list[list[Completion]]:
        """`count` completions per prompt: greedy (temperature 0) when count is 1, else sampled with the
        recipe's temperature and top_p."""
        prompt_ids = self.prompt_ids
        greedy = count == 1
        self.engine.set_sampling(dataclasses.replace(
            self.engine.sampling, temperature=0.0 if greedy else self.gen.temperature,
            top_p=1.0 if greedy else self.gen.top_p))
        torch.manual_seed(self.seed)
        size, rounds = balanced_rounds(len(prompt_ids), max(1, self.batch_size // count))
        out: list[list[Completion]] = []
        with _Progress(len(prompt_ids), label, self.round_seconds) as bar:
            for items in rounds:
                chunk = [prompt_ids[i] for i in items]
                padded = chunk + [chunk[-1]] * (size - len(chunk))  # one shape for every round: one compile
                groups = self.engine.generate(padded, [count] * len(padded))[:len(chunk)]
                out.extend([self._decoded(c) for c in group] for group in groups)
                bar.update(len(chunk))
        return out

    def _decoded(self, completion: Any) -> Completion:
        return decoded_completion(self.tokenizer, completion.token_ids, truncated=completion.finish_reason != "stop")

    def close(self) -> None:
        """Close the engine (vLLM frees its memory and its torch.distributed group)."""
        self.engine.close()


class _Progress:
    """A progress bar on stderr counting questions (the table goes to stdout) that also appends each
    update's wall seconds (one batch or round) to `rounds`."""

    def __init__(self, total: int, label: str, rounds: list[float]) -> None:
        self.rounds = rounds
        self._bar = tqdm(total=total, desc=label, unit="question", file=sys.stderr, mininterval=1.0,
                         dynamic_ncols=True)
        self._last = time.perf_counter()

    def update(self, questions: int) -> None:
        """`questions` more are done: one more batch or round."""
        now = time.perf_counter()
        self.rounds.append(round(now - self._last, 3))
        self._last = now
        self._bar.update(questions)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


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
