"""Figures: keypoints and per-patch counts over the patch grid (paper Fig. 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._checks import check_images, check_patch_size, shape_of
from ..errors import CaptumSiftError
from ..keypoints import keypoints_to_counts
from ..theta.report import InterrelationReport
from ..theta.spurious import SPURIOUS_THRESHOLD

__all__ = [
    "overlay",
    "plot_focus_index",
    "plot_mask_curve",
    "plot_mask_grid",
    "plot_interrelation",
    "plot_keypoints",
    "plot_keypoints_grid",
    "plot_spurious",
    "plot_spurious_positions",
    "plot_stage_heatmaps",
    "plot_stages",
]


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


def _grid(n: int, ncols: int) -> tuple[Figure, list[Axes]]:
    """A figure with one axes per image in rows of ``ncols``; spare axes switched off."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


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
    fig, axes = _grid(images.shape[0], ncols)
    for i, ax in enumerate(axes):
        title = None
        if titles is not None:
            title = f"{titles[i]}: {keypoints[i].shape[0]} keypoints"
        plot_keypoints(images[i], keypoints[i], patch_size, ax=ax, title=title)
    fig.tight_layout()
    return fig


# -- the analysis (paper Figs. 5, 6, 7) -----------------------------------------
_COLORS = {"kk": "tab:blue", "nk": "tab:orange", "kn": "tab:green", "nn": "tab:red", "focus": "tab:purple"}
_LABELS = {"kk": "KK", "kn": "KN", "nk": "NK", "nn": "NN", "focus": "focus index", "focus_normalized": "focus / log N"}
_STAGE_COLORS = {"retrieval": "#dbe9f6", "capture": "#fde0c5", "coach": "#dff2dc"}


def _trend(ax: Axes, x: list[int], y: torch.Tensor, color: str) -> None:
    """Dotted polynomial trend line (degree <= 3) through the finite points."""
    import numpy as np

    xs, ys = np.asarray(x, dtype=float), y.numpy()
    ok = np.isfinite(ys)
    if ok.sum() >= 2:
        coef = np.polyfit(xs[ok], ys[ok], deg=min(3, int(ok.sum()) - 1))
        grid = np.linspace(xs.min(), xs.max(), 100)
        ax.plot(grid, np.polyval(coef, grid), ls=":", color=color, lw=1.2)


def _per_head(report, name: str, ax: Axes, label: str) -> None:
    means = report.mean(name).numpy()  # (L, h)
    color = _COLORS.get(name.replace("_normalized", ""), "tab:gray")
    for head in range(report.num_heads):
        ax.scatter(report.layers, means[:, head], s=10, color=color, alpha=0.35, lw=0)
    layer_mean = report.layer_mean(name)
    ax.plot(report.layers, layer_mean.numpy(), "-o", color=color, ms=3, label=label)
    _trend(ax, report.layers, layer_mean, color)


def plot_interrelation(report, *, ax: Axes | None = None) -> Axes:
    """Fig. 5: θ_KK and θ_NK per layer; every head a point, head mean a line, dotted trend."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    _per_head(report, "kk", ax, "KK (Key → Key)")
    _per_head(report, "nk", ax, "NK (Non-key → Key)")
    ax.set_xlabel("layer")
    ax.set_ylabel("θ (weighted)" if report.settings.get("weighted", True) else "θ (unweighted)")
    ax.set_title(f"Patch interrelation, {report.num_images} images", fontsize=9)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()  # keeps the "layer" label inside the saved figure
    return ax


def plot_focus_index(report, *, normalized: bool = False, ax: Axes | None = None) -> Axes:
    """Fig. 6: attention focus index per head (points) and its head mean (line); larger = broader."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    name = "focus_normalized" if normalized else "focus"
    _per_head(report, name, ax, "head mean")
    ax.set_xlabel("layer")
    ax.set_ylabel(_LABELS[name] + " (larger = broader)")
    ax.set_title("Attention focus index", fontsize=9)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()  # keeps the "layer" label inside the saved figure
    return ax


def _bands(ax: Axes, stages) -> None:
    for name in ("retrieval", "capture", "coach"):
        layers = stages[name]
        if not layers:  # no Coach stage: θ_KK still rising at the last layer
            continue
        ax.axvspan(layers[0] - 0.5, layers[-1] + 0.5, color=_STAGE_COLORS[name], zorder=0)
        ax.text((layers[0] + layers[-1]) / 2, 1.0, name.capitalize(), transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8)  # fmt: skip


def plot_stages(report, stages, *, ax: Axes | None = None) -> Axes:
    """Fig. 7a: KK, KN, NK, NN head means over the stages as coloured bands, focus index on a twin axis.

    Layer ticks are integers; the legend sits below the axes, clear of the
    curves. A split that is not clear is titled "NO CLEAR STAGES" with its
    confidences, and a missing Coach stage is named in the title.
    """
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.4))
    _bands(ax, stages)
    for name in ("kk", "kn", "nk", "nn"):
        ax.plot(report.layers, report.layer_mean(name).numpy(), "-o", ms=3, color=_COLORS[name], label=_LABELS[name])
    ax.set_xlabel("layer")
    ax.set_ylabel("θ, head mean")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    twin = ax.twinx()
    twin.plot(report.layers, report.layer_mean("focus").numpy(), "--", color=_COLORS["focus"], label="focus index")
    twin.set_ylabel("focus index")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=5, frameon=False)  # fmt: skip
    if not getattr(stages, "clear", True):
        conf = ", ".join(
            f"{k} {v:.2f}" for k, v in (getattr(stages, "confidence", None) or {}).items() if v is not None
        )
        missing = "\nno Coach stage: θ_KK still rising at the last layer" if not stages["coach"] else ""
        ax.set_title(f"NO CLEAR STAGES (best split shown{'; confidence ' + conf if conf else ''}){missing}",
                     fontsize=8, color="#b00", pad=14)  # fmt: skip
    ax.figure.tight_layout()
    return ax


def plot_stage_heatmaps(report, stages, *, image_index: int = 0, image: torch.Tensor | None = None) -> Figure:
    """Fig. 7b: the query patch's head-mean attention at the middle layer of each stage.

    Args:
        report: an :class:`~captum_sift.theta.report.InterrelationReport` with per-image data.
        stages: from :func:`~captum_sift.theta.stages.find_stages`.
        image_index: which image of the report.
        image: optional (C, H, W) pixels in [0, 1] of that image, shown under the heat map.
    """
    if not report.has_per_image:
        raise CaptumSiftError("expected a report with per-image data (query_attention), got a sums-only report")
    if not 0 <= image_index < report.num_images:
        raise CaptumSiftError(f"expected image_index in [0, {report.num_images}), got {image_index}")
    gh, gw = report.grid_size
    query = int(report.query_patch[image_index])
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4))
    chosen = {name: stages[name][len(stages[name]) // 2] for name in ("retrieval", "capture", "coach") if stages[name]}
    heats = {n: report.query_attention[image_index, report.layers.index(layer)].view(gh, gw).numpy()
             for n, layer in chosen.items()}  # fmt: skip
    vmax = max(float(h.max()) for h in heats.values())  # one scale for the three panels and the colour bar
    shown = None
    for ax, name in zip(axes, ("retrieval", "capture", "coach"), strict=True):
        if name not in chosen:  # no Coach stage: θ_KK still rising at the last layer
            ax.text(0.5, 0.5, f"no {name.capitalize()} stage:\nθ_KK still rising\nat the last layer", ha="center",
                    va="center", fontsize=9, transform=ax.transAxes)  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        layer, heat = chosen[name], heats[name]
        if image is not None:
            h, w = image.shape[-2:]
            ax.imshow(image.detach().cpu().permute(1, 2, 0).squeeze().numpy(), extent=(0, w, h, 0), cmap="gray")
            shown = ax.imshow(heat, cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="nearest", vmin=0,
                              vmax=vmax)  # fmt: skip
            py, px = divmod(query, gw)
            ax.add_patch(plt.Rectangle((px * w / gw, py * h / gh), w / gw, h / gh, fill=False, ec="white", lw=1.5))
        else:
            shown = ax.imshow(heat, cmap="jet", interpolation="nearest", vmin=0, vmax=vmax)
            py, px = divmod(query, gw)
            ax.add_patch(plt.Rectangle((px - 0.5, py - 0.5), 1, 1, fill=False, ec="white", lw=1.5))
        ax.set_title(f"{name.capitalize()}: layer {layer}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Attention of query patch {query} (head mean)", fontsize=9)
    fig.tight_layout()
    if shown is not None:
        shown.set_alpha(1.0 if image is None else 0.5)
        bar = fig.colorbar(shown, ax=list(axes), shrink=0.85, pad=0.02)
        bar.set_label("attention weight (head mean)", fontsize=8)
        bar.solids.set_alpha(1.0)
    return fig


# -- attributions and masks (paper Fig. 8) ----------------------------------------
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
    fig, axes = _grid(images.shape[0], ncols)
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
        table: a :class:`~captum_sift.masking.table.MaskingTable`; its accuracies are
            written under each panel.
        fill: as in :func:`~captum_sift.masking.evaluate.evaluate_masking`: a number
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
        threshold, min_keypoints: as :func:`~captum_sift.masking.apply.spurious_patches`.
    """
    from ..theta.spurious import spurious_patches

    images = check_images(images)
    height, width = images.shape[2:]
    check_patch_size(patch_size, height, width)
    counts = keypoint_counts.flatten(1).cpu()
    scores = scores.detach().cpu()
    flags = spurious_patches(scores, counts, threshold, min_keypoints)
    key = counts >= min_keypoints
    fig, axes = _grid(images.shape[0], ncols)
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
