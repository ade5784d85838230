"""Image -> SIFT keypoints -> keypoint count t_j per patch (SPEC §1)."""

from .api import KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts
from .params import BACKENDS, DEFAULT_BACKEND, SiftParams

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "KeypointCounter",
    "SiftParams",
    "count_keypoints",
    "detect_keypoints",
    "keypoints_to_counts",
]
