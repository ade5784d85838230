"""The spurious rule of paper §5.1: a Key patch whose attention goes mostly to Non-key patches."""

from __future__ import annotations

import torch

from .._checks import check_2d, check_min_keypoints, check_number, shape_of
from ..errors import CaptumSiftError

__all__ = ["SPURIOUS_THRESHOLD", "key_patches", "position_counts", "spurious_patches"]

#: θ below which a Key patch is spurious by default (paper §5.1: "most" of its attention to Non-key patches).
SPURIOUS_THRESHOLD = 0.5


def spurious_patches(
    scores: torch.Tensor,
    keypoint_counts: torch.Tensor,
    threshold: float = SPURIOUS_THRESHOLD,
    min_keypoints: int = 1,
) -> torch.Tensor:
    """Key patches whose attention goes mostly to Non-key patches (paper §5.1): t_j >= min_keypoints and θ < threshold.

    "A keypoint patch that assigns most of its attention to Non-keypoint
    patches will be regarded as spurious correlation, even if this patch
    contains many keypoints." With the SPEC §7 score (θ_i, averaged over heads
    and layers), "most" is θ_i < 0.5 by default.

    Shape:
        - scores, keypoint_counts: (B, N)
        - output: (B, N) bool

    Example:
        >>> spurious_patches(torch.tensor([[0.2, 0.9, 0.3, 0.1]]), torch.tensor([[3, 2, 0, 1]]))
        tensor([[ True, False, False,  True]])
    """
    key = key_patches(scores, keypoint_counts, min_keypoints)
    return _spurious(scores, key, check_number(threshold, "threshold"))


def key_patches(scores: torch.Tensor, keypoint_counts: object, min_keypoints: int) -> torch.Tensor:
    """Key patches (t_j >= min_keypoints) of a (B, N) score grid; NaN scores on them are refused."""
    scores, key = _key_mask(scores, keypoint_counts, min_keypoints)
    if bool(torch.isnan(scores[key]).any()):
        raise CaptumSiftError("expected scores without NaN on Key patches, got NaN (gamma > 1 can leave S_i empty)")
    return key


def position_counts(
    scores: torch.Tensor, keypoint_counts: torch.Tensor, min_keypoints: int = 1, threshold: float = SPURIOUS_THRESHOLD
) -> dict[str, torch.Tensor]:
    """Per patch position, the number of images where it is a Key patch and where it is spurious.

    The rule of :func:`spurious_patches`, counted over the images; a NaN
    score (gamma > 1 can leave S_i empty) counts as not spurious here
    instead of being refused.

    Shape:
        - scores, keypoint_counts: (B, N)
        - output: ``{"key": (N,), "spurious": (N,)}``, int64

    Example:
        >>> scores = torch.tensor([[0.2, 0.9, 0.3, float("nan")], [0.6, 0.1, 0.2, 0.4]])
        >>> counts = torch.tensor([[3, 2, 0, 1], [1, 1, 0, 0]])
        >>> position_counts(scores, counts)
        {'key': tensor([2, 2, 0, 1]), 'spurious': tensor([1, 1, 0, 0])}
    """
    scores, key = _key_mask(scores, keypoint_counts, min_keypoints)
    spurious = _spurious(scores, key, check_number(threshold, "threshold"))
    return {"key": key.long().sum(0), "spurious": spurious.long().sum(0)}


def _key_mask(scores: torch.Tensor, keypoint_counts: object, min_keypoints: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked (B, N) scores and their Key patches (t_j >= min_keypoints), on the scores' device."""
    scores = check_2d(scores, "scores")
    if not isinstance(keypoint_counts, torch.Tensor) or keypoint_counts.flatten(1).shape != scores.shape:
        raise CaptumSiftError(
            f"expected keypoint_counts of shape (B, N) = {tuple(scores.shape)} with the spurious mode, "
            f"got {shape_of(keypoint_counts)}"
        )
    return scores, keypoint_counts.flatten(1).to(scores.device) >= check_min_keypoints(min_keypoints)


def _spurious(scores: torch.Tensor, key: torch.Tensor, threshold: float) -> torch.Tensor:
    """The rule itself: a Key patch whose score is below the threshold (a NaN score is not below it)."""
    return key & (scores < threshold)
