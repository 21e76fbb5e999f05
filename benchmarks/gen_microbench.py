"""Where the hf-compiled engine's decode time goes, on the GPU (docs/benchmarks.md).

    python benchmarks/gen_microbench.py RECIPE.yaml [overrides]

Times, for the recipe's model with its LoRA adapter: one decode forward (eager and compiled
with CUDA graphs) at the engine's batch, and a whole engine.generate round, so the gap between
the model's own time per token and the engine's shows the loop's overhead.
"""

import sys
import time

import torch

from grpo_r1.engines import build_engine
from grpo_r1.model import load_model
from grpo_r1.recipe import load_recipe


def timed(fn, repeat=20):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main():
    recipe = load_recipe(sys.argv[1], sys.argv[2:])
    loaded = load_model(recipe)
    model, tok = loaded.model.to("cuda"), loaded.tokenizer
    model.eval()
    gen = recipe.generation
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 times 7? " * 8}], add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    rows = gen.num_generations * int(dict(recipe.training).get("per_device_train_batch_size", 6)) // gen.num_generations
    from transformers import StaticCache

    for batch in (rows, 48):
        cache = StaticCache(config=model.config, max_cache_len=512)
        x = torch.tensor([ids] * batch, device="cuda")
        with torch.no_grad():
            model(input_ids=x, past_key_values=cache, use_cache=True)
            pos = torch.tensor([len(ids)], device="cuda")
            one = x[:, -1:]

            def step():
                return model(input_ids=one, past_key_values=cache, cache_position=pos, use_cache=True).logits

            eager = timed(step)
            compiled_forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)

            def step_c():
                return compiled_forward(input_ids=one, past_key_values=cache, cache_position=pos, use_cache=True).logits

            for _ in range(3):
                step_c()
            compiled = timed(step_c)
            with model.disable_adapter():
                base_c = timed(step_c)
        print(f"batch {batch}: decode step eager {eager * 1e3:.2f} ms, compiled {compiled * 1e3:.2f} ms, "
              f"compiled without LoRA {base_c * 1e3:.2f} ms", flush=True)

    engine = build_engine("hf-compiled", gen, model, tok, max_seq_length=recipe.model.max_seq_length)
    engine.sync(model, 0)
    for batch_prompts in (rows // gen.num_generations, 8):
        for attempt in range(3):
            start = time.perf_counter()
            groups = engine.generate([ids] * batch_prompts, [gen.num_generations] * batch_prompts)
            torch.cuda.synchronize()
            took = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for g in groups for c in g)
            print(f"engine.generate {batch_prompts} prompts x {gen.num_generations}: {took:.2f} s, {tokens} tokens, "
                  f"{took / (tokens / (batch_prompts * gen.num_generations)) * 1e3:.1f} ms per decode step (attempt {attempt})", flush=True)


if __name__ == "__main__":
    main()
