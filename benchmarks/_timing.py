"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

import statistics
import time

import torch


def _timed(fn) -> float:
    """Wall time of one ``fn()`` in seconds, queued GPU work included."""
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def best_time(fn, repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds, after one warm-up call."""
    fn()
    return min((_timed(fn) for _ in range(repeats)), default=float("inf"))


def interleaved(methods: dict, rounds: int, reference: str) -> tuple[dict, dict]:
    """Best time of every method over ``rounds`` interleaved rounds, and its median ratio to ``reference``.

    Each round runs every method once, in order, after one warm-up call each;
    the ratio pairs a method with the reference's time in the same round, so a
    slow minute of a shared machine slows both sides of it.
    """
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            times[name].append(_timed(fn))
    ref = times[reference]
    median = {name: statistics.median(t / r for t, r in zip(ts, ref, strict=True)) for name, ts in times.items()}
    return {name: min(ts) for name, ts in times.items()}, median


def in_a_row(methods: dict, inputs: list, rounds: int, reference: str) -> dict:
    """Median over rounds of each method's time over all ``inputs`` in a row / the reference's in the same round.

    A data set's pass: unlike in :func:`interleaved`, each call follows a call
    of the same method, so what a method leaves behind (memory gone cold,
    threads woken or put to sleep) is paid by its own next call.
    """
    for fn in methods.values():
        fn(inputs[0])
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            times[name].append(_timed(lambda fn=fn: [fn(x) for x in inputs]))
    ref = times[reference]
    return {name: statistics.median(t / r for t, r in zip(ts, ref, strict=True)) for name, ts in times.items()}
