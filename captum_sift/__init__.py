"""captum_sift: explain Vision Transformers with SIFT keypoints and attention.

The public names; see docs/api.md.
"""

from .errors import CaptumSiftError
from .keypoints import KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts

__version__ = "0.1.0"

__all__ = [
    "CaptumSiftError",
    "KeypointCounter",
    "__version__",
    "count_keypoints",
    "detect_keypoints",
    "keypoints_to_counts",
]
