"""The benchmarks' extra-peak-memory measurement sees a known allocation and no more."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _memory import can_measure, extra_peak_bytes  # noqa: E402

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not can_measure(CPU), reason="needs Linux's /proc/self/clear_refs")
MB = 2**20


def test_a_temporary_allocation_is_seen():
    extra = extra_peak_bytes(lambda: torch.ones(64 * MB // 4).add_(1).sum(), CPU)
    assert 60 * MB < extra < 100 * MB  # one 64 MB tensor, freed before the call returns


def test_nothing_allocated_reads_near_zero():
    assert extra_peak_bytes(lambda: None, CPU) < 4 * MB


def test_memory_freed_before_is_not_reused_unseen():
    """malloc_trim hands a freed heap back, so a second call of the same allocation is measured again."""
    fn = lambda: torch.ones(32 * MB // 4).add_(1).sum()  # noqa: E731
    assert extra_peak_bytes(fn, CPU) > 28 * MB
    assert extra_peak_bytes(fn, CPU) > 28 * MB
