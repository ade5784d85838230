"""Keypoints and per-patch counts over the patch grid (paper Fig. 3), for one image or a batch."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._checks import check_images, check_patch_size
from ..errors import CaptumSiftError
from ..keypoints import keypoints_to_counts
from ._layout import axes_grid

__all__ = ["plot_keypoints", "plot_keypoints_grid"]


def plot_keypoints(
    image: torch.Tensor,
    keypoints: torch.Tensor,
    patch_size: int,
    *,
    ax: Axes | None = None,
    show_counts: bool = True,
    title: str | None = None,
) -> Axes:
    """Draw an image, its patch grid, its keypoints and the count per patch (Fig. 3).

    Key patches (count >= 1) are outlined; each keypoint is a circle of radius
    sigma at its sub-pixel position.

    Args:
        image: (C, H, W) or (1, C, H, W) float image in [0, 1].
        keypoints: (K, >= 2) rows ``(x, y, sigma, ...)`` as from
            :func:`~captum_sift.detect_keypoints`.
        patch_size: the ViT's patch size P.
        ax: axes to draw on (a new figure if None).
        show_counts: write t_j in each Key patch.
        title: axes title.

    Returns:
        The matplotlib axes.
    """
    if image.dim() == 3:
        image = image.unsqueeze(0)
    image = check_images(image, "image")
    if image.shape[0] != 1:
        raise CaptumSiftError(f"expected one image (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    if keypoints.dim() != 2 or keypoints.shape[1] < 2:
        raise CaptumSiftError(f"expected keypoints of shape (K, >= 2), got {tuple(keypoints.shape)}")
    height, width = image.shape[2:]
    patch_size = check_patch_size(patch_size, height, width)
    counts = keypoints_to_counts([keypoints.detach().cpu()], (height, width), patch_size)[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5 * height / width))
    pixels = image[0].detach().cpu().permute(1, 2, 0).numpy()
    ax.imshow(pixels if pixels.shape[2] == 3 else pixels[..., 0], cmap="gray", vmin=0, vmax=1)
    for k in range(1, height // patch_size):
        ax.axhline(k * patch_size - 0.5, color="white", lw=0.5, alpha=0.6)
    for k in range(1, width // patch_size):
        ax.axvline(k * patch_size - 0.5, color="white", lw=0.5, alpha=0.6)
    for (row, col), t in zip(torch.nonzero(counts).tolist(), counts[counts > 0].tolist(), strict=True):
        y0, x0 = row * patch_size - 0.5, col * patch_size - 0.5
        ax.add_patch(plt.Rectangle((x0, y0), patch_size, patch_size, fill=False, ec="yellow", lw=1.0))
        if show_counts:
            ax.text(
                x0 + 2,
                y0 + 2,
                str(t),
                color="yellow",
                fontsize=6,
                va="top",
                ha="left",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0},
            )
    kp = keypoints.detach().cpu()
    for x, y, *rest in kp.tolist():
        radius = rest[0] if rest else 1.5
        ax.add_patch(plt.Circle((x, y), radius, fill=False, ec="red", lw=0.6))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    n_key = int((counts > 0).sum())
    ax.set_title(title or f"{kp.shape[0]} keypoints, {n_key}/{counts.numel()} Key patches", fontsize=8)
    return ax


def plot_keypoints_grid(
    images: torch.Tensor,
    keypoints: list[torch.Tensor],
    patch_size: int,
    *,
    titles: list[str] | None = None,
    ncols: int = 4,
) -> Figure:
    """:func:`plot_keypoints` for a batch, in a grid of ``ncols`` columns."""
    images = check_images(images)
    if len(keypoints) != images.shape[0]:
        raise CaptumSiftError(f"expected {images.shape[0]} keypoint tensors (one per image), got {len(keypoints)}")
    fig, axes = axes_grid(images.shape[0], ncols)
    for i, ax in enumerate(axes):
        title = None
        if titles is not None:
            title = f"{titles[i]}: {keypoints[i].shape[0]} keypoints"
        plot_keypoints(images[i], keypoints[i], patch_size, ax=ax, title=title)
    fig.tight_layout()
    return fig
