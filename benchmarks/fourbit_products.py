"""What one decode token's 4-bit products cost, by shape and by the way bitsandbytes computes them.

The static decoder reads a QLoRA base live through `bitsandbytes.matmul_4bit`, whose CUDA op chooses per
shape between a fused 4-bit kernel and dequantize + F.linear (bitsandbytes/backends/cuda/ops.py,
`_gemm_4bit_use_custom_cuda`). This times, for each projection shape of a model (Qwen2.5-7B's by default) at
a decode step's rows, `--layers` distinct weights one after the other, captured in a CUDA graph and replayed
(as the decoder runs them; distinct weights, so no layer finds the last one's in the L2 cache):

  matmul_4bit   bitsandbytes' public call, double-quantized scales (as QLoRA loads them): what the decoder runs
  float32       the same with the block scales in float32 (as the decoder's joined q|k|v and gate|up have them)
  fused         bitsandbytes' fused kernel, whatever its heuristic would choose (its internal function)
  dequantize    dequantize into a temporary, then F.linear (its fallback, also internal)
  bf16          a plain bf16 product of the same shape (what a dequantized copy of the weight would cost)

and the shapes `q|k|v` and `gate|up` joined, to set against their parts (v has k's shape, up gate's). Per
shape: microseconds per product and the GB/s of packed 4-bit weights read. The internal functions are
bitsandbytes 0.50's; where they are missing, their cells say "-".

    python benchmarks/fourbit_products.py [--rows 6] [--layers 28] [--hidden 3584] [--kv 512] [--ffn 18944]
"""

import argparse

import torch
from graph_timing import replay_seconds


def _shape_cells(n: int, k: int, args: argparse.Namespace) -> list[str]:
    """One table row's cells for weights of shape (n, k): microseconds per product and GB/s of packed weights."""
    import bitsandbytes
    import bitsandbytes.functional as bnb_functional

    try:
        from bitsandbytes.backends.cuda.ops import _dequant_linear_fallback, _gemm_4bit_kernel_impl
    except ImportError:  # another bitsandbytes: only the public call and bf16 are timed
        _dequant_linear_fallback = _gemm_4bit_kernel_impl = None
    weights, plain = [], []
    for _ in range(args.layers):
        dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, state = bnb_functional.quantize_4bit(dense, quant_type="nf4", compress_statistics=True)
        scales = bnb_functional.dequantize_blockwise(state.absmax, state.state2).float() + state.offset
        flat = bnb_functional.QuantState(scales, shape=state.shape, code=state.code, blocksize=state.blocksize,
                                         quant_type=state.quant_type, dtype=state.dtype)
        weights.append((packed, state, flat))
        plain.append(dense)
    x = torch.randn(args.rows, k, device="cuda", dtype=torch.bfloat16)
    ways = {
        "matmul_4bit": lambda: [bitsandbytes.matmul_4bit(x, p, quant_state=s) for p, s, _ in weights],
        "float32": lambda: [bitsandbytes.matmul_4bit(x, p, quant_state=f) for p, _, f in weights],
        "bf16": lambda: [x @ w.t() for w in plain],
    }
    if _gemm_4bit_kernel_impl is not None:
        ways["fused"] = lambda: [_gemm_4bit_kernel_impl(x, p, f.shape, f.absmax, f.blocksize, f.quant_type)
                                 for p, _, f in weights]
        ways["dequantize"] = lambda: [_dequant_linear_fallback(x, p, f.shape, f.absmax, f.blocksize, f.quant_type)
                                      for p, _, f in weights]
    cells = []
    for way in WAYS:
        if way not in ways:
            cells.append(f"{'-':>18s}")
            continue
        per = replay_seconds(ways[way], args.replays) / args.layers
        cells.append(f"{per * 1e6:7.1f} us {n * k / 2 / per / 1e9:5.0f} GB/s")
    return cells


WAYS = ("matmul_4bit", "float32", "fused", "dequantize", "bf16")


def main() -> None:
    import bitsandbytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--kv", type=int, default=512, help="k and v output size each")
    parser.add_argument("--ffn", type=int, default=18944)
    parser.add_argument("--replays", type=int, default=100)
    args = parser.parse_args()
    h = args.hidden
    shapes = {"q": (h, h), "k": (args.kv, h), "o": (h, h), "gate": (args.ffn, h), "down": (h, args.ffn),
              "q|k|v": (h + 2 * args.kv, h), "gate|up": (2 * args.ffn, h)}
    print(f"{args.rows} rows, {args.layers} weights per shape, {torch.cuda.get_device_name()}, "
          f"bitsandbytes {bitsandbytes.__version__}")
    print(f"{'shape':8s} {'out x in':>12s} " + " ".join(f"{w:>18s}" for w in WAYS))
    for name, (n, k) in shapes.items():
        print(f"{name:8s} {f'{n}x{k}':>12s} " + " ".join(_shape_cells(n, k, args)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
