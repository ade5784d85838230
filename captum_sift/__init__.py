"""captum_sift: explain Vision Transformers with SIFT keypoints and attention.

The public names; see docs/api.md.
"""

from .analysis import analyze
from .attr import SIFTInterrelation
from .errors import CaptumSiftError
from .faithfulness import compare as evaluate
from .keypoints import KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts
from .masking import MaskAsPrompt
from .report import InterrelationReport
from .settings import ThetaSettings
from .stages import Stages, find_stages
from .vit import ViTAdapter, as_vit

__version__ = "0.1.0"

__all__ = [
    "CaptumSiftError",
    "InterrelationReport",
    "MaskAsPrompt",
    "SIFTInterrelation",
    "Stages",
    "ThetaSettings",
    "ViTAdapter",
    "analyze",
    "as_vit",
    "find_stages",
    "KeypointCounter",
    "__version__",
    "count_keypoints",
    "detect_keypoints",
    "evaluate",
    "keypoints_to_counts",
]
