"""Masks (paper Fig. 8): an image masked Top and Bottom, accuracy under masking, the spurious patches."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._checks import check_images, check_patch_size
from ..errors import CaptumSiftError
from ..theta.report import InterrelationReport
from ..theta.spurious import SPURIOUS_THRESHOLD
from ._layout import axes_grid

__all__ = ["plot_mask_curve", "plot_mask_grid", "plot_spurious", "plot_spurious_positions"]


def plot_mask_grid(
    image: torch.Tensor,
    scores: torch.Tensor,
    patch_size: int,
    ratios: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4),
    *,
    table=None,
    fill: float | str | torch.Tensor = 0.5,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Figure:
    """Fig. 8: one image masked Top (first row) and Bottom (second row) at each ratio, as the model saw it.

    The panels are what :func:`~captum_sift.masking.apply.mask_images` gives the
    model: the image is normalised with ``mean`` / ``std``, masked with
    ``fill`` in that space, and the normalisation undone for display (values
    outside [0, 1], e.g. a huge fill, shown clipped). With ``fill="drop"``
    the dropped patches, which the model never sees, are left transparent
    (the figure's white background).

    Args:
        image: (C, H, W) pixels in [0, 1].
        scores: (N,) SPEC §7 scores of its patches.
        patch_size: P.
        ratios: the columns.
        table: a :class:`~captum_sift.masking.MaskingTable`; its accuracies are
            written under each panel.
        fill: as in :func:`~captum_sift.masking.evaluate_masking`: a number
            in the model's input space, ``"mean"``, ``"blur"``, a tensor or
            ``"drop"``; default 0.5 (mid-gray with the default statistics).
        mean, std: the model's input statistics per channel (default 0 and 1:
            the model's input space is the pixels').
    """
    from ..masking.apply import mask_images, select_patches

    pixels = check_images(image.unsqueeze(0) if image.dim() == 3 else image, "image")
    scores = scores.reshape(1, -1).to(pixels.device)
    channels = pixels.shape[1]
    shift = torch.as_tensor(mean if mean is not None else [0.0] * channels, dtype=pixels.dtype).view(1, -1, 1, 1)
    scale = torch.as_tensor(std if std is not None else [1.0] * channels, dtype=pixels.dtype).view(1, -1, 1, 1)
    if shift.numel() != channels or scale.numel() != channels or not bool((scale > 0).all()):
        raise CaptumSiftError(
            f"expected mean and std with one value per channel ({channels}), std > 0, got {mean}, {std}"
        )
    model_input = (pixels - shift) / scale
    drop = isinstance(fill, str) and fill == "drop"
    fig, axes = plt.subplots(2, len(ratios), figsize=(2.2 * len(ratios), 5.4), squeeze=False)
    for row, mode in enumerate(("top", "bottom")):
        for col, ratio in enumerate(ratios):
            selected = select_patches(scores, ratio, mode)
            hidden = mask_images(torch.zeros_like(pixels[:, :1]), selected, patch_size, 1.0).bool()  # (1, 1, H, W)
            if drop:  # RGBA, transparent where the tokens were dropped
                rgb = pixels.expand(1, 3, *pixels.shape[2:])
                shown = torch.cat([rgb, (~hidden).to(pixels.dtype)], dim=1)
            else:
                masked = (mask_images(model_input, selected, patch_size, fill) * scale + shift).clamp(0, 1)
                shown = torch.where(hidden, masked, pixels)  # unmasked pixels exactly as given
            ax = axes[row, col]
            ax.imshow(shown[0].detach().cpu().permute(1, 2, 0).squeeze().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"{mode.capitalize()} {ratio:.0%}"
            if table is not None and (mode, ratio) in table.cells:
                label += f"\nacc {table.accuracy(mode, ratio):.3f}"
            ax.set_title(label, fontsize=8)
    if table is not None:
        fig.suptitle(f"unmasked accuracy {table.baseline['accuracy']:.3f} (n = {table.total})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_mask_curve(table, *, ax: Axes | None = None) -> Axes:
    """Accuracy vs mask ratio per mode, with 95 % confidence bands and the unmasked baseline."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    rows = table.rows()
    base = rows[0]
    colors = {"top": "tab:red", "bottom": "tab:green", "random": "tab:gray"}
    ax.axhline(base["accuracy"], color="black", lw=1, ls="--", label="unmasked")
    ax.axhspan(base["ci_low"], base["ci_high"], color="black", alpha=0.08)
    for mode in ("top", "bottom", "random"):
        mine = sorted((r for r in rows[1:] if r["mode"] == mode), key=lambda r: r["ratio"])
        if not mine:
            continue
        x = [r["ratio"] for r in mine]
        ax.plot(x, [r["accuracy"] for r in mine], "-o", ms=3, color=colors[mode], label=mode)
        ax.fill_between(x, [r["ci_low"] for r in mine], [r["ci_high"] for r in mine], color=colors[mode], alpha=0.15)
    ax.set_xlabel("mask ratio")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return ax


_THETA_FONT = 7  # points: the θ label of a spurious patch


def plot_spurious(
    images: torch.Tensor,
    scores: torch.Tensor,
    keypoint_counts: torch.Tensor,
    patch_size: int,
    *,
    threshold: float = SPURIOUS_THRESHOLD,
    min_keypoints: int = 1,
    titles: list[str] | None = None,
    ncols: int = 4,
) -> Figure:
    """The spurious patches of each image (paper §5.1): Key patches whose θ is below ``threshold``, outlined in red.

    Other Key patches are outlined in yellow; each spurious patch shows its θ.

    Args:
        images: (B, C, H, W) pixels in [0, 1].
        scores: (B, N) per-patch θ (SPEC §7).
        keypoint_counts: (B, N) or (B, Gh, Gw).
        patch_size: P.
        threshold, min_keypoints: as :func:`~captum_sift.theta.spurious_patches`.
    """
    from ..theta.spurious import spurious_patches

    images = check_images(images)
    height, width = images.shape[2:]
    check_patch_size(patch_size, height, width)
    counts = keypoint_counts.flatten(1).cpu()
    scores = scores.detach().cpu()
    flags = spurious_patches(scores, counts, threshold, min_keypoints)
    key = counts >= min_keypoints
    fig, axes = axes_grid(images.shape[0], ncols)
    grid_w = width // patch_size
    for b, ax in enumerate(axes):
        pixels = images[b].detach().cpu().permute(1, 2, 0).numpy()
        ax.imshow(pixels if pixels.shape[2] == 3 else pixels[..., 0], cmap="gray", vmin=0, vmax=1)
        for j in torch.nonzero(key[b]).flatten().tolist():
            y0, x0 = (j // grid_w) * patch_size - 0.5, (j % grid_w) * patch_size - 0.5
            spurious = bool(flags[b, j])
            ax.add_patch(plt.Rectangle((x0, y0), patch_size, patch_size, fill=False,
                                       ec="red" if spurious else "yellow", lw=1.6 if spurious else 0.6))  # fmt: skip
            if spurious:
                ax.text(x0 + 1, y0 + 1, f"{float(scores[b, j]):.2f}", color="white", fontsize=_THETA_FONT, va="top",
                        bbox={"facecolor": "red", "alpha": 0.6, "pad": 0.3, "lw": 0})  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        label = titles[b] if titles else f"image {b}"
        ax.set_title(f"{label}: {int(flags[b].sum())} spurious of {int(key[b].sum())} Key", fontsize=8)
    fig.suptitle(f"spurious patches (red): Key patches with θ < {threshold:g}", fontsize=9)
    cols = max(1, min(ncols, len(axes)))
    rows = math.ceil(len(axes) / cols)
    fig.set_size_inches(4.6 * cols, 4.9 * rows + 0.4)  # images large enough for readable θ labels, room for titles
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def plot_spurious_positions(report: InterrelationReport, *, ax: Axes | None = None) -> Axes:
    """How often each patch position is flagged spurious, among the images where it is a Key patch."""
    if report.positions is None:
        raise CaptumSiftError("expected a report with position counts (made by analyze), got none")
    key = report.positions["key"].double()
    share = torch.where(key > 0, report.positions["spurious"].double() / key.clamp(min=1), torch.nan)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(share.view(*report.grid_size).numpy(), cmap="magma", vmin=0, vmax=1)
    ax.figure.colorbar(image, ax=ax, label="share of Key images flagged spurious")
    ax.set_title(f"spurious patch positions over {report.num_images} images", fontsize=9)
    ax.set_xlabel("patch column")
    ax.set_ylabel("patch row")
    return ax
