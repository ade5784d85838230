"""Figures of ``captum-sift compare``: deletion / insertion curves, the randomisation check, relevance overlays."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from ..faithfulness import ComparisonTable

__all__ = ["plot_comparison_curves", "plot_method_overlays", "plot_randomisation_check"]


def plot_comparison_curves(table: ComparisonTable, kind: str) -> Figure:
    """The mean ``kind`` (``"deletion"`` or ``"insertion"``) curve of every method of the table."""
    n_images = next(iter(table.curves.values()))["n"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, entry in table.curves.items():
        ax.plot(entry["points"], [v / entry["n"] for v in entry[kind]], "-o", ms=3, label=method)
    ax.set_xlabel("share of patches " + ("masked, most relevant first" if kind == "deletion" else "revealed"))
    ax.set_ylabel("probability of the predicted class")
    ax.set_title(f"{kind} curves, mean over {n_images} images", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_randomisation_check(table: ComparisonTable) -> Figure | None:
    """Bars of each method's mean complexity change under randomised weights (None without MPRT values)."""
    names = [m for m in table.values if "mprt_complexity_change" in table.values[m]]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [table.mean(m, "mprt_complexity_change") for m in names])
    ax.set_ylabel("complexity change, randomised weights")
    ax.set_title("parameter-randomisation sanity check (Quantus EfficientMPRT): ~0 = insensitive", fontsize=8)
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    return fig


def plot_method_overlays(images: torch.Tensor, scores: dict[str, torch.Tensor], grid: tuple[int, int]) -> Figure:
    """One row per method: its per-patch relevance (B, N) over each image (B, C, H, W) in [0, 1]."""
    methods: Sequence[str] = list(scores)
    columns, (h, w) = images.shape[0], images.shape[-2:]
    fig, axes = plt.subplots(len(methods), columns, figsize=(2.2 * columns, 2.2 * len(methods)), squeeze=False)
    for r, method in enumerate(methods):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(images[c].cpu().permute(1, 2, 0).squeeze().numpy(), cmap="gray", extent=(0, w, h, 0))
            ax.imshow(scores[method][c].view(*grid).numpy(), cmap="jet", alpha=0.5, extent=(0, w, h, 0),
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(method, fontsize=8)
    fig.tight_layout()
    return fig
