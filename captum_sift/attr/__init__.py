"""Captum Attribution classes and the patch-grid helpers they use."""

from .attention_baselines import AttentionRollout, RawAttention
from .attn_lrp import AttnLRP
from .gradient_rollout import GradientRollout
from .patches import patch_feature_mask, patch_scores_to_pixels
from .sift_interrelation import SIFTInterrelation

__all__ = [
    "AttentionRollout",
    "AttnLRP",
    "GradientRollout",
    "RawAttention",
    "SIFTInterrelation",
    "patch_feature_mask",
    "patch_scores_to_pixels",
]
