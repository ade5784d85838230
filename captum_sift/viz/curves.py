"""The analysis per layer (paper Figs. 5, 6, 7): θ curves, the focus index, the stages and their heat maps."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import CaptumSiftError

__all__ = ["plot_focus_index", "plot_interrelation", "plot_stage_heatmaps", "plot_stages"]

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
    """Fig. 5: θ_KK and θ_NK per layer; every head a point, head mean a line, dotted trend; with the report's
    SPEC §9 controls, each control's θ_KK and θ_NK head means as dashed lines in the same colours."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    _per_head(report, "kk", ax, "KK (Key → Key)")
    _per_head(report, "nk", ax, "NK (Non-key → Key)")
    for control, marker in zip(getattr(report, "controls", ()), ("", "x", "^"), strict=False):
        for name in ("kk", "nk"):  # each control's head means, dashed, in the colour of its real class
            ax.plot(report.layers, report.layer_mean(f"{name}_{control}").numpy(), ls="--", marker=marker, ms=3,
                    lw=1, color=_COLORS[name], alpha=0.8, label=f"{name.upper()}, {control} control")  # fmt: skip
    ax.set_xlabel("layer")
    ax.set_ylabel("θ (weighted)" if report.settings.get("weighted", True) else "θ (unweighted)")
    ax.set_title(f"Patch interrelation, {report.num_images} images", fontsize=9)
    ax.legend(fontsize=7 if getattr(report, "controls", ()) else 8, ncol=2 if getattr(report, "controls", ()) else 1)
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
