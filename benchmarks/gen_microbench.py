"""Decode speed of the hf-compiled engine's static decoder on the GPU (docs/benchmarks.md).

    python benchmarks/gen_microbench.py RECIPE.yaml [overrides] [--batches 6,48] [--tokens 200]

For the recipe's model with its LoRA adapter, at each batch size: one whole sampling round of
`--tokens` tokens after a prompt of the recipe's data (time per token, first round excluded:
it compiles and captures), with torch.compile + CUDA graph and with the CUDA graph alone; then
how far the sampled tokens' log-probabilities are from the training forward's (bf16 kernels
differ; TRL reports the same gap as sampling/sampling_logp_difference).
"""

import argparse
import time

import torch

from grpo_r1.engines.static_decoder import StaticDecoder
from grpo_r1.model import load_model
from grpo_r1.prompts import tokenize_prompts
from grpo_r1.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", default="6,48")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    loaded = load_model(recipe)
    model, tok = loaded.model.to("cuda"), loaded.tokenizer
    prompt = tokenize_prompts(tok, [[{"role": "user", "content": "What is 12 times 7? " * 8}]])[0]
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.full((batch, args.width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((batch, args.width), dtype=torch.long)
        ids[:, -len(prompt):] = torch.tensor(prompt)
        mask[:, -len(prompt):] = 1
        for compiled in (True, False):
            started = time.perf_counter()
            decoder = StaticDecoder(model, batch=batch, width=args.width, max_new=args.tokens, temperature=1.0,
                                    top_p=1.0, stop_token_ids=[], pad_token_id=tok.pad_token_id or 0,
                                    compile=compiled, graph=True)
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
            print(f"batch {batch:3d} {'compile+graph' if compiled else 'graph only   '}: round {best:.3f} s "
                  f"({best / args.tokens * 1000:.2f} ms/token), first round {first:.1f} s", flush=True)
            if compiled:
                with torch.no_grad():
                    full = torch.cat([torch.tensor([prompt] * 2, device="cuda"), tokens[:2]], dim=1)
                    logits = model(full).logits[:, len(prompt) - 1:-1].float()
                    forward = torch.log_softmax(logits, -1).gather(-1, tokens[:2, :, None]).squeeze(-1)
                diff = (forward - logprobs[:2]).abs()
                print(f"    logprob gap to the training forward: mean {diff.mean():.4f}, max {diff.max():.4f}")
            del decoder
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
