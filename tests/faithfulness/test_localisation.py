"""Localisation against ground truth: Quantus's metrics on patch scores, patch masks, ROAD, and compare's rows."""

import math

import numpy as np
import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.attr.patches import patch_scores_to_pixels
from captum_sift.data import default_dataset, default_model
from captum_sift.faithfulness import (
    LOCALISATION_METRICS,
    ComparisonTable,
    compare,
    explain,
    localisation_scores,
    patch_attribution,
    patch_masks,
    road_scores,
)
from captum_sift.vit.adapter import as_vit

quantus = pytest.importorskip("quantus")
MEAN, STD = 0.2860, 0.3530  # the embedded model's statistics

# A 4 x 4 patch grid: the mask is the centre 2 x 2 (patches 5, 6, 9, 10).
HIT = [0.1, 0.2, 0.0, 0.0,
       0.0, 0.9, 0.3, 0.0,
       0.0, 0.4, 0.0, 0.0,
       0.0, 0.0, 0.0, 0.1]  # fmt: skip
MISS = [0.9, 0.0, 0.0, 0.8,
        0.7, 0.0, 0.0, 0.6,
        0.5, 0.0, 0.0, 0.4,
        0.3, 0.2, 0.1, 0.05]  # fmt: skip
CENTRE = torch.zeros(16, dtype=torch.bool)
CENTRE[[5, 6, 9, 10]] = True


def test_each_metric_equals_the_hand_worked_value():
    scores = torch.tensor([HIT, MISS])
    out = localisation_scores(scores, CENTRE.expand(2, 16), k=5)
    assert list(out) == list(LOCALISATION_METRICS)
    # HIT: the maximum 0.9 (patch 5) is inside; inside 0.9 + 0.3 + 0.4 + 0 = 1.6 of 2.0; the top 4 are patches
    # 5, 9, 6, 1: three of the mask's four; the top 5 add one of the two 0.1s (both outside): 3 of 5
    assert out["pointing_game"][0] == 1.0
    assert out["relevance_mass_accuracy"][0] == pytest.approx(1.6 / 2.0)
    assert out["relevance_rank_accuracy"][0] == pytest.approx(3 / 4)
    assert out["top_k_intersection"][0] == pytest.approx(3 / 5)
    # MISS: every positive score lies outside the mask, so every metric fails
    assert [out[m][1] for m in LOCALISATION_METRICS] == [0.0, 0.0, 0.0, 0.0]


def test_the_values_are_quantus_own(monkeypatch):
    """Each metric is computed by Quantus's class: a spy on their evaluate_batch sees every call."""
    seen = []
    for name in ("PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy", "TopKIntersection"):
        cls = getattr(quantus, name)
        original = cls.evaluate_batch

        def spy(self, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs["a_batch"].shape, kwargs["s_batch"].shape))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "evaluate_batch", spy)
    localisation_scores(torch.tensor([HIT]), CENTRE.view(1, 16), k=2)
    assert [s[0] for s in seen] == ["PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy",
                                    "TopKIntersection"]  # fmt: skip
    assert all(a == s == (1, 1, 16) for _, a, s in seen)  # the 16 patches are the features


def test_relevance_mass_counts_positive_relevance_only():
    scores = torch.tensor([[2.0, -1.0, 1.0, -3.0]])  # inside: patches 0 and 1
    out = localisation_scores(scores, torch.tensor([[1, 1, 0, 0]]), k=1)
    assert out["relevance_mass_accuracy"] == [pytest.approx(2.0 / 3.0)]  # signed it would be 1 / -1
    none_positive = localisation_scores(torch.tensor([[0.0, -1.0, -2.0, -3.0]]), torch.tensor([[1, 1, 0, 0]]), k=1)
    assert math.isnan(none_positive["relevance_mass_accuracy"][0])  # no positive relevance: undefined, not 0
    assert none_positive["pointing_game"] == [1.0] and none_positive["relevance_rank_accuracy"] == [1.0]


def test_nan_attributions_give_nan_never_zero():
    scores = torch.tensor([HIT, HIT])
    scores[1, 3] = float("nan")
    out = localisation_scores(scores, CENTRE.expand(2, 16), k=5)
    for metric in LOCALISATION_METRICS:
        assert math.isnan(out[metric][1]), metric
    assert out["pointing_game"][0] == 1.0 and out["relevance_rank_accuracy"][0] == pytest.approx(0.75)
    every = localisation_scores(torch.full((1, 16), float("nan")), CENTRE.view(1, 16))
    assert all(math.isnan(v[0]) for v in every.values())


def test_attributions_quantus_refuses_are_nan_per_image_whatever_the_batch():
    """All equal (it points nowhere) or all negative: Quantus refuses them; NaN, and the other images' values
    are those they have alone."""
    scores = torch.tensor([HIT, [0.0] * 16, [-1.0 - i for i in range(16)], MISS])
    out = localisation_scores(scores, CENTRE.expand(4, 16), k=5)
    for row in (1, 2):
        assert all(math.isnan(out[m][row]) for m in LOCALISATION_METRICS)
    for row in (0, 3):
        alone = localisation_scores(scores[row : row + 1], CENTRE.view(1, 16), k=5)
        assert [out[m][row] for m in LOCALISATION_METRICS] == [alone[m][0] for m in LOCALISATION_METRICS]


def test_bad_masks_and_k_are_refused_with_the_shapes():
    scores = torch.tensor([HIT])
    for masks, message in (
        (CENTRE.view(1, 4, 4), r"expected masks of the scores' shape \(1, 16\), got \(1, 4, 4\)"),
        (CENTRE.view(1, 16).float() * 255, r"expected binary masks .* got 4 other values \(0 NaN; e.g. \[255.0\]\)"),
        (torch.full((1, 16), float("nan")), r"expected binary masks .* \(16 NaN"),
        (torch.zeros(1, 16), r"the mask of images \[0\] holds no patch"),
        ([[1] * 16], r"got list"),
    ):
        with pytest.raises(CaptumSiftError, match=message):
            localisation_scores(scores, masks)
    with pytest.raises(CaptumSiftError, match=r"expected k \(patches of the top-k intersection\) to be an int >= 1 "
                                              r"and <= 15, got 16"):  # fmt: skip
        localisation_scores(scores, CENTRE.view(1, 16), k=16)
    with pytest.raises(CaptumSiftError, match=r"expected real scores of shape \(B, N\), got \(16,\)"):
        localisation_scores(torch.tensor(HIT), CENTRE)
    with pytest.raises(CaptumSiftError, match=r"expected floating-point scores, got dtype torch.bool"):
        localisation_scores(CENTRE.view(1, 16), CENTRE.view(1, 16))


def test_patch_masks_take_patch_masks_and_pixel_masks_by_half_cover():
    pixels = torch.zeros(1, 4, 4)
    pixels[0, 0, 0:2] = 1  # patch 0: 2 of its 4 pixels -> inside
    pixels[0, 3, 3] = 1  # patch 3: 1 of 4 -> outside
    pixels[0, 2:4, 0:2] = 1  # patch 2: all 4 -> inside
    assert patch_masks(pixels, 1, (2, 2), 2).tolist() == [[True, False, True, False]]
    assert patch_masks(torch.tensor([[0, 1, 1, 0]]), 1, (2, 2), 2).tolist() == [[False, True, True, False]]
    for masks, message in (
        (
            torch.zeros(1, 4, 6),
            r"expected masks of shape \(B, N\) = \(1, 4\) \(patch masks\) or \(B, H, W\) = "
            r"\(1, 4, 4\) \(pixel masks\), got \(1, 4, 6\)",
        ),
        (torch.zeros(2, 4), r"got \(2, 4\)"),
        (torch.tensor([[0, 2, 1, 0]]), r"expected binary masks"),
        (torch.eye(4)[None] * torch.tensor([1.0, 0.0, 1.0, 0.0]), r"the mask of images \[0\] covers no patch by half"),
        (torch.zeros(1, 4, dtype=torch.bool), r"the mask of images \[0\] holds no patch"),
    ):
        with pytest.raises(CaptumSiftError, match=message):
            patch_masks(masks, 1, (2, 2), 2)


@pytest.fixture(scope="module")
def embedded():
    images, labels = default_dataset(limit=4)
    return default_model(), (images - MEAN) / STD, labels


def test_road_is_pytorch_grad_cams_and_fails_an_attribution_built_to_miss(embedded, monkeypatch):
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, y = embedded
    x, y = x[:2], y[:2]
    vit = as_vit(model)
    # per-patch occlusion (Captum's FeatureAblation) is what ROAD rewards; its negative is built to miss
    good = patch_attribution(explain("feature_ablation", vit, x, y), 16)
    percentiles = (20, 50, 80)
    ours = road_scores(vit, x, y, good, percentiles=percentiles, seed=3)
    missed = road_scores(vit, x, y, -good, percentiles=percentiles, seed=3)
    assert min(ours) > 0 > max(missed)
    # each image's value is its own: alone, or beside another image (or a NaN one), with the same seed + index
    alone = road_scores(vit, x[1:], y[1:], good[1:], percentiles=percentiles, seed=4)
    assert alone[0] == pytest.approx(ours[1], rel=1e-6)
    nan = good.clone()
    nan[1, 0] = float("nan")
    with_nan = road_scores(vit, x, y, nan, percentiles=percentiles, seed=3)
    assert with_nan[0] == pytest.approx(ours[0], rel=1e-6) and math.isnan(with_nan[1])
    flat = good.clone()
    flat[0] = 0.25  # ranks nothing: NaN, as in localisation_scores; the other image keeps its value
    level = road_scores(vit, x, y, flat, percentiles=percentiles, seed=3)
    assert math.isnan(level[0]) and level[1] == pytest.approx(ours[1], rel=1e-6)
    state = torch.random.get_rng_state()
    road_scores(vit, x[:1], y[:1], good[:1], percentiles=(50,))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left as it was
    # without the imputation noise, the value is ROADCombined's on the batch
    monkeypatch.setattr(road.NoisyLinearImputer.__init__, "__defaults__", (0.0, road.neighbors_weights))
    cams = patch_scores_to_pixels(good.double(), (2, 1, 112, 112), 16)[:, 0].float().numpy()
    with torch.no_grad():
        theirs = ROADCombined(percentiles=list(percentiles))(x, cams, [ClassifierOutputTarget(int(t)) for t in y],
                                                             model)  # fmt: skip
    np.testing.assert_allclose(road_scores(vit, x, y, good, percentiles=percentiles), theirs, rtol=1e-5)
    with pytest.raises(CaptumSiftError, match=r"expected scores of shape \(2, 49\)"):
        road_scores(vit, x, y, good[:, :48])
    with pytest.raises(CaptumSiftError, match=r"expected every ROAD percentile to be an int >= 1 and <= 99"):
        road_scores(vit, x, y, good, percentiles=(0, 50))
    with pytest.raises(CaptumSiftError, match=r"expected targets in \[0, 10\), got values in \[0, 10\]"):
        road_scores(vit, x, torch.tensor([0, 10]), good, percentiles=(50,))


def _marker_masks(positions: torch.Tensor) -> torch.Tensor:
    """Pixel masks (B, 112, 112) of a 12 px square centred in each given patch of the 7 x 7 grid."""
    masks = torch.zeros(len(positions), 112, 112, dtype=torch.bool)
    for b, p in enumerate(positions.tolist()):
        row, col = divmod(p, 7)
        masks[b, row * 16 + 2 : row * 16 + 14, col * 16 + 2 : col * 16 + 14] = True
    return masks


def test_compare_adds_the_localisation_rows_and_changes_nothing_else(embedded):
    model, x, y = embedded
    positions = torch.tensor([0, 10, 24, 48])
    plain = compare(model, x, y, methods=("rollout", "random"), steps=2, quantus_metrics=False, timing_rounds=0,
                    batch_size=2, progress=False)  # fmt: skip
    located = compare(model, x, y, methods=("rollout", "random"), steps=2, quantus_metrics=False, timing_rounds=0,
                      batch_size=2, progress=False, masks=_marker_masks(positions))  # fmt: skip
    assert {r["metric"] for r in plain.rows()} == {"deletion_auc", "insertion_auc"}
    assert {r["metric"] for r in located.rows()} == {"deletion_auc", "insertion_auc", *LOCALISATION_METRICS}
    for method in ("rollout", "random"):
        for metric in ("deletion_auc", "insertion_auc"):
            assert located.values[method][metric] == plain.values[method][metric]
    vit = as_vit(model)
    scores = torch.cat([patch_attribution(explain("rollout", vit, x[i : i + 2], y[i : i + 2]), 16) for i in (0, 2)])
    one_hot = torch.zeros(4, 49, dtype=torch.bool).scatter_(1, positions.view(-1, 1), True)
    expected = localisation_scores(scores, one_hot, k=5)
    for metric in LOCALISATION_METRICS:
        np.testing.assert_allclose(located.values["rollout"][metric], expected[metric], rtol=1e-6)
    # patch masks, pixel masks and the true patch are one ground truth
    by_patch = compare(model, x, y, methods=("rollout",), steps=2, quantus_metrics=False, timing_rounds=0,
                       progress=False, masks=one_hot.long())  # fmt: skip
    by_index = compare(model, x, y, methods=("rollout",), steps=2, quantus_metrics=False, timing_rounds=0,
                       progress=False, true_patch=positions)  # fmt: skip
    for metric in LOCALISATION_METRICS:
        assert by_patch.values["rollout"][metric] == by_index.values["rollout"][metric]
        np.testing.assert_allclose(by_patch.values["rollout"][metric], expected[metric], rtol=1e-6)
    ranks = by_index.values["rollout"]["true_patch_rank"]
    assert by_index.values["rollout"]["pointing_game"] == [float(r == 0) for r in ranks]
    with pytest.raises(CaptumSiftError, match="expected true_patch .* or masks, not both"):
        compare(model, x, y, methods=("random",), true_patch=positions, masks=one_hot, progress=False)
    with pytest.raises(
        CaptumSiftError,
        match=r"expected masks of shape \(B, N\) = \(4, 49\) \(patch masks\) or "
        r"\(B, H, W\) = \(4, 112, 112\) \(pixel masks\), got \(4, 56, 56\)",
    ):
        compare(model, x, y, methods=("random",), masks=torch.ones(4, 56, 56), progress=False)


def test_compare_road_row_and_the_table_carries_localisation(embedded):
    model, x, y = embedded
    masks = _marker_masks(torch.tensor([3, 4]))
    kwargs = {"methods": ("random",), "steps": 2, "quantus_metrics": False, "timing_rounds": 0, "progress": False}
    table = compare(model, x[:2], y[:2], masks=masks, road=(50,), **kwargs)
    assert "road (higher is better)" in str(table) and "relevance_mass_accuracy (higher is better)" in str(table)
    vit = as_vit(model)
    random = patch_attribution(explain("random", vit, x[:2], y[:2]), 16)
    assert table.values["random"]["road"] == pytest.approx(road_scores(vit, x[:2], y[:2], random, percentiles=(50,)))
    halves = compare(model, x[:1], y[:1], masks=masks[:1], road=(50,), **kwargs).merge(
        compare(model, x[1:2], y[1:2], masks=masks[1:], road=(50,), **kwargs))  # fmt: skip
    for metric in (*LOCALISATION_METRICS, "road"):
        assert len(halves.values["random"][metric]) == 2
    back = ComparisonTable.from_dict(halves.state_dict())
    assert back.values == halves.values
    with pytest.raises(CaptumSiftError, match="expected road to be True, False or a sequence of percentiles"):
        compare(model, x[:2], y[:2], masks=masks, road="yes", **kwargs)
    rows = {r["metric"]: r for r in back.rows()}
    assert rows["relevance_rank_accuracy"]["n"] == 2 and rows["road"]["better"] == "higher"


def test_a_nan_localisation_value_stays_nan_through_the_table():
    table = ComparisonTable()
    table.add("theta", "relevance_mass_accuracy", [0.5, float("nan"), 0.7])
    back = ComparisonTable.from_dict(table.merge(ComparisonTable()).state_dict())
    assert math.isnan(back.values["theta"]["relevance_mass_accuracy"][1])
    row = next(r for r in back.rows() if r["metric"] == "relevance_mass_accuracy")
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.6)  # the mean of the defined values, n says how many
