"""Timing GPU work as a CUDA-graphed decoder runs it: captured once, replayed (for the benchmarks beside this file)."""

import time
from collections.abc import Callable

import torch


def replay_seconds(fn: Callable[[], object], replays: int) -> float:
    """Seconds per replay of `fn` captured in a CUDA graph, after one warm-up run on a side stream (so cuBLAS
    and the kernels' own choices are made before the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / replays
