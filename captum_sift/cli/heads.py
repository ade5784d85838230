"""``analyze``'s figure of θ per head: the first analysed image at one layer (``--heads-layer``)."""

from __future__ import annotations

import math

import torch

from .._checks import check_index
from ..theta.maps import patch_theta_maps
from ..theta.report import InterrelationReport
from ..viz.heads import plot_theta_heads
from .runner import Run

__all__ = ["draw_theta_heads", "heads_layer"]


def heads_layer(run: Run, report: InterrelationReport | None = None) -> int | None:
    """The layer of the figure: ``--heads-layer`` checked against the model, else where the data set's
    head-mean θ_KK peaks (the last layer when θ_KK is nowhere defined); None before there is a report."""
    given = run.options.heads_layer  # type: ignore[attr-defined]
    if given is not None:
        return check_index(given, "--heads-layer", run.vit.depth, "blocks")
    if report is None:
        return None
    curve = report.layer_mean("kk").double()
    if not bool(torch.isfinite(curve).any()):
        return report.layers[-1]
    return report.layers[int(torch.nan_to_num(curve, nan=-math.inf).argmax())]


def draw_theta_heads(run: Run, report: InterrelationReport, examples: torch.Tensor) -> dict[str, str]:
    """theta_heads.png of the first example image; -> {file name: caption} (nothing without an image)."""
    if not examples.shape[0]:
        return {}
    layer = heads_layer(run, report)
    assert layer is not None
    image = examples[:1].to(run.device)
    theta = patch_theta_maps(run.vit, image, settings=run.options.theta, layers=[layer], image_space="pixel")
    grid = (image.shape[-2] // run.vit.patch_size, image.shape[-1] // run.vit.patch_size)
    fig = plot_theta_heads(examples[0], theta[0, 0].cpu(), grid, layer=layer)
    fig.savefig(run.out / "theta_heads.png", dpi=100)
    how = "--heads-layer" if run.options.heads_layer is not None else "where the head-mean θ_KK peaks"  # type: ignore[attr-defined]
    return {"theta_heads.png": f"θ_i of every head at layer {layer} ({how}), first image; hatched: θ undefined"}
