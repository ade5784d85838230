"""Eqs. 2-5 against a slow, obviously correct loop implementation written here."""

import math

import numpy as np
import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.theta.functional import (
    check_counts,
    focus_index,
    interrelation,
    patch_block,
    patch_theta,
    theta_from_weights,
    theta_weights,
)


def loop_theta(attn, counts, gamma=1.0, weighted=True, include_self=True, min_keypoints=1):
    """Eq. 2-3 for one head: attn (N, N) float64, counts list of N ints."""
    n = attn.shape[0]
    out = []
    for i in range(n):
        line = gamma * sum(float(attn[i, j]) for j in range(n)) / n
        s = [j for j in range(n) if float(attn[i, j]) >= line and (include_self or j != i)]
        key = [j for j in s if counts[j] >= min_keypoints]
        non = [j for j in s if counts[j] < min_keypoints]
        if not s:
            out.append(float("nan"))
        elif weighted:
            tk = sum(counts[j] for j in key)
            out.append(tk / (len(non) + tk))
        else:
            out.append(len(key) / len(s))
    return out


def loop_classes(theta, counts, min_keypoints=1):
    key = [t for t, c in zip(theta, counts, strict=True) if c >= min_keypoints and not math.isnan(t)]
    non = [t for t, c in zip(theta, counts, strict=True) if c < min_keypoints and not math.isnan(t)]
    kk = sum(key) / len(key) if key else float("nan")
    nk = sum(non) / len(non) if non else float("nan")
    return kk, 1 - kk, nk, 1 - nk


def loop_focus(attn):
    n = attn.shape[0]
    deltas = []
    for i in range(n):
        row = [float(v) for v in attn[i]]
        lo, hi = min(row), max(row)
        a = [1.0] * n if hi == lo else [(v - lo) / (hi - lo) for v in row]
        total = sum(a)
        deltas.append(-sum((v / total) * math.log(v / total) for v in a if v > 0))
    return sum(deltas) / n


def random_attention(batch, heads, n, seed, dyadic=False):
    g = torch.Generator().manual_seed(seed)
    if dyadic:
        # Values k/64 so that row means are exact: ties at the detection line are real ties.
        raw = torch.randint(0, 4, (batch, heads, n, n), generator=g).double()
        return raw / 64.0
    return torch.softmax(torch.randn(batch, heads, n, n, generator=g, dtype=torch.float64) * 2, dim=-1)


COUNTS = torch.tensor([[0, 3, 1, 0, 0, 2, 0, 5, 1], [0] * 9, [1, 1, 2, 1, 3, 1, 1, 1, 4], [2, 0, 0, 0, 0, 0, 0, 0, 1]])


@pytest.mark.parametrize("gamma", [1.0, 0.5, 1.7])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("dyadic", [False, True])
def test_theta_and_classes_equal_loops(gamma, weighted, include_self, dyadic):
    attn = random_attention(4, 3, 9, seed=7, dyadic=dyadic)
    theta = patch_theta(attn, COUNTS, gamma=gamma, weighted=weighted, include_self=include_self)
    rel = interrelation(theta, COUNTS)
    for b in range(4):
        for h in range(3):
            expected = loop_theta(attn[b, h], COUNTS[b].tolist(), gamma, weighted, include_self)
            torch.testing.assert_close(theta[b, h], torch.tensor(expected, dtype=torch.float64), equal_nan=True)
            kk, kn, nk, nn = loop_classes(expected, COUNTS[b].tolist())
            got = [float(rel.kk[b, h]), float(rel.kn[b, h]), float(rel.nk[b, h]), float(rel.nn[b, h])]
            for x, y in zip(got, [kk, kn, nk, nn], strict=True):
                assert (math.isnan(x) and math.isnan(y)) or abs(x - y) < 1e-12


def test_ties_at_the_detection_line_are_attended():
    attn = torch.tensor([[[[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.125, 0.125], [0, 0, 0.5, 0.5], [0.25] * 4]]])
    counts = torch.tensor([[2, 0, 1, 0]])
    theta = patch_theta(attn, counts)[0, 0]
    # row 0: all tie with the mean 0.25 -> S = {0,1,2,3}: (2 + 1) / (2 + 3)
    # row 1: S = {0, 1} (0.25 ties): 2 / (1 + 2); row 2: S = {2, 3}: 1 / (1 + 1)
    assert theta.tolist() == pytest.approx([3 / 5, 2 / 3, 1 / 2, 3 / 5])
    # gamma > 1 on a uniform row: S empty -> NaN, and NaN never becomes 0
    theta = patch_theta(attn, counts, gamma=1.5)[0, 0]
    # row 1: line 0.375 -> S = {0}: 2 / 2; row 2: S = {2, 3}: 1 / (1 + 1)
    assert math.isnan(theta[0]) and math.isnan(theta[3]) and theta[1:3].tolist() == [1.0, 0.5]
    rel = interrelation(theta.view(1, 1, 4), counts)
    assert float(rel.kk) == 0.5  # Key starts 0 (NaN, left out) and 2 (0.5)
    assert float(rel.nk) == 1.0  # Non-key starts 1 (1.0) and 3 (NaN, left out)
    assert math.isnan(float(interrelation(torch.full((1, 1, 4), float("nan")), counts).kk))


def test_min_keypoints_moves_patches_to_non_key():
    attn = random_attention(1, 2, 9, seed=3)
    counts = COUNTS[:1]
    theta = patch_theta(attn, counts, min_keypoints=2)
    for h in range(2):
        expected = loop_theta(attn[0, h], counts[0].tolist(), min_keypoints=2)
        torch.testing.assert_close(theta[0, h], torch.tensor(expected, dtype=torch.float64))
    rel = interrelation(theta, counts, min_keypoints=2)
    kk, _, nk, _ = loop_classes(loop_theta(attn[0, 0], counts[0].tolist(), min_keypoints=2), counts[0].tolist(), 2)
    assert float(rel.kk[0, 0]) == pytest.approx(kk) and float(rel.nk[0, 0]) == pytest.approx(nk)


def test_image_without_keypoints_gives_nan_kk_not_zero():
    attn = random_attention(4, 3, 9, seed=1)
    rel = interrelation(patch_theta(attn, COUNTS), COUNTS)
    assert torch.isnan(rel.kk[1]).all() and torch.isnan(rel.kn[1]).all()
    assert (rel.nk[1] == 0).all()  # no Key target anywhere: θ_i = 0 for every start
    assert torch.isnan(rel.nk[2]).all()  # every patch is Key: no Non-key start


def test_counts_as_grid_or_integral_floats_give_the_same_theta():
    attn = random_attention(4, 3, 9, seed=2)
    ref = patch_theta(attn, COUNTS)
    torch.testing.assert_close(patch_theta(attn, COUNTS.view(4, 3, 3)), ref)
    torch.testing.assert_close(patch_theta(attn, COUNTS.double()), ref)


def test_focus_index_equals_loop_and_constant_rows_are_uniform():
    attn = random_attention(2, 3, 9, seed=5)
    attn[0, 0, 4] = 1 / 9  # a constant row -> uniform, delta = log 9
    got = focus_index(attn)
    for b in range(2):
        for h in range(3):
            assert float(got[b, h]) == pytest.approx(loop_focus(attn[b, h]), rel=1e-10)
    torch.testing.assert_close(focus_index(attn, normalized=True), got / math.log(9))
    one_hot = torch.eye(9, dtype=torch.float64).view(1, 1, 9, 9)
    assert float(focus_index(one_hot)) == 0.0
    uniform = torch.full((1, 1, 9, 9), 1 / 9, dtype=torch.float64)
    assert float(focus_index(uniform)) == pytest.approx(math.log(9))


def test_scaling_a_row_changes_nothing():
    attn = random_attention(2, 2, 9, seed=4)
    scaled = attn * torch.rand(2, 2, 9, 1, dtype=torch.float64).add(0.5)
    torch.testing.assert_close(patch_theta(scaled, COUNTS[:2]), patch_theta(attn, COUNTS[:2]))
    torch.testing.assert_close(focus_index(scaled), focus_index(attn))


def test_patch_block_drops_prefix_tokens():
    attn = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    assert torch.equal(patch_block(attn, 2), attn[:, :, 2:, 2:])
    assert torch.equal(patch_block(attn, np.int64(1)), attn[:, :, 1:, 1:])


def test_check_counts_flattens_a_grid_and_keeps_the_dtype():
    grid = torch.tensor([[[1, 0], [2, 0]], [[0, 0], [0, 5]]])
    assert torch.equal(check_counts(grid, 2, 4), torch.tensor([[1, 0, 2, 0], [0, 0, 0, 5]]))
    floats = check_counts(torch.tensor([[1.0, 0.0, 3.0]]), 1, 3)
    assert floats.dtype == torch.float32 and floats.tolist() == [[1.0, 0.0, 3.0]]


def test_theta_from_weights_is_patch_theta_without_its_checks():
    attn = random_attention(2, 3, 9, seed=5)
    for weighted, gamma, include_self in ((True, 1.0, True), (False, 1.3, False)):
        weights = theta_weights(COUNTS[:2].double(), weighted=weighted, min_keypoints=2)
        # Key patches (t >= 2) weigh [t, t] weighted, [1, 1] unweighted; Non-key patches [0, 1]
        key = COUNTS[:2].double() >= 2
        expected_key = torch.where(key, COUNTS[:2].double() if weighted else torch.ones(2, 9, dtype=torch.float64), 0)
        assert torch.equal(weights[:, 0, :, 0], expected_key)
        assert torch.equal(weights[:, 0, :, 1], torch.where(key, expected_key, 1))
        torch.testing.assert_close(
            theta_from_weights(attn, weights, gamma, include_self),
            patch_theta(attn, COUNTS[:2], gamma=gamma, weighted=weighted, include_self=include_self, min_keypoints=2),
            rtol=0, atol=0, equal_nan=True,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: patch_block(torch.rand(2, 3, 5), 1), r"\(B, heads, T, T\), got \(2, 3, 5\)"),
        (lambda: patch_block(torch.rand(2, 3, 5, 4), 1), r"\(B, heads, T, T\), got \(2, 3, 5, 4\)"),
        (lambda: patch_block(torch.rand(1, 1, 5, 5), 5), "fewer prefix tokens"),
        (lambda: patch_block(torch.rand(1, 1, 5, 5), True), "num_prefix_tokens to be an int >= 0, got True"),
        (lambda: patch_block(torch.rand(1, 1, 5, 5), -1), "num_prefix_tokens to be an int >= 0, got -1"),
        (lambda: check_counts([[1, 0]], 1, 2), "keypoint_counts to be a torch.Tensor, got list"),
        (lambda: check_counts(torch.ones(1, 2, dtype=torch.bool), 1, 2), "real-valued keypoint_counts"),
        (lambda: patch_theta(torch.rand(2, 1, 4, 4), torch.zeros(2, 5)), r"\(B, N\) = \(2, 4\).*got \(2, 5\)"),
        (lambda: patch_theta(torch.rand(2, 1, 4, 4), torch.zeros(3, 4)), r"got \(3, 4\)"),
        (lambda: patch_theta(torch.rand(1, 1, 4, 4), torch.tensor([[0, -1, 0, 0]])), "keypoint_counts >= 0"),
        (lambda: patch_theta(torch.rand(1, 1, 4, 4), torch.tensor([[0, 0.5, 0, 0]])), "integral"),
        (lambda: patch_theta(torch.rand(1, 1, 4, 4), torch.tensor([[0, float("nan"), 0, 0]])), "NaN"),
        (lambda: patch_theta(torch.rand(1, 1, 4, 4), torch.zeros(1, 4), gamma=0.0), r"gamma > 0, got 0.0"),
        (lambda: patch_theta(torch.rand(1, 1, 4, 4), torch.zeros(1, 4), min_keypoints=0), "min_keypoints"),
        (lambda: interrelation(torch.rand(1, 4), torch.zeros(1, 4)), r"theta of shape \(B, heads, N\)"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(CaptumSiftError, match=message):
        call()
