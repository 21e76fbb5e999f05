"""Where a GRPO step's GPU memory peaks, phase by phase, against the preflight's worst case, in one process:

    python benchmarks/phase_memory.py RECIPE.yaml [section.key=value ...] [--gpu-mem GiB] [--steps N]

Runs the recipe's worst-case preflight (grpo_r1.trainer.preflight) and prints its peak, then N real
GRPO steps with a listener on the trainer's phases (grpo_r1.trainer.trl_private.PHASE_METHODS).
Each phase boundary closes a segment, and the segment's peak allocated memory (the CUDA allocator's
max_memory_allocated, reset at every boundary) is printed with the memory allocated when it began.
A segment is named by the innermost phase running; "training" is everything outside the phases
(the loss's forward with gradients is the `logprobs (grad)` segment, its backward and the optimizer
are "training"). CUDA only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from grpo_r1.data import load_questions
from grpo_r1.engines import engine_from_recipe
from grpo_r1.model import load_model
from grpo_r1.recipe import load_recipe
from grpo_r1.scoring import load_reward_functions
from grpo_r1.trainer import trl_private
from grpo_r1.trainer.build import build_trainer
from grpo_r1.trainer.grpo_config import check_training, grpo_config
from grpo_r1.trainer.preflight import preflight_step

GIB = 2**30


class PhasePeaks:
    """Closes a segment at every phase boundary and keeps (step, segment, allocated at its start, its peak)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.step = 0
        self.rows: list[tuple[int, str, float, float]] = []
        self._start = 0.0
        torch.cuda.reset_peak_memory_stats()

    def _close(self) -> None:
        torch.cuda.synchronize()
        name = self.stack[-1] if self.stack else "training"
        self.rows.append((self.step, name, self._start, torch.cuda.max_memory_allocated() / GIB))
        torch.cuda.reset_peak_memory_stats()
        self._start = torch.cuda.memory_allocated() / GIB

    def phase_started(self, phase: str, grad: bool) -> None:
        self._close()
        self.stack.append(f"{phase}{' (grad)' if grad else ''}")

    def phase_ended(self, phase: str, grad: bool) -> None:
        self._close()
        self.stack.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--gpu-mem", type=float, default=24.0)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_intermixed_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    check_training(recipe)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_mem * GIB / total))
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    reward_funcs = load_reward_functions(recipe.rewards, dataset.column_names, base_dir=recipe.base_dir)
    loaded = load_model(recipe)
    report = preflight_step(recipe, loaded, dataset, reward_funcs, cpu=False)
    print(f"preflight: {report.describe()}")
    engine = engine_from_recipe(recipe, loaded, dataset=dataset)
    with tempfile.TemporaryDirectory() as tmp:
        config = grpo_config(recipe, Path(tmp), "phase-memory", loaded.dtype, cpu=False, max_steps=args.steps,
                             save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True)
        trainer, _ = build_trainer(recipe, loaded, dataset, reward_funcs, config, engine=engine)
        peaks = PhasePeaks()
        trl_private.watch_phases(trainer, peaks)
        original = trainer.training_step

        def counted(*a, **k):
            peaks.step += 1
            return original(*a, **k)

        trainer.training_step = counted  # micro-batch count: each training_step is one micro-batch
        trainer.train()
        peaks._close()
    print("| micro-batch | segment | allocated at start GiB | peak allocated GiB |")
    print("| --- | --- | --- | --- |")
    for step, name, start, peak in peaks.rows:
        print(f"| {step} | {name} | {start:.2f} | {peak:.2f} |")
    worst = max(peaks.rows, key=lambda row: row[3])
    print(f"highest: micro-batch {worst[0]}, {worst[1]}: {worst[3]:.2f} GiB; preflight "
          f"{(report.peak_bytes or 0) / GIB:.2f} GiB")
    if engine is not None:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
