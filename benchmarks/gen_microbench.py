"""Decode speed of the hf-compiled engine's static decoder on the GPU (docs/benchmarks.md).

    python benchmarks/gen_microbench.py RECIPE.yaml [overrides] [--batches 6,48] [--tokens 200]
        [--variants own-storage,live,merged]

For the recipe's model with its LoRA adapter (B made non-zero, so the adapter counts), at each
batch size and for each variant: one whole sampling round of `--tokens` tokens after a prompt
of the recipe's data (time per token, best of 3 rounds; the first round, which compiles and
captures, is excluded), the GPU memory the decoder added at its peak, and how far the sampled
tokens' log-probabilities are from the training forward's under bf16 autocast, as the trainer
runs it (TRL reports the same gap as sampling/sampling_logp_difference). Variants:

  own-storage  the adapter read live, each projection's base weight where the model keeps it
               (18 products per layer, 7 of them 4-bit for a 4-bit base)
  live         the same after share_frozen_storage: each group's bases in one tensor with room
               for the stacked A (8 products per layer; a 4-bit base: q|k|v and gate|up one 4-bit
               product each, 12 products, 4 of them 4-bit); this moves the model's weights for
               good, so it must come after own-storage
  merged       a merged, fused copy of the weights (4 products per layer, one more copy)

Qwen2.5-7B QLoRA, own storage against joined in one process:
    MICRO_ARGS="model.architecture=qwen2.5-7b model.load_in_4bit=true --batches 6 --variants own-storage,live" \
        bash benchmarks/gpu_bench.sh micro
"""

import argparse
import time

import torch
from decoder_bench_setup import VARIANTS, left_padded, model_on_gpu, prompt_tokens

from grpo_r1.engines.static_decoder import StaticDecoder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", default="6,48")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--variants", default="own-storage,live,merged")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or ("own-storage" in variants and "live" in variants
                   and variants.index("own-storage") > variants.index("live")):
        parser.error(f"--variants: a comma-separated list of {', '.join(VARIANTS)}, own-storage before live")
    model, tok = model_on_gpu(args.recipe, args.overrides)
    prompt = prompt_tokens(tok)
    pad = tok.pad_token_id or 0
    for variant in variants:
        for batch in [int(b) for b in args.batches.split(",")]:
            ids, mask = left_padded(prompt, batch, args.width, pad)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            started = time.perf_counter()
            decoder = StaticDecoder(model, batch=batch, width=args.width, max_new=args.tokens, temperature=1.0,
                                    top_p=1.0, stop_token_ids=[], pad_token_id=pad, compile=True, graph=True,
                                    **VARIANTS[variant])
            decoder.sample(ids, mask, args.tokens)
            torch.cuda.synchronize()
            first = time.perf_counter() - started
            rounds = []
            for _ in range(3):
                started = time.perf_counter()
                tokens, logprobs = decoder.sample(ids, mask, args.tokens)
                torch.cuda.synchronize()
                rounds.append(time.perf_counter() - started)
            best = min(rounds)
            peak = (torch.cuda.max_memory_allocated() - before) / 2**30
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                full = torch.cat([torch.tensor([prompt] * 2, device="cuda"), tokens[:2]], dim=1)
                logits = model(full).logits[:, len(prompt) - 1:-1].float()
                forward = torch.log_softmax(logits, -1).gather(-1, tokens[:2, :, None]).squeeze(-1)
            gap = (forward - logprobs[:2]).abs()
            print(f"{variant:11s} batch {batch:3d}: round {best:.3f} s ({best / args.tokens * 1000:.2f} ms/token), "
                  f"first round {first:.1f} s, decoder peak +{peak:.2f} GiB, logprob gap to the training forward "
                  f"mean {gap.mean():.4f} max {gap.max():.4f}", flush=True)
            decoder.close()
            del decoder
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
