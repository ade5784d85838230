"""Attention -> θ statistics, reports and stages (SPEC §2-6)."""

from .analysis import PatchThetas, analyze, analyze_batch, patch_scores_from_report, patch_thetas
from .functional import (
    Interrelation,
    check_counts,
    focus_index,
    interrelation,
    patch_block,
    patch_theta,
    theta_from_weights,
    theta_weights,
)
from .maps import ThetaMaps, patch_theta_maps, theta_maps
from .report import InterrelationReport
from .report_fields import QUANTITIES, STORED
from .report_io import nan_to_none
from .settings import KEYPOINT_BACKENDS, STAGE_NAMES, ThetaSettings, resolve_layers
from .spurious import SPURIOUS_THRESHOLD, key_patches, position_counts, spurious_patches
from .stages import (
    BOOTSTRAP_SAMPLES,
    GAP_RULE,
    MIN_CONFIDENCE,
    MIN_RELATIVE_RISE,
    MIN_RISE_SHARE,
    RULE,
    Stages,
    find_stages,
    smooth,
    split_stages,
    split_theta_kk,
)

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "GAP_RULE",
    "Interrelation",
    "InterrelationReport",
    "KEYPOINT_BACKENDS",
    "MIN_CONFIDENCE",
    "MIN_RELATIVE_RISE",
    "MIN_RISE_SHARE",
    "PatchThetas",
    "QUANTITIES",
    "RULE",
    "SPURIOUS_THRESHOLD",
    "STAGE_NAMES",
    "STORED",
    "Stages",
    "ThetaMaps",
    "ThetaSettings",
    "analyze",
    "analyze_batch",
    "check_counts",
    "find_stages",
    "focus_index",
    "interrelation",
    "key_patches",
    "nan_to_none",
    "patch_block",
    "patch_scores_from_report",
    "patch_theta",
    "patch_theta_maps",
    "patch_thetas",
    "position_counts",
    "resolve_layers",
    "smooth",
    "split_stages",
    "split_theta_kk",
    "spurious_patches",
    "theta_from_weights",
    "theta_maps",
    "theta_weights",
]
