"""Memory checks before work: refuse, with the figures, what cannot fit."""

from __future__ import annotations

import os

import torch

from ..errors import CaptumSiftError

__all__ = ["available_memory", "check_memory"]


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes that can still be allocated: the free GPU memory for CUDA, else MemAvailable (or physical memory)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return 2**62


def check_memory(nbytes: float, what: str, device: str | torch.device = "cpu") -> None:
    """Refuse, with the figures, work whose estimated memory ``nbytes`` exceeds what the machine has free."""
    free = available_memory(device)
    if nbytes > free:
        raise CaptumSiftError(f"{what} needs about {_gib(nbytes)} of memory, {_gib(free)} is free: use a smaller size")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes < 2**50 else f"{nbytes / 2**40:.3g} TiB"
