"""Extra peak memory of one call, for the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

import ctypes
import gc
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in {_STATUS}")


def can_measure(device: torch.device) -> bool:
    """Whether :func:`extra_peak_bytes` works here: CUDA's allocator statistics, or Linux's /proc peak RSS."""
    return device.type == "cuda" or (_STATUS.exists() and _CLEAR.exists())


def extra_peak_bytes(fn, device: torch.device) -> int:
    """Peak memory during ``fn()`` above what was in use just before it.

    CUDA: the allocator's peak (``torch.cuda.max_memory_allocated``) after
    resetting it, minus the memory allocated before. CPU: the process's peak
    resident set (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``)
    minus its resident set before, after ``malloc_trim`` has handed the free
    heap back (so that memory freed by an earlier call is not reused unseen).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    _CLEAR.write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024
