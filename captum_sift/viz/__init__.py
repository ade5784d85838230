"""Figures: overlays, per-layer curves, stages, masks, method comparisons."""

from .comparison import plot_comparison_curves, plot_method_overlays, plot_randomisation_check
from .figures import (
    overlay,
    plot_focus_index,
    plot_interrelation,
    plot_keypoints,
    plot_keypoints_grid,
    plot_mask_curve,
    plot_mask_grid,
    plot_spurious,
    plot_spurious_positions,
    plot_stage_heatmaps,
    plot_stages,
)

__all__ = [
    "overlay",
    "plot_comparison_curves",
    "plot_focus_index",
    "plot_interrelation",
    "plot_keypoints",
    "plot_keypoints_grid",
    "plot_mask_curve",
    "plot_mask_grid",
    "plot_method_overlays",
    "plot_randomisation_check",
    "plot_spurious",
    "plot_spurious_positions",
    "plot_stage_heatmaps",
    "plot_stages",
]
