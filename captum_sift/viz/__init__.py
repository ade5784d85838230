"""Figures: keypoints, per-layer curves and stages, θ per head, attribution overlays, masks, method comparisons."""

from .attributions import overlay
from .comparison import plot_comparison_curves, plot_method_overlays, plot_randomisation_check
from .curves import plot_focus_index, plot_interrelation, plot_stage_heatmaps, plot_stages
from .heads import plot_theta_heads
from .keypoints import plot_keypoints, plot_keypoints_grid
from .masks import plot_mask_curve, plot_mask_grid, plot_spurious, plot_spurious_positions

__all__ = [
    "overlay",
    "plot_comparison_curves",
    "plot_method_overlays",
    "plot_randomisation_check",
    "plot_focus_index",
    "plot_interrelation",
    "plot_keypoints",
    "plot_keypoints_grid",
    "plot_mask_curve",
    "plot_mask_grid",
    "plot_spurious",
    "plot_spurious_positions",
    "plot_stage_heatmaps",
    "plot_stages",
    "plot_theta_heads",
]
