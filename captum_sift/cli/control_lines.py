"""The SPEC §9 controls of an analysis as the CLI reports them: report.json's section and the verdict lines."""

from __future__ import annotations

from typing import Any

from ..theta.control_theta import MIN_EXCESS
from ..theta.report import InterrelationReport

__all__ = ["CONTROLS_EXPLAINED", "control_section"]

#: index.html's two sentences on what a control is.
CONTROLS_EXPLAINED = (
    "A control is a null attention measured with the same θ code and the same keypoint counts as the model: "
    "uniform (every patch attends to all alike), locality (attention that depends only on patch distance, fitted "
    "to each layer) and shuffled (the model's attention with each image's keypoint grid moved to another place). "
    "A layer shows the paper's Key-to-Key bias beyond geometry only where θ_KK exceeds the locality and the "
    f"shuffled controls, by at least {MIN_EXCESS:g} with p < 0.01 over images; the dashed lines in the "
    "interrelation figure are the controls' θ_KK and θ_NK."
)


def control_section(report: InterrelationReport) -> dict[str, Any] | None:
    """report.json's ``"controls"``: per control its layer means, the excess of θ_KK and of the gap with
    interval and p-value per layer, and its verdict line; None without controls."""
    if not report.controls:
        return None
    verdicts = report.control_verdicts()
    section: dict[str, Any] = {"min_excess": MIN_EXCESS, "alpha": 0.01, "verdicts": list(verdicts.values())}
    for control in report.controls:
        entry: dict[str, Any] = {
            "kk": report.layer_mean(f"kk_{control}").tolist(),
            "nk": report.layer_mean(f"nk_{control}").tolist(),
            "verdict": verdicts[control],
        }
        for quantity in ("kk", "gap"):
            result = report.control_excess(control, quantity)
            entry[f"excess_{quantity}"] = {field: getattr(result, field).tolist() for field in result._fields}
        section[control] = entry
    return section
