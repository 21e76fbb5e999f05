"""One generation round of the CPU recipe, sampled three ways in alternation, on a CPU.

    python benchmarks/cpu_decode_bench.py [RECIPE] [overrides] [--questions 2] [--tokens 96] [--reps 3]

The recipe's model and LoRA adapter (B set to small random values, as after training, so the
adapter's matrices are really computed), `--questions` prompts of the recipe's training data x
generation.num_generations, every completion forced to `--tokens` tokens (no end token) so each
way does the same work:
    hf         model.generate on the PEFT model with a dynamic cache (TRL's generate, generation.engine=hf)
    static     the hf-compiled engine's static decoder, eager, LoRA read live (generation.engine=hf-compiled)
    merged     the same with generation.merged_weights=true (one merged, fused copy of the linear weights)
    static-flinear, merged-flinear   the same two with every projection through F.linear (the decoder's
               blocked few-row CPU path, static_decoder.FEW_ROWS, turned off)
Prints wall and CPU seconds of each round (median of --reps after one warm-up each, the ways
alternating so a change in the machine's load hits all of them) and the load average.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/smollm2_gsm8k_cpu.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ways", default="hf,static,merged,static-flinear,merged-flinear")
    args = parser.parse_args()

    from grpo_r1.data import load_questions
    from grpo_r1.engines import static_decoder
    from grpo_r1.engines.hf_compiled import padded_width
    from grpo_r1.engines.static_decoder import StaticDecoder
    from grpo_r1.model import load_model
    from grpo_r1.prompts import longest_prompt, tokenize_prompts
    from grpo_r1.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    loaded = load_model(recipe)
    model, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    dataset = load_questions(recipe.data, seed=recipe.run.seed)
    gens = recipe.generation.num_generations
    prompts = tokenize_prompts(tok, list(dataset["prompt"][: args.questions]))
    rows = [p for p in prompts for _ in range(gens)]
    width = padded_width(longest_prompt(dataset, tok)[1])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    temperature = recipe.generation.temperature
    decoders = {}

    def hf() -> None:
        model.eval()
        with torch.no_grad():
            model.generate(input_ids=ids[:, -max(map(len, rows)):], attention_mask=mask[:, -max(map(len, rows)):],
                           do_sample=True, temperature=temperature, top_k=0, max_new_tokens=args.tokens,
                           min_new_tokens=args.tokens, pad_token_id=pad)
        model.train()

    def static(merged: bool):
        def run() -> None:
            if merged not in decoders:
                decoders[merged] = StaticDecoder(model, batch=len(rows), width=width, max_new=args.tokens,
                                                 temperature=temperature, top_p=1.0, stop_token_ids=[],
                                                 pad_token_id=pad, compile=False, graph=False, merged=merged)
            decoders[merged].sample(ids, mask, args.tokens)
        return run

    def plain_linear(run):
        """The same decoder with every projection through F.linear (the blocked few-row path off)."""
        def wrapped() -> None:
            saved, static_decoder.FEW_ROWS = static_decoder.FEW_ROWS, 0
            try:
                run()
            finally:
                static_decoder.FEW_ROWS = saved
        return wrapped

    ways = {"hf": hf, "static": static(False), "merged": static(True),
            "static-flinear": plain_linear(static(False)), "merged-flinear": plain_linear(static(True))}
    chosen = [w for w in args.ways.split(",") if w]
    for way in chosen:
        ways[way]()  # warm-up
    walls: dict[str, list[float]] = {w: [] for w in chosen}
    cpus: dict[str, list[float]] = {w: [] for w in chosen}
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    for _ in range(args.reps):
        for way in chosen:
            wall, cpu = time.perf_counter(), time.process_time()
            ways[way]()
            walls[way].append(time.perf_counter() - wall)
            cpus[way].append(time.process_time() - cpu)
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{len(rows)} rows ({args.questions} questions x {gens}) x {args.tokens} tokens, prompts padded to {width}; "
          f"torch threads {torch.get_num_threads()}; load average {load_before} -> {load_after}")
    for way in chosen:
        print(f"{way:15s} wall {statistics.median(walls[way]):6.2f} s (min {min(walls[way]):.2f}, "
              f"max {max(walls[way]):.2f})  cpu {statistics.median(cpus[way]):6.2f} s  "
              f"{1000 * statistics.median(walls[way]) / args.tokens:6.1f} ms/token")


if __name__ == "__main__":
    main()
