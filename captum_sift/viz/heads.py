"""θ per head: one image's θ_i of every head of one layer, a small heat map over the image per head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .._checks import check_images, check_int, shape_of
from ..errors import CaptumSiftError
from ._layout import axes_grid

__all__ = ["plot_theta_heads"]


def plot_theta_heads(
    image: torch.Tensor | None,
    theta: torch.Tensor,
    grid: tuple[int, int],
    *,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    ncols: int = 6,
    alpha: float = 0.6,
) -> Figure:
    """One image's θ_i per head for one layer: a grid of heat maps over the image, one scale for all heads.

    Patches where θ is undefined (NaN: S_i empty, gamma > 1) are drawn
    transparent and hatched — "no value", the image shows through — never as 0. The
    colour scale runs from the smallest to the largest defined θ of the
    figure (θ sits in a narrow band), the same for every head, with a colour bar.

    Args:
        image: (C, H, W) pixels in [0, 1] under the maps, or None for the maps alone.
        theta: (heads, N) θ_i of the image at one layer, e.g.
            ``patch_theta_maps(model, x)[b, l]`` (:func:`~captum_sift.theta.patch_theta_maps`).
        grid: the patch grid (Gh, Gw), Gh * Gw = N.
        layer: the layer's index, for the title.
        heads: the head index of each row of ``theta`` (default 0, 1, ...), for the panel titles.
        ncols: panels per row.
        alpha: heat-map opacity over the image.
    """
    if not isinstance(theta, torch.Tensor) or theta.dim() != 2 or not theta.is_floating_point():
        raise CaptumSiftError(f"expected theta of shape (heads, N), floating point, got {shape_of(theta)}")
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise CaptumSiftError(f"expected grid (Gh, Gw), got {grid!r}")
    gh, gw = (check_int(g, "every entry of grid", low=1) for g in grid)
    num_heads, n = theta.shape
    if n != gh * gw or num_heads == 0:
        raise CaptumSiftError(
            f"expected theta of shape (heads >= 1, {gh * gw}) for a {gh}x{gw} grid, got {tuple(theta.shape)}"
        )
    labels = list(range(num_heads)) if heads is None else list(heads)
    if len(labels) != num_heads:
        raise CaptumSiftError(f"expected {num_heads} head indices (one per row of theta), got {len(labels)}")
    values = theta.detach().cpu().double()
    if bool(torch.isinf(values).any()):
        raise CaptumSiftError("expected θ in [0, 1] or NaN, got Inf")
    pixels = None
    if image is not None:
        pixels = check_images(image.unsqueeze(0) if image.dim() == 3 else image, "image")[0]
        if pixels.shape[-2] % gh or pixels.shape[-1] % gw:
            raise CaptumSiftError(f"expected an image divisible into the {gh}x{gw} grid, got {tuple(pixels.shape)}")
    defined = values[~torch.isnan(values)]
    low, high = (float(defined.min()), float(defined.max())) if defined.numel() else (0.0, 1.0)
    cmap = plt.get_cmap("viridis").with_extremes(bad=(0, 0, 0, 0))  # NaN: transparent, no colour of the scale
    fig, axes = axes_grid(num_heads, ncols)
    cols = max(1, min(ncols, num_heads))
    fig.set_size_inches(2.0 * cols + 1.0, 2.2 * math.ceil(num_heads / cols) + 0.4)
    shown = None
    for ax, head, row in zip(axes, labels, values, strict=True):
        heat = np.ma.masked_invalid(row.view(gh, gw).numpy())
        if pixels is not None:
            h, w = pixels.shape[-2:]
            ax.imshow(pixels.permute(1, 2, 0).squeeze().numpy(), extent=(0, w, h, 0), cmap="gray", vmin=0, vmax=1)
            shown = ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(0, w, h, 0), interpolation="nearest",
                              vmin=low, vmax=high)  # fmt: skip
        else:
            shown = ax.imshow(heat, cmap=cmap, interpolation="nearest", vmin=low, vmax=high)
        h, w = pixels.shape[-2:] if pixels is not None else (gh, gw)
        x0, y0 = (0.0, 0.0) if pixels is not None else (-0.5, -0.5)
        for flat in torch.nonzero(torch.isnan(row)).flatten().tolist():  # "no value": hatched, never a colour
            py, px = divmod(flat, gw)
            ax.add_patch(plt.Rectangle((x0 + px * w / gw, y0 + py * h / gh), w / gw, h / gh, fill=False,
                                       hatch="///", ec="0.3", lw=0))  # fmt: skip
        ax.set_title(f"head {head}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    missing = int(torch.isnan(values).sum())
    where = f"layer {layer}" if layer is not None else "one layer"
    note = f"; {missing} hatched patch(es): θ undefined (S_i empty)" if missing else ""
    fig.suptitle(f"θ_i per head, {where}{note}", fontsize=9)
    fig.tight_layout()
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes, shrink=0.8, pad=0.02)
        bar.set_label("θ_i", fontsize=8)
        bar.solids.set_alpha(1.0)
    return fig
