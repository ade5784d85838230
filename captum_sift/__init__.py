"""captum_sift: explain Vision Transformers with SIFT keypoints and attention.

The public names; see docs/api.md.
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

from .attr import SIFTInterrelation
from .errors import CaptumSiftError
from .faithfulness import compare as compare_attributions
from .keypoints import KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts
from .masking.prompt import MaskAsPrompt
from .theta.analysis import analyze
from .theta.report import InterrelationReport
from .theta.settings import ThetaSettings
from .theta.stages import Stages, find_stages
from .vit.adapter import ViTAdapter, as_vit

if TYPE_CHECKING:
    from .faithfulness import ComparisonTable

__version__ = "0.3.0"


def evaluate(*args: Any, **kwargs: Any) -> ComparisonTable:
    """Deprecated name of :func:`compare_attributions`: warns (``FutureWarning``), then calls it."""
    warnings.warn(
        "captum_sift.evaluate is deprecated and will be removed in the next release: use "
        "captum_sift.compare_attributions (the same function)",
        FutureWarning,
        stacklevel=2,
    )
    return compare_attributions(*args, **kwargs)


evaluate.__signature__ = inspect.signature(compare_attributions)  # type: ignore[attr-defined]

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
    "compare_attributions",
    "find_stages",
    "KeypointCounter",
    "__version__",
    "count_keypoints",
    "detect_keypoints",
    "evaluate",
    "keypoints_to_counts",
]
