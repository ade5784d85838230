"""Per-layer curves -> the Retrieval / Capture / Coach stages (paper §4.3, SPEC §6)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CaptumSiftError
from .report import InterrelationReport
from .settings import STAGE_NAMES

__all__ = ["GAP_RULE", "RULE", "STAGE_NAMES", "Stages", "find_stages", "smooth", "split_stages", "split_theta_kk"]


RULE = (
    "theta_kk rule: the head-mean θ_KK curve over the analysed layers is smoothed with a [1, 2, 1] / 4 kernel "
    "(edges repeated) so that one layer's wiggle cannot move the peak; Capture ends at the first maximum of the "
    "smoothed curve among layers 1..L-1; Capture starts at the layer s in 1..end that minimises the squared error "
    "of a constant fit of the (unsmoothed) curve on [0, s) plus a least-squares line on [s, end] (largest s on "
    "ties): Retrieval is the flat start, Capture the rise to the peak, Coach every layer after it. A peak at the "
    "last layer leaves no Coach stage (θ_KK still rising at the last layer): Coach is empty and the answer is 'no "
    "clear stages'. Confidence of a boundary: the share of 200 bootstrap resamples of the images (seed 0, images "
    "in data-set order when their index is known) that put it at the same layer; a resample whose peak lands "
    "elsewhere, the last layer included, or whose curve is NaN somewhere disagrees. The stages are clear when "
    "there is a Coach stage, the smoothed rise over Capture (peak minus the Retrieval level) is positive in at "
    "least 95 % of the resamples and is at least 5 % of the peak, and both boundaries have a confidence of at "
    "least 0.5; otherwise the answer is 'no clear stages' (the best split is still returned). Without per-image "
    "curves (fewer than 2 images, or a report read from a CSV, which keeps only sums) no confidence is measured "
    "and the answer is 'no clear stages'. The focus index is supporting evidence only: its mean per stage is "
    "returned, and whether it drops in Capture and rebounds in Coach, as the paper describes."
)
"""The rule of :func:`find_stages`, stated in words; returned with every result (a constant, so ``-OO`` keeps it)."""

GAP_RULE = (
    "gap rule (find_stages(rule='gap')): Capture ends at the first maximum of the head-mean "
    "θ_KK − θ_NK among layers 1..L-2; its start minimises a constant fit before plus a line fit after; no "
    "smoothing, no confidence."
)

BOOTSTRAP_SAMPLES = 200
MIN_CONFIDENCE = 0.5
MIN_RISE_SHARE = 0.95
MIN_RELATIVE_RISE = 0.05


@dataclass(frozen=True)
class Stages:
    """Three contiguous, non-empty runs of analysed layers, the curves they came from and how sure they are.

    ``retrieval``, ``capture``, ``coach`` are lists of layer indices (the
    model's block numbers); ``kk`` is the head-mean θ_KK curve and
    ``smoothed`` the curve the rule used; ``gap`` is θ_KK − θ_NK and
    ``focus`` the focus index, head means per analysed layer;
    ``confidence`` maps ``"capture_start"`` and ``"coach_start"`` to the
    bootstrap share that agrees (None without per-image data); ``clear`` is
    False when the curves do not have the paper's shape ("no clear stages",
    ``verdict`` says why); ``focus_by_stage`` the mean focus index per stage
    (NaN for an empty stage); ``rule`` states the method.

    ``coach`` is empty when θ_KK peaks at the last analysed layer (still
    rising: no Coach stage, ``clear`` is False); Retrieval and Capture are
    never empty.
    """

    retrieval: list[int]
    capture: list[int]
    coach: list[int]
    layers: list[int]
    gap: list[float]
    focus: list[float]
    rule: str
    kk: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    confidence: dict[str, float | None] = field(default_factory=dict)
    clear: bool = True
    verdict: str = ""
    focus_by_stage: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> list[int]:
        if name not in STAGE_NAMES:
            raise CaptumSiftError(f"expected a stage name in {STAGE_NAMES}, got {name!r}")
        return getattr(self, name)

    @property
    def boundaries(self) -> tuple[int, int | None]:
        """First layer of Capture and first layer of Coach (None when there is no Coach stage)."""
        return self.capture[0], (self.coach[0] if self.coach else None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "retrieval": self.retrieval, "capture": self.capture, "coach": self.coach, "clear": self.clear,
            "verdict": self.verdict, "confidence": self.confidence, "rule": self.rule, "kk": self.kk,
            "smoothed": self.smoothed, "gap": self.gap, "focus": self.focus, "focus_by_stage": self.focus_by_stage,
        }  # fmt: skip


def _sse_constant(y: torch.Tensor) -> float:
    return float(((y - y.mean()) ** 2).sum())


def _sse_line(y: torch.Tensor) -> float:
    if y.numel() <= 2:
        return 0.0
    x = torch.arange(y.numel(), dtype=y.dtype)
    xc, yc = x - x.mean(), y - y.mean()
    slope = (xc * yc).sum() / (xc * xc).sum()
    return float(((yc - slope * xc) ** 2).sum())


def _check_curve(curve: torch.Tensor, name: str) -> torch.Tensor:
    curve = torch.as_tensor(curve, dtype=torch.float64)
    if curve.dim() != 1 or curve.numel() < 3:
        raise CaptumSiftError(f"expected at least 3 layers to split into 3 stages, got {curve.numel()}")
    if bool(torch.isnan(curve).any()):
        missing = torch.nonzero(torch.isnan(curve)).flatten().tolist()
        raise CaptumSiftError(f"expected a finite {name} curve, got NaN at layer positions {missing}")
    return curve


def _fit_split(curve: torch.Tensor, end: int) -> int:
    """First Capture position: a constant fit before it plus a line fit up to ``end`` (largest on ties)."""
    costs = torch.tensor([_sse_constant(curve[:s]) + _sse_line(curve[s : end + 1]) for s in range(1, end + 1)])
    tie = 1e-9 * float(curve.abs().max()) ** 2  # rounding error is no preference: ties go to the largest s
    return 1 + int(torch.nonzero(costs <= costs.min() + tie).max())


def smooth(curve: torch.Tensor) -> torch.Tensor:
    """The [1, 2, 1] / 4 smoothing of a curve (L,), edges repeated."""
    padded = torch.cat([curve[:1], curve, curve[-1:]])
    return (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4


def split_stages(gap: torch.Tensor) -> tuple[int, int]:
    """Positions (s, e) of the first and last Capture layer by the gap rule (:data:`GAP_RULE`).

    Example:
        >>> split_stages(torch.tensor([0.0, 0.01, 0.0, 0.1, 0.3, 0.5, 0.45, 0.4]))
        (3, 5)
    """
    gap = _check_curve(gap, "θ_KK − θ_NK")
    end = 1 + int(torch.argmax(gap[1 : gap.numel() - 1]))  # first maximum among positions 1..L-2
    return _fit_split(gap, end), end


def split_theta_kk(kk: torch.Tensor) -> tuple[int, int]:
    """Positions (s, e) of the first and last Capture layer of a θ_KK curve (L,) by :data:`RULE`.

    ``e == L - 1`` means the smoothed curve peaks at the last layer: there is
    no Coach stage.

    Example:
        >>> table = [0.601, 0.607, 0.688, 0.729, 0.739, 0.767, 0.747, 0.776, 0.767, 0.745, 0.726, 0.672]
        >>> split_theta_kk(torch.tensor(table))  # θ_KK of a 12-layer DINOv2 ViT-S/14 on 84 photos
        (2, 7)
        >>> split_theta_kk(torch.linspace(0.3, 0.6, 12))  # still rising at the last layer: no Coach
        (1, 11)
    """
    raw = _check_curve(kk, "θ_KK")
    curve = smooth(raw)
    end = 1 + int(torch.argmax(curve[1:]))  # first maximum among positions 1..L-1
    return _fit_split(raw, end), end


def _rise(curve: torch.Tensor, start: int, end: int) -> float:
    """Smoothed peak minus the mean smoothed level before Capture."""
    smoothed = smooth(curve)
    return float(smoothed[end] - smoothed[:start].mean())


def _image_curves(report: InterrelationReport) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-image head-mean θ_KK and focus curves (B, L), from the report's curves or its per-image data.

    Curves that carry their images' data-set index (``curves["image"]``) are
    put in that order, so that the bootstrap draws the same images whatever
    order the reports were merged or gathered in.
    """
    if report.curves is not None:
        kk, focus = report.curves["kk"].double(), report.curves["focus"].double()
        index = report.curves.get("image")
        if index is not None:
            order = torch.sort(index, stable=True).indices
            kk, focus = kk[order], focus[order]
        return kk, focus
    if report.kk is not None and report.focus is not None:
        return torch.nanmean(report.kk.double(), dim=2), torch.nanmean(report.focus.double(), dim=2)
    return None


def _bootstrap(
    kk_images: torch.Tensor, start: int, end: int, samples: int = BOOTSTRAP_SAMPLES
) -> tuple[float, float, float]:
    """(share agreeing on the Capture start, on the Coach start, share with a positive rise)."""
    generator = torch.Generator().manual_seed(0)
    n = kk_images.shape[0]
    same_start = same_end = rising = 0
    for _ in range(samples):
        idx = torch.randint(0, n, (n,), generator=generator)
        curve = torch.nanmean(kk_images[idx], dim=0)
        if bool(torch.isnan(curve).any()):
            continue  # no Key patch in this resample at some layer: counts as disagreement
        s, e = split_theta_kk(curve)
        same_start += s == start
        same_end += e == end
        rising += _rise(curve, s, e) > 0
    return same_start / samples, same_end / samples, rising / samples


def find_stages(report: InterrelationReport, rule: str = "theta_kk") -> Stages:
    """Retrieval, Capture and Coach stages of a report (paper §4.3, SPEC §6).

    Rule ``"theta_kk"`` (default): :data:`RULE` — θ_KK's rise and peak
    decide, after a [1, 2, 1] smoothing; a bootstrap over the images (from
    per-image data or the per-image curves that sums-only reports keep)
    gives a confidence for each boundary and decides whether the stages are
    clear; the focus index is returned as supporting evidence. Rule
    ``"gap"``: :data:`GAP_RULE`, the peak of θ_KK − θ_NK instead, unsmoothed
    and without a confidence.

    A θ_KK that peaks at the last analysed layer has no Coach stage:
    ``coach`` is empty and the verdict is "no clear stages: no Coach stage:
    θ_KK still rising at the last layer". Without per-image curves (fewer
    than 2 images, or a report read by ``load_csv``) no confidence is
    measured and the verdict says which.

    Needs at least 3 analysed layers and a finite θ_KK on each (some image
    with Key patches).

    Example:
        >>> from captum_sift.theta.stages import split_theta_kk
        >>> split_theta_kk(torch.tensor([0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.75, 0.7]))
        (3, 5)
    """
    if not isinstance(report, InterrelationReport):
        raise CaptumSiftError(f"expected an InterrelationReport, got {type(report).__name__}")
    if rule not in ("theta_kk", "gap"):
        raise CaptumSiftError(f"expected rule 'theta_kk' or 'gap', got {rule!r}")
    if len(report.layers) < 3:
        raise CaptumSiftError(
            f"expected a report of at least 3 layers to find 3 stages, got {len(report.layers)} ({report.layers})"
        )
    kk = report.layer_mean("kk")
    gap = kk - report.layer_mean("nk")
    focus = report.layer_mean("focus")
    layers = report.layers
    if rule == "gap":
        start, end = split_stages(gap)
        confidence: dict[str, float | None] = {"capture_start": None, "coach_start": None}
        clear, verdict = True, "gap rule: no confidence computed"
    else:
        start, end = split_theta_kk(kk)
        confidence, reasons = _judge(report, kk, start, end)
        clear = not reasons
        verdict = "clear stages" if clear else "no clear stages: " + "; ".join(reasons)
    return Stages(
        retrieval=layers[:start],
        capture=layers[start : end + 1],
        coach=layers[end + 1 :],
        layers=list(layers),
        gap=gap.tolist(),
        focus=focus.tolist(),
        rule=RULE if rule == "theta_kk" else GAP_RULE,
        kk=kk.tolist(),
        smoothed=smooth(kk).tolist() if rule == "theta_kk" else gap.tolist(),
        confidence=confidence,
        clear=clear,
        verdict=verdict,
        focus_by_stage=_focus_by_stage(focus, start, end),
    )


def _judge(
    report: InterrelationReport, kk: torch.Tensor, start: int, end: int
) -> tuple[dict[str, float | None], list[str]]:
    """The boundaries' bootstrap confidence and every reason the θ_KK stages are not clear (none: clear)."""
    layers = report.layers
    confidence: dict[str, float | None] = {"capture_start": None, "coach_start": None}
    rise = _rise(_check_curve(kk, "θ_KK"), start, end)
    curves = _image_curves(report)
    reasons = []
    if end == len(layers) - 1:
        reasons.append(f"no Coach stage: θ_KK still rising at the last layer ({layers[-1]}, its smoothed peak)")
    if curves is not None and curves[0].shape[0] >= 2:
        conf_start, conf_end, rising = _bootstrap(curves[0], start, end)
        confidence = {"capture_start": conf_start, "coach_start": conf_end}
        if rising < MIN_RISE_SHARE:
            reasons.append(f"θ_KK rises over Capture in only {rising:.0%} of the bootstrap resamples")
        if min(conf_start, conf_end) < MIN_CONFIDENCE:
            reasons.append(f"boundary confidence {conf_start:.2f} / {conf_end:.2f} < {MIN_CONFIDENCE}")
    elif report.num_images < 2:
        reasons.append(f"no confidence measured: fewer than 2 images ({report.num_images})")
    else:
        reasons.append(
            f"no confidence measured: the report keeps only sums of its {report.num_images} images, no "
            "per-image curves (a report read from a CSV, or made without them; save_json keeps them)"
        )
    if rise < MIN_RELATIVE_RISE * abs(float(smooth(kk)[end])):
        reasons.append(f"θ_KK rises by only {rise:.4f} over Capture (< {MIN_RELATIVE_RISE:.0%} of its peak)")
    return confidence, reasons


def _focus_by_stage(focus: torch.Tensor, start: int, end: int) -> dict[str, Any]:
    """Mean focus index per stage (NaN for an empty one), and whether it drops in Capture and rebounds in Coach."""
    spans = {"retrieval": (0, start), "capture": (start, end + 1), "coach": (end + 1, focus.numel())}
    by_stage: dict[str, Any] = {
        name: float(focus[a:b].nanmean()) if b > a else math.nan for name, (a, b) in spans.items()
    }
    by_stage["drops_in_capture_and_rebounds_in_coach"] = bool(
        by_stage["capture"] < by_stage["retrieval"] and by_stage["coach"] > by_stage["capture"]
    )
    return by_stage
