"""Image -> SIFT keypoints -> keypoint count t_j per patch (SPEC §1)."""

from .detect import KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts

__all__ = ["KeypointCounter", "count_keypoints", "detect_keypoints", "keypoints_to_counts"]
