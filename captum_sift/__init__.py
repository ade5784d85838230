"""captum_sift: explain Vision Transformers with SIFT keypoints and attention.

The public names; see docs/api.md.
"""

from .attr import SIFTInterrelation
from .errors import CaptumSiftError
from .faithfulness.compare import compare as evaluate
from .keypoints import KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts
from .masking.prompt import MaskAsPrompt
from .theta.analysis import analyze
from .theta.report import InterrelationReport
from .theta.settings import ThetaSettings
from .theta.stages import Stages, find_stages
from .vit.adapter import ViTAdapter, as_vit

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
