"""Which GPU kernels one decode token of the static decoder runs, how many, and how long each takes.

    python benchmarks/decode_profile.py RECIPE.yaml [overrides] [--rows 6] [--variant live] [--top 25]

For the recipe's model with its LoRA adapter (B made non-zero), the decoder's token step is compiled as in
training but run without the CUDA graph, so that torch.profiler sees every kernel. Two rounds are profiled,
of `--short` and `--long` tokens after the same prompt; their difference divided by the extra tokens is one
token's kernels, without the prefill. Printed: kernels per token and their summed device time, by kind
(matrix products, bitsandbytes' 4-bit kernels, Triton kernels from torch.compile, copies and the rest), and
the `--top` kernels by time per token, with how many times each runs per token. A replayed CUDA graph runs
the same kernels without launch gaps: set the summed device time against gen_microbench's time per token.
Variants as in benchmarks/gen_microbench.py: live (the default on a GPU), own-storage, merged.
"""

import argparse
from collections import defaultdict

import torch
from decoder_bench_setup import VARIANTS, left_padded, model_on_gpu, prompt_tokens
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from grpo_r1.engines.static_decoder import StaticDecoder

KINDS = (("4-bit", ("4bit", "kdequantize", "dequantize")), ("product", ("gemm", "gemv", "cutlass", "nvjet", "xmma")),
         ("triton", ("triton",)), ("copy", ("memcpy", "memset", "copy", "fill")))


def _kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KINDS if any(mark in lowered for mark in marks)), "other")


def _kernels(decoder: StaticDecoder, ids: torch.Tensor, mask: torch.Tensor, tokens: int) -> dict[str, list[float]]:
    """Kernel name -> [count, device microseconds] over one round of `tokens` tokens."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.sample(ids, mask, tokens)
        torch.cuda.synchronize()
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.key_averages():
        if event.device_type == DeviceType.CUDA:  # kernels, copies and fills, not the host's calls
            out[event.key][0] += event.count
            out[event.key][1] += event.device_time_total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--variant", choices=VARIANTS, default="live")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not 1 <= args.short < args.long:
        parser.error("--short must be at least 1 and less than --long")
    model, tok = model_on_gpu(args.recipe, args.overrides)
    pad = tok.pad_token_id or 0
    ids, mask = left_padded(prompt_tokens(tok), args.rows, args.width, pad)
    decoder = StaticDecoder(model, batch=args.rows, width=args.width, max_new=args.long, temperature=1.0, top_p=1.0,
                            stop_token_ids=[], pad_token_id=pad, compile=True, graph=False, **VARIANTS[args.variant])
    decoder.sample(ids, mask, args.long)  # compiles
    short, long = _kernels(decoder, ids, mask, args.short), _kernels(decoder, ids, mask, args.long)
    extra = args.long - args.short
    per_token = {name: ((long[name][0] - short.get(name, [0, 0.0])[0]) / extra,
                        (long[name][1] - short.get(name, [0, 0.0])[1]) / extra) for name in long}
    per_token = {name: value for name, value in per_token.items() if value[0] > 0}
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, (count, micros) in per_token.items():
        by_kind[_kind(name)][0] += count
        by_kind[_kind(name)][1] += micros
    total_count = sum(count for count, _ in per_token.values())
    total_micros = sum(micros for _, micros in per_token.values())
    print(f"{args.variant}, {args.rows} rows, {torch.cuda.get_device_name()}: {total_count:.0f} kernels per token, "
          f"{total_micros / 1e3:.3f} ms of device time per token")
    for kind, (count, micros) in sorted(by_kind.items(), key=lambda item: -item[1][1]):
        print(f"  {kind:8s} {count:7.1f} kernels  {micros / 1e3:7.3f} ms  {micros / max(count, 1):6.1f} us each")
    print(f"the {args.top} kernels with the most time per token:")
    for name, (count, micros) in sorted(per_token.items(), key=lambda item: -item[1][1])[:args.top]:
        print(f"  {micros:8.1f} us  x{count:5.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
