"""Attributions drawn over their images: Captum's blended heat maps in a grid."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from .._checks import check_images, shape_of
from ..errors import CaptumSiftError
from ._layout import axes_grid

__all__ = ["overlay"]


def overlay(
    images: torch.Tensor,
    attributions: torch.Tensor,
    *,
    titles: list[str] | None = None,
    ncols: int = 4,
    sign: str = "positive",
    alpha: float = 0.5,
    minmax: bool = False,
) -> Figure:
    """Saliency overlays of a batch: Captum's ``visualize_image_attr`` blended heat maps in a grid.

    Args:
        images: (B, C, H, W) pixels in [0, 1] (what to show under the heat map).
        attributions: (B, C, H, W), e.g. from :class:`~captum_sift.attr.SIFTInterrelation`
            or any Captum method.
        titles: one per image.
        ncols: grid columns.
        sign: Captum's ``sign`` (θ is >= 0: ``"positive"``; use
            ``"absolute_value"`` for signed methods).
        alpha: heat-map opacity.
        minmax: rescale each image's attribution to [0, 1] first. θ scores sit
            in a narrow band (e.g. 0.6-0.7), which Captum's scaling by the
            largest value would show as a flat map.
    """
    from captum.attr import visualization

    images = check_images(images)
    if not isinstance(attributions, torch.Tensor) or attributions.shape != images.shape:
        raise CaptumSiftError(
            f"expected attributions of the images' shape {tuple(images.shape)}, got {shape_of(attributions)}"
        )
    if attributions.is_floating_point() and not bool(torch.isfinite(attributions).all()):
        bad = int((~torch.isfinite(attributions)).sum())
        raise CaptumSiftError(f"expected finite attributions to draw, got {bad} NaN or Inf values")
    fig, axes = axes_grid(images.shape[0], ncols)
    for i, ax in enumerate(axes):
        attr = attributions[i].detach().cpu().double()
        if minmax:
            span = attr.max() - attr.min()
            attr = (attr - attr.min()) / span if span > 0 else torch.zeros_like(attr)
        attr = attr.permute(1, 2, 0).numpy()
        pixels = images[i].detach().cpu().permute(1, 2, 0).numpy()
        visualization.visualize_image_attr(
            attr, pixels, method="blended_heat_map", sign=sign, plt_fig_axis=(fig, ax), alpha_overlay=alpha,
            use_pyplot=False, title=titles[i] if titles else None,
        )  # fmt: skip
    fig.tight_layout()
    return fig
