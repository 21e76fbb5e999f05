"""How the number of matrix products per layer sets a decode step's time, at the seed shape's batch.

Times one decode token's linear work for a Llama-family layer stack (Qwen2.5-3B's shapes by default,
LoRA of rank R on all seven projections), each way of computing it captured in a CUDA graph and
replayed, so launch overhead is what a CUDA-graphed decoder pays:

  peft     each projection: base product, then A and B (21 per layer)
  stacked  each input group (q|k|v, o, gate|up, down): one base product, one for the stacked A,
           one addmm for the block-diagonal B (12 per layer: the live decoder with shared storage)
  joined   each group: one product with the A rows appended to the base weight, then one addmm (8)
  merged   each group: one product with a merged weight (4: the merged decoder)

Only the products run (no attention, norms or activations): the figures compare the ways, not a
whole step.  python benchmarks/group_products.py [--batch 6] [--rank 64] [--layers 36]
"""

import argparse

import torch
from graph_timing import replay_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--kv", type=int, default=256, help="k and v output size each")
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--replays", type=int, default=200)
    args = parser.parse_args()
    dev, dt, r, h = "cuda", torch.bfloat16, args.rank, args.hidden
    groups = [[h, args.kv, args.kv], [h], [args.ffn, args.ffn], [h]]  # output sizes by group
    inputs = [h, h, h, args.ffn]

    def rand(*shape):
        return torch.randn(*shape, device=dev, dtype=dt) * 0.02

    layers = []
    for _ in range(args.layers):
        layer = []
        for outs, k in zip(groups, inputs):
            n, ranks = sum(outs), r * len(outs)
            joined = rand(n + ranks, k)
            layer.append(dict(
                parts=[(rand(o, k), rand(r, k), rand(o, r)) for o in outs],
                base=joined[:n], a=joined[n:], joined=joined, n=n, b=rand(n, ranks), merged=rand(n, k)))
        layers.append(layer)
    xs = [torch.randn(args.batch, k, device=dev, dtype=dt) for k in inputs]

    def peft():
        for layer in layers:
            for g, x in zip(layer, xs):
                for w, a, b in g["parts"]:
                    torch.addmm(x @ w.t(), x @ a.t(), b.t())

    def stacked():
        for layer in layers:
            for g, x in zip(layer, xs):
                torch.addmm(x @ g["base"].t(), x @ g["a"].t(), g["b"].t())

    def joined():
        for layer in layers:
            for g, x in zip(layer, xs):
                full = x @ g["joined"].t()
                torch.addmm(full[:, :g["n"]], full[:, g["n"]:], g["b"].t())

    def merged():
        for layer in layers:
            for g, x in zip(layer, xs):
                x @ g["merged"].t()

    weight_bytes = sum(m.numel() for layer in layers for g in layer for m in (g["merged"],)) * 2
    print(f"batch {args.batch}, rank {r}, {args.layers} layers, hidden {h}, ffn {args.ffn}, "
          f"{weight_bytes / 1e9:.2f} GB of base weights, {torch.cuda.get_device_name()}")
    for name, fn in (("peft", peft), ("stacked", stacked), ("joined", joined), ("merged", merged)):
        ms = replay_seconds(fn, args.replays) * 1e3
        print(f"{name:8s} {ms:7.3f} ms per token  {weight_bytes / ms / 1e6:7.0f} GB/s of base weights")


if __name__ == "__main__":
    main()
