"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

import time

import torch


def best_time(fn, repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best
