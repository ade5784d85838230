"""The spurious rule of paper §5.1, by hand: Key patches (t_j >= min_keypoints) whose score is below the threshold."""

import math

import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.theta.spurious import SPURIOUS_THRESHOLD, key_patches, position_counts, spurious_patches

NAN = math.nan
# Two images of four patches. Image 0: patches 0, 1, 3 are Key (t >= 1); image 1: patches 0, 1.
SCORES = torch.tensor([[0.2, 0.9, 0.3, 0.5], [0.6, 0.1, 0.2, 0.4]])
COUNTS = torch.tensor([[3, 2, 0, 1], [1, 1, 0, 0]])


def test_spurious_patches_by_hand():
    assert SPURIOUS_THRESHOLD == 0.5
    # image 0: Key 0 (0.2 < 0.5) yes, Key 1 (0.9) no, 2 Non-key, Key 3 (0.5 is not < 0.5) no
    # image 1: Key 0 (0.6) no, Key 1 (0.1) yes, 2 and 3 Non-key (0.2 and 0.4 would be below: not Key)
    expected = torch.tensor([[True, False, False, False], [False, True, False, False]])
    assert torch.equal(spurious_patches(SCORES, COUNTS), expected)
    # threshold 0.65: also image 0 patch 3 (0.5) and image 1 patch 0 (0.6)
    wider = torch.tensor([[True, False, False, True], [True, True, False, False]])
    assert torch.equal(spurious_patches(SCORES, COUNTS, threshold=0.65), wider)
    # min_keypoints 2: only image 0's patches 0 (t=3) and 1 (t=2) are Key
    assert torch.equal(spurious_patches(SCORES, COUNTS, min_keypoints=2), torch.tensor([[True, False, False, False],
                                                                                        [False] * 4]))  # fmt: skip
    # the counts may be a (B, Gh, Gw) grid
    assert torch.equal(spurious_patches(SCORES, COUNTS.view(2, 2, 2)), expected)


def test_key_patches_refuse_nan_on_key_patches_only():
    with_nan = SCORES.clone()
    with_nan[1, 3] = NAN  # a Non-key patch: fine
    assert torch.equal(key_patches(with_nan, COUNTS, 1), COUNTS >= 1)
    with_nan[0, 1] = NAN  # a Key patch
    with pytest.raises(CaptumSiftError, match="without NaN on Key patches"):
        spurious_patches(with_nan, COUNTS)


def test_position_counts_by_hand():
    scores = SCORES.clone()
    scores[0, 3] = NAN  # counted as not spurious (gamma > 1 can leave S_i empty), not refused
    counts = position_counts(scores, COUNTS)
    assert set(counts) == {"key", "spurious"}
    assert torch.equal(counts["key"], torch.tensor([2, 2, 0, 1]))
    assert torch.equal(counts["spurious"], torch.tensor([1, 1, 0, 0]))
    assert counts["key"].dtype == counts["spurious"].dtype == torch.int64
    # the same rule as spurious_patches, summed over images (no NaN)
    for threshold in (0.3, 0.5, 0.65):
        flags = spurious_patches(SCORES, COUNTS, threshold=threshold)
        assert torch.equal(position_counts(SCORES, COUNTS, threshold=threshold)["spurious"], flags.long().sum(0))
    assert torch.equal(position_counts(SCORES, COUNTS, min_keypoints=3)["key"], torch.tensor([1, 0, 0, 0]))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: spurious_patches(SCORES[0], COUNTS), r"scores of shape \(B, N\), got \(4,\)"),
        (lambda: spurious_patches(SCORES, COUNTS[:, :3]), r"keypoint_counts of shape \(B, N\) = \(2, 4\)"),
        (lambda: spurious_patches(SCORES, COUNTS.tolist()), "got list"),
        (lambda: spurious_patches(SCORES, COUNTS, threshold=NAN), "threshold to be a finite number, got nan"),
        (lambda: spurious_patches(SCORES, COUNTS, threshold="0.5"), "threshold to be a finite number"),
        (lambda: spurious_patches(SCORES, COUNTS, min_keypoints=0), "min_keypoints to be an int >= 1"),
        (lambda: position_counts(SCORES, COUNTS, threshold=True), "threshold to be a finite number, got True"),
        (lambda: position_counts(SCORES.view(1, 2, 4), COUNTS), r"scores of shape \(B, N\)"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(CaptumSiftError, match=message):
        call()
