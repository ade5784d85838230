"""Per-layer curves -> the Retrieval / Capture / Coach stages (paper §4.3, SPEC §6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import CaptumSiftError
from .report import InterrelationReport
from .settings import STAGE_NAMES

__all__ = ["RULE", "STAGE_NAMES", "Stages", "find_stages", "split_stages"]


@dataclass(frozen=True)
class Stages:
    """Three contiguous, non-empty runs of analysed layers and the curves they came from.

    ``retrieval``, ``capture``, ``coach`` are lists of layer indices (the
    model's block numbers); ``gap`` is θ_KK − θ_NK and ``focus`` the focus
    index, both head means per analysed layer; ``rule`` states the method.
    """

    retrieval: list[int]
    capture: list[int]
    coach: list[int]
    layers: list[int]
    gap: list[float]
    focus: list[float]
    rule: str

    def __getitem__(self, name: str) -> list[int]:
        if name not in STAGE_NAMES:
            raise CaptumSiftError(f"expected a stage name in {STAGE_NAMES}, got {name!r}")
        return getattr(self, name)

    @property
    def boundaries(self) -> tuple[int, int]:
        """First layer of Capture and first layer of Coach."""
        return self.capture[0], self.coach[0]


RULE = (
    "Capture ends at the layer where the head-mean gap θ_KK − θ_NK is largest (first maximum, searched over "
    "layers 2..L-1 so that Coach is non-empty); Retrieval is the longest flat start: the first Capture layer s "
    "minimises the squared error of a constant fit on layers [1, s) plus a least-squares line on [s, end of "
    "Capture] (largest s on ties); Coach is every layer after Capture. The focus-index curve is returned for "
    "plotting and does not move the boundaries."
)
"""The rule of :func:`find_stages`, stated in words; returned with every result (a constant, so ``-OO`` keeps it)."""


def _sse_constant(y: torch.Tensor) -> float:
    return float(((y - y.mean()) ** 2).sum())


def _sse_line(y: torch.Tensor) -> float:
    if y.numel() <= 2:
        return 0.0
    x = torch.arange(y.numel(), dtype=y.dtype)
    xc, yc = x - x.mean(), y - y.mean()
    slope = (xc * yc).sum() / (xc * xc).sum()
    return float(((yc - slope * xc) ** 2).sum())


def split_stages(gap: torch.Tensor) -> tuple[int, int]:
    """Positions (s, e) of the first Capture and last Capture layer for a gap curve (L,).

    The rule of :func:`find_stages`, on positions 0..L-1.
    """
    gap = torch.as_tensor(gap, dtype=torch.float64)
    length = gap.numel()
    if length < 3:
        raise CaptumSiftError(f"expected at least 3 layers to split into 3 stages, got {length}")
    if bool(torch.isnan(gap).any()):
        missing = torch.nonzero(torch.isnan(gap)).flatten().tolist()
        raise CaptumSiftError(f"expected a finite θ_KK − θ_NK curve, got NaN at layer positions {missing}")
    end = 1 + int(torch.argmax(gap[1 : length - 1]))  # first maximum among positions 1..L-2
    costs = [_sse_constant(gap[:s]) + _sse_line(gap[s : end + 1]) for s in range(1, end + 1)]
    start = 1 + min(range(len(costs)), key=lambda k: (costs[k], -k))  # ties: the longer Retrieval
    return start, end


def find_stages(report: InterrelationReport) -> Stages:
    """Retrieval, Capture and Coach stages of a report (paper §4.3, SPEC §6).

    Rule (deterministic): Capture ends at the layer where the head-mean gap
    θ_KK − θ_NK is largest (first maximum, searched over layers 2..L-1 so
    that Coach is non-empty); Retrieval is the longest flat start: the first
    Capture layer s minimises the squared error of a constant fit on layers
    [1, s) plus a least-squares line on [s, end of Capture] (largest s on
    ties); Coach is every layer after Capture. The focus-index curve is
    returned for plotting and does not move the boundaries.

    Needs at least 3 analysed layers and a finite gap on each (some image
    with Key and some with Non-key patches).

    Example:
        >>> from captum_sift.stages import split_stages
        >>> split_stages(torch.tensor([0.0, 0.01, 0.0, 0.1, 0.3, 0.5, 0.45, 0.4]))
        (3, 5)
    """
    if not isinstance(report, InterrelationReport):
        raise CaptumSiftError(f"expected an InterrelationReport, got {type(report).__name__}")
    if len(report.layers) < 3:
        raise CaptumSiftError(
            f"expected a report of at least 3 layers to find 3 stages, got {len(report.layers)} ({report.layers})"
        )
    gap = report.layer_mean("kk") - report.layer_mean("nk")
    start, end = split_stages(gap)
    layers = report.layers
    return Stages(
        retrieval=layers[:start],
        capture=layers[start : end + 1],
        coach=layers[end + 1 :],
        layers=list(layers),
        gap=gap.tolist(),
        focus=report.layer_mean("focus").tolist(),
        rule=RULE,
    )
