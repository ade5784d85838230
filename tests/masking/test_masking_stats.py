"""The 95 % Wilson interval and the exact McNemar test, against hand-worked values."""

import math

import numpy as np
import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.masking.stats import Z95, mcnemar_exact, wilson_interval


def wilson_by_quadratic(correct: int, total: int) -> tuple[float, float]:
    """The Wilson bounds as the roots p of (p_hat - p)^2 = Z95^2 p (1 - p) / n (the interval's definition)."""
    p_hat, z2 = correct / total, Z95**2
    a, b, c = 1 + z2 / total, -(2 * p_hat + z2 / total), p_hat**2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def test_z95_is_the_normal_quantile():
    assert 0.5 * math.erfc(-Z95 / math.sqrt(2)) == pytest.approx(0.975, abs=1e-15)


def test_wilson_interval_by_hand():
    # 0 of 10: [0, z^2 / (n + z^2)] = [0, 3.841459 / 13.841459]
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(3.841458820694124 / 13.841458820694124, abs=1e-15)
    assert wilson_interval(10, 10) == pytest.approx((1 - high, 1.0), abs=1e-15)
    assert wilson_interval(8, 10) == pytest.approx((0.4901624715, 0.9433178485), abs=1e-10)
    for correct, total in [(8, 10), (1, 3), (37, 50), (500, 1000)]:
        assert wilson_interval(correct, total) == pytest.approx(wilson_by_quadratic(correct, total), abs=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(np.int64(8), torch.tensor(10)) == wilson_interval(8, 10)


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 4) == pytest.approx(2 * (1 + 5) / 2**5)  # 0.375
    assert mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 2**10)  # 0.109375
    assert mcnemar_exact(0, 7) == pytest.approx(2 / 2**7)
    assert mcnemar_exact(3, 3) == 1.0  # 2 * 42 / 64 > 1: clipped
    # a long tail, summed in log space: 2 * P(X <= 100) for X ~ Bin(1000, 1/2)
    assert mcnemar_exact(100, 900) == pytest.approx(2 * sum(math.comb(1000, i) for i in range(101)) / 2**1000, rel=1e-9)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: wilson_interval(-1, 3), "expected correct to be an int >= 0 and <= 3, got -1"),
        (lambda: wilson_interval(4, 3), "expected correct to be an int >= 0 and <= 3, got 4"),
        (lambda: wilson_interval(1, 2.0), "expected total to be an int >= 0, got 2.0"),
        (lambda: wilson_interval(True, 2), "expected correct to be an int"),
        (lambda: mcnemar_exact(-1, 2), "expected worse to be an int >= 0, got -1"),
        (lambda: mcnemar_exact(1, 0.5), "expected better to be an int >= 0, got 0.5"),
    ],
)
def test_bad_counts_raise(call, message):
    with pytest.raises(CaptumSiftError, match=message):
        call()
