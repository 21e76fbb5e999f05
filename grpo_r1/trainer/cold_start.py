"""Cold start: a few supervised steps that teach the adapter the R1 answer layout before GRPO.

DeepSeek-R1 fine-tuned on a few thousand well-formatted solutions before its RL stage. A small
model needs this more: SmolLM2-135M never writes `<reasoning>`/`<answer>` tags when asked to, so
every completion in a group earns the same format reward and GRPO has nothing to compare. A few
dozen steps on the dataset's own reference solutions, rewritten in R1 layout, fix that:

    <reasoning>
    Ava has 12 apples. After getting 5 more, Ava has 12+5 = 17 apples.
    </reasoning>
    <answer>
    17
    </answer>

Only the completion's tokens are trained on (the prompt is masked out of the loss); the same
LoRA adapter then goes on to GRPO. The adapter after cold start is saved to
`<run>/cold_start/adapter`, so its effect can be evaluated apart from GRPO's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from grpo_r1.errors import DataError
from grpo_r1.prompts import r1_target, tokenize_prompts
from grpo_r1.recipe import ColdStartConfig
from rewards.layout import R1, Layout

COLD_START_DIR = "cold_start"

logger = logging.getLogger(__name__)


def check_cold_start_data(cfg: ColdStartConfig, columns: list[str]) -> None:
    """Fail now, before the model loads, if a cold start is asked for and the data cannot feed it."""
    missing = [c for c in ("prompt", "solution", "answer") if c not in columns]
    if cfg.steps and missing:
        raise DataError(f"cold_start needs the dataset columns prompt, solution and answer; {missing} missing. "
                        f"Set cold_start.steps=0 for data without reference solutions")


def tokenize_example(tokenizer: Any, prompt: list[dict[str, str]], target: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + target + end-of-turn, and labels with the prompt masked out (-100)."""
    if tokenizer.eos_token_id is None:
        raise DataError("cold_start needs a tokenizer with an eos token to end each target; set one on the "
                        "tokenizer (model.tokenizer) or set cold_start.steps=0")
    prompt_ids = tokenize_prompts(tokenizer, [prompt])[0]  # as GRPO's rollouts tokenize it
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def run_cold_start(model: Any, tokenizer: Any, dataset: Any, cfg: ColdStartConfig, seed: int, run_dir: Path,
                   write_files: bool = True, layout: Layout = R1) -> list[dict[str, float]]:
    """Train the model's adapter for `cfg.steps` supervised steps on `dataset`'s solutions.

    Args:
        model: the PEFT model GRPO will train (its trainable parameters are the adapter's).
        tokenizer: its tokenizer, with a chat template and an end-of-turn eos token.
        dataset: rows with `prompt` (chat messages), `solution` and `answer` columns (grpo_r1.data).
        cfg: the recipe's cold_start section; nothing happens when `cfg.steps` is 0.
        seed: picks which rows are used and their order.
        run_dir: the run folder; the adapter goes to `<run_dir>/cold_start/adapter` and one JSON
            line per step (loss, tokens) to `<run_dir>/cold_start/metrics.jsonl`.
        write_files: False in every process but the first under accelerate launch: each process
            trains its own copy the same way (same rows, same order), one writes the files and logs.
        layout: the tags the targets are written in (the recipe's `layout`, which its rewards score).

    Returns:
        The per-step records that were written.
    """
    if cfg.steps == 0:
        return []
    check_cold_start_data(cfg, dataset.column_names)
    examples = cold_start_examples(tokenizer, dataset, cfg, seed, layout)
    out_dir = Path(run_dir) / COLD_START_DIR
    if write_files:
        out_dir.mkdir(parents=True, exist_ok=True)
    optimizer = cold_start_optimizer(model, cfg)
    log = logger.info if write_files else _quiet
    log("cold start: %d supervised steps of %d on %d formatted solutions (%s)", cfg.steps, cfg.batch_size,
        len(examples), next(model.parameters()).device)
    records = supervised_steps(model, tokenizer, cold_start_batches(examples, cfg), optimizer,
                               metrics_path=out_dir / "metrics.jsonl"
                               if write_files else None, log=log, label="cold start")
    del optimizer
    if write_files:
        model.save_pretrained(str(out_dir / "adapter"))
        tokenizer.save_pretrained(str(out_dir / "adapter"))
    return records


Example = tuple[list[int], list[int]]  # token ids, labels (-100 on the prompt)


def cold_start_examples(tokenizer: Any, dataset: Any, cfg: ColdStartConfig, seed: int,
                        layout: Layout = R1) -> list[Example]:
    """The cold start's examples in the order it trains on them: `cfg.examples` (default steps x
    batch_size) rows of a `seed`-shuffled `dataset`, each prompt + solution in `layout`. The order
    depends on the seed alone, so a longer cold start begins with a shorter one's examples."""
    wanted = cfg.examples or cfg.steps * cfg.batch_size
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    return [solution_example(tokenizer, dataset[i], layout) for i in order[: min(wanted, len(order))]]


def cold_start_batches(examples: list[Example], cfg: ColdStartConfig) -> list[list[Example]]:
    """`cfg.steps` batches of `cfg.batch_size` examples, in order, cycling through them when steps x
    batch_size exceeds their number."""
    return [[examples[(step * cfg.batch_size + i) % len(examples)] for i in range(cfg.batch_size)]
            for step in range(cfg.steps)]


def cold_start_optimizer(model: Any, cfg: ColdStartConfig) -> torch.optim.Optimizer:
    """The cold start's optimizer: AdamW over the trainable parameters at cfg.learning_rate, no weight decay."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                             weight_decay=0.0)


def solution_example(tokenizer: Any, row: dict[str, Any], layout: Layout = R1) -> Example:
    """One supervised example from a dataset row: its prompt, then its reference solution in `layout`."""
    return tokenize_example(tokenizer, row["prompt"], r1_target(row["solution"], row["answer"], layout))


def supervised_steps(model: Any, tokenizer: Any, batches: list[list[Example]], optimizer: Any, *,
                     scheduler: Any = None, max_grad_norm: float = 1.0, metrics_path: Path | None = None,
                     log: Any = logger.info, label: str = "supervised") -> list[dict[str, float]]:
    """One optimizer step per batch on the next-token loss of the targets (the prompts masked out).

    `scheduler` (if any) steps after each optimizer step; gradients are clipped to `max_grad_norm`.
    Each step's record (loss, grad_norm, lr, target tokens, elapsed seconds) is returned and, with
    `metrics_path`, written there as one JSON line.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    records: list[dict[str, float]] = []
    model.train()
    start = time.perf_counter()
    with open(metrics_path, "w") if metrics_path is not None else contextlib.nullcontext() as metrics_file:
        for step, batch in enumerate(batches):
            input_ids, labels, mask = _pad_right(batch, pad_id)
            loss = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step + 1, "loss": loss.item(), "grad_norm": float(grad_norm), "learning_rate": lr,
                      "tokens": int((labels != -100).sum()), "elapsed_s": round(time.perf_counter() - start, 2)}
            records.append(record)
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
            if step == 0 or (step + 1) % 10 == 0 or step + 1 == len(batches):
                log("%s step %d/%d: loss %.3f", label, step + 1, len(batches), record["loss"])
    return records


def _quiet(message: str, *args: Any) -> None:
    """The log of processes that do not write: they say nothing."""


def _pad_right(batch: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return input_ids, labels, mask
