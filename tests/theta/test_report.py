"""InterrelationReport by hand: sums, means, curves and position counts of a made-up batch; merge; state_dict."""

import json
import math

import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.theta.report import InterrelationReport

NAN = math.nan
# 4 images, 2 layers, 2 heads, a 2 x 2 grid. Dyadic values: every sum is exact in any order of addition.
KK = torch.tensor([
    [[0.5, 0.25], [0.75, 1.0]],
    [[NAN, 0.5], [0.25, 0.5]],
    [[0.25, 0.75], [0.5, NAN]],
    [[1.0, 0.0], [0.5, 0.25]],
])  # fmt: skip
NK = torch.tensor([
    [[0.25, 0.5], [0.5, 0.5]],
    [[0.75, 0.25], [0.0, 0.25]],
    [[NAN, NAN], [0.25, 0.5]],
    [[0.5, 0.5], [0.75, 1.0]],
])  # fmt: skip
FOCUS = torch.tensor([
    [[1.0, 0.5], [0.25, 1.25]],
    [[0.5, 0.5], [1.0, 0.75]],
    [[0.75, 1.25], [0.5, 0.5]],
    [[0.25, 1.0], [1.25, 0.0]],
])  # fmt: skip
PATCH_THETA = torch.tensor([
    [[0.25, 0.5, 1.0, 0.75], [0.25, 0.5, 0.5, 0.25]],  # layer mean 0.25 0.5 0.75 0.5
    [[0.75, 0.25, 0.5, NAN], [0.75, 0.25, 0.5, NAN]],  # 0.75 0.25 0.5 NaN
    [[0.0, 0.5, 0.25, 1.0], [0.5, 0.5, 0.25, 1.0]],  # 0.25 0.5 0.25 1.0
    [[1.0, 1.0, 0.0, 0.25], [0.5, 0.0, 0.5, 0.25]],  # 0.75 0.5 0.25 0.25
])  # fmt: skip
COUNTS = torch.tensor([[2, 0, 1, 1], [1, 1, 0, 3], [0, 0, 0, 0], [1, 0, 2, 0]])
SETTINGS = {"gamma": 1.0, "weighted": True, "include_self": True, "min_keypoints": 1}


def hand_report(images=slice(None), settings=SETTINGS):
    """The report of the made-up batch (or some of its images)."""
    per_image = {
        "kk": KK[images], "nk": NK[images], "focus": FOCUS[images], "patch_theta": PATCH_THETA[images],
        "keypoint_counts": COUNTS[images], "query_patch": torch.tensor([0, 3, 0, 2])[images],
        "query_attention": torch.full((4, 2, 4), 0.25)[images],
    }  # fmt: skip
    return InterrelationReport.from_per_image(layers=[0, 2], grid_size=(2, 2), settings=settings, per_image=per_image)


def test_sums_means_and_counts_by_hand():
    report = hand_report()
    assert (report.num_images, report.num_heads, report.num_patches, report.layers) == (4, 2, 4, [0, 2])
    # θ_KK of (layer 0, head 0) over the images: 0.5, NaN, 0.25, 1.0 -> 1.75 over 3 images
    assert torch.equal(report.sums["kk"], torch.tensor([[1.75, 1.5], [2.0, 1.75]], dtype=torch.float64))
    assert torch.equal(report.counts["kk"], torch.tensor([[3, 4], [4, 3]]))
    expected_kk = torch.tensor([[1.75 / 3, 0.375], [0.5, 1.75 / 3]], dtype=torch.float64)
    torch.testing.assert_close(report.mean("kk"), expected_kk, rtol=0, atol=1e-15)
    torch.testing.assert_close(report.mean("kn"), 1 - expected_kk, rtol=0, atol=1e-15)
    expected_nk = torch.tensor([[0.5, 1.25 / 3], [0.375, 0.5625]], dtype=torch.float64)
    torch.testing.assert_close(report.mean("nk"), expected_nk, rtol=0, atol=1e-15)
    torch.testing.assert_close(report.mean("nn"), 1 - expected_nk, rtol=0, atol=1e-15)
    assert torch.equal(report.image_count("nn"), torch.tensor([[3, 3], [4, 4]]))
    focus = torch.tensor([[0.625, 0.8125], [0.75, 0.625]], dtype=torch.float64)
    assert torch.equal(report.mean("focus"), focus)
    torch.testing.assert_close(report.mean("focus_normalized"), focus / math.log(4), rtol=0, atol=1e-15)
    torch.testing.assert_close(report.layer_mean("kk"), expected_kk.mean(dim=1), rtol=0, atol=1e-15)
    # the per-image derived classes
    torch.testing.assert_close(report.kn, 1 - KK, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(report.focus_normalized, FOCUS / math.log(4), equal_nan=True)
    with pytest.raises(CaptumSiftError, match="expected a quantity in .*got 'theta'"):
        report.mean("theta")


def test_a_layer_head_without_any_image_has_a_nan_mean_and_count_zero():
    report = hand_report(slice(2, 3))  # image 2 alone: no θ_NK on layer 0 (no Non-key patch there)
    assert torch.isnan(report.mean("nk")[0]).all() and torch.equal(report.image_count("nk")[0], torch.tensor([0, 0]))
    assert torch.equal(report.mean("nk")[1], torch.tensor([0.25, 0.5], dtype=torch.float64))


def test_curves_and_positions_by_hand():
    report = hand_report()
    # head means per image and layer, NaN heads left out
    kk = torch.tensor([[0.375, 0.875], [0.5, 0.375], [0.5, 0.5], [0.5, 0.375]])
    focus = torch.tensor([[0.75, 0.75], [0.5, 0.875], [1.0, 0.5], [0.625, 0.625]])
    assert set(report.curves) == {"kk", "focus"}
    assert torch.equal(report.curves["kk"], kk) and torch.equal(report.curves["focus"], focus)
    # Key: t >= 1. Scores (θ over layers): image 0 patch 0 (0.25), image 1 patch 1 (0.25), image 3 patch 2
    # (0.25) are spurious; image 0 patch 3 (0.5) is not (not below 0.5), image 1 patch 3 (NaN) is not.
    assert torch.equal(report.positions["key"], torch.tensor([3, 1, 2, 2]))
    assert torch.equal(report.positions["spurious"], torch.tensor([1, 1, 1, 0]))
    # min_keypoints from the settings: t >= 2 leaves image 0 patch 0 (0.25: spurious), image 1 patch 3 (NaN: not)
    # and image 3 patch 2 (0.25: spurious)
    strict = hand_report(settings={**SETTINGS, "min_keypoints": 2})
    assert torch.equal(strict.positions["key"], torch.tensor([1, 0, 1, 1]))
    assert torch.equal(strict.positions["spurious"], torch.tensor([1, 0, 1, 0]))


def _assert_same(a, b):
    """Every field equal, exactly, dtypes included (NaN equal to NaN)."""
    for name in ("layers", "num_heads", "grid_size", "settings", "num_images", "extra"):
        assert getattr(a, name) == getattr(b, name), name
    for group in ("sums", "counts", "curves", "positions"):
        x, y = getattr(a, group), getattr(b, group)
        assert (x is None) == (y is None), group
        if x is not None:
            assert set(x) == set(y), group
            for key in x:
                assert x[key].dtype == y[key].dtype, (group, key)
                torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, equal_nan=True)
    for name in ("kk", "nk", "focus", "patch_theta", "keypoint_counts", "query_patch", "query_attention"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def test_merge_of_two_halves_equals_the_whole_batch():
    whole = hand_report()
    merged = hand_report(slice(0, 2)).merge(hand_report(slice(2, 4)))
    _assert_same(merged, whole)
    three = hand_report(slice(0, 1)).merge(hand_report(slice(1, 3)), hand_report(slice(3, 4)))
    _assert_same(three, whole)
    # a sums-only half: the sums, curves and positions are still those of the whole batch
    small = hand_report(slice(0, 2)).without_per_image().merge(hand_report(slice(2, 4)))
    assert not small.has_per_image and small.kk is None and small.query_attention is None
    assert torch.equal(small.sums["focus"], whole.sums["focus"]) and small.num_images == 4
    assert torch.equal(small.curves["kk"], whole.curves["kk"])
    assert torch.equal(small.positions["spurious"], whole.positions["spurious"])


def test_merge_refuses_other_setups_and_types():
    report = hand_report()
    with pytest.raises(CaptumSiftError, match="same layers, heads, grid and settings"):
        report.merge(hand_report(settings={**SETTINGS, "gamma": 2.0}))
    with pytest.raises(CaptumSiftError, match="InterrelationReports to merge, got dict"):
        report.merge(report.to_dict())


def test_image_index_orders_the_merged_curves():
    first, second = hand_report(slice(0, 2)), hand_report(slice(2, 4))
    merged = second.with_image_index([2, 3]).merge(first.with_image_index([0, 1]))
    assert torch.equal(merged.curves["image"], torch.tensor([2, 3, 0, 1]))
    assert torch.equal(merged.curves["kk"][merged.curves["image"].argsort()], hand_report().curves["kk"])
    merged.all_reduce()  # one process: nothing to add
    assert merged.num_images == 4 and torch.equal(merged.sums["kk"], hand_report().sums["kk"])
    assert "image" not in second.with_image_index([2, 3]).merge(first).curves  # only when every part has one
    with pytest.raises(CaptumSiftError, match=r"image index of shape \(2,\), got \(3,\)"):
        first.with_image_index([0, 1, 2])
    with pytest.raises(CaptumSiftError, match="unique image indices"):
        first.with_image_index([1, 1])


@pytest.mark.parametrize("small", [False, True])
def test_state_dict_round_trip_is_exact(small):
    report = hand_report().with_image_index([5, 1, 7, 0])
    report.extra["note"] = "kept"
    if small:
        report = report.without_per_image()
    state = report.state_dict()
    assert "means" not in state
    text = json.dumps(state, allow_nan=False)  # JSON-ready: NaN is null
    target = hand_report(slice(0, 1))  # any report: every field is replaced
    target.load_state_dict(json.loads(text))
    _assert_same(target, report)
    assert target.has_per_image is not small


def test_load_state_dict_refuses_a_damaged_state_and_keeps_the_report():
    report = hand_report()
    state = report.state_dict()
    state["counts"]["kk"][0][0] = 5  # more images than the report has
    target = hand_report(slice(0, 2))
    with pytest.raises(CaptumSiftError, match=r"counts of 'kk' to be ints in \[0, num_images=4\]"):
        target.load_state_dict(state)
    _assert_same(target, hand_report(slice(0, 2)))
