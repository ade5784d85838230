"""Property-based hostile inputs: every public function gives a correct result or a CaptumSiftError.

Never another exception, never a NaN counted as an answer, never a silently coerced value: where a
drawn number is valid (numpy and 0-d tensor numbers included), the result equals the result for the
plain Python number; where it is not (NaN, Inf, bools, strings, out of range, too large), the call
raises CaptumSiftError. Derandomised, so CI draws the same examples every run.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captum_sift import CaptumSiftError, InterrelationReport, SIFTInterrelation, ThetaSettings, analyze, count_keypoints
from captum_sift.attr import AttentionRollout, RawAttention
from captum_sift.attr.patches import patch_feature_mask, patch_scores_to_pixels
from captum_sift.faithfulness import deletion_insertion
from captum_sift.mae import KeyShareSchedule, guided_masking
from captum_sift.masking import evaluate_masking
from captum_sift.masking.apply import mask_images, num_masked, select_patches
from captum_sift.vit.adapter import as_vit

CHECK = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

NUMBERS = st.one_of(
    st.integers(-3, 40),
    st.integers(2**31, 2**70),
    st.integers(max_value=-(2**40)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e39, -1e39, 1e300, 0.5, 1.5, -0.0, 0.25, 1.0, 0.0]),
    st.integers(-3, 40).map(np.int64),
    st.floats(-2, 2, width=32).map(np.float32),
    st.floats(allow_nan=True).map(np.float64),
    st.integers(-3, 40).map(torch.tensor),
    st.floats(-2, 2).map(lambda v: torch.tensor(v)),
    st.just(None),
    st.booleans(),
    st.text(max_size=3),
    st.just(torch.tensor([1, 2])),
    st.just(np.array([0.5])),
)


def plain_int(value: object) -> int | None:
    """The int a value stands for (numpy and 0-d tensor ints included), else None."""
    if isinstance(value, torch.Tensor):
        return int(value) if value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool else None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


def plain_float(value: object) -> float | None:
    """The finite real number a value stands for (not a bool, not a string), else None."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.dim() == 0 and value.dtype != torch.bool else None
    if value is None or isinstance(value, (bool, np.bool_, str)) or not isinstance(value, (int, float, np.number)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def outcome(call):
    """('ok', result) or ('error', message); any other exception fails the test."""
    try:
        return "ok", call()
    except CaptumSiftError as exc:
        return "error", str(exc)


@functools.cache
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, embed_dim=32, num_heads=2, num_classes=3
    ).eval()


IMAGES = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
GRAY = IMAGES[:, :1]


@CHECK
@given(NUMBERS)
def test_patch_sizes(value):
    valid = plain_int(value)
    valid = valid if valid is not None and valid >= 1 and 32 % valid == 0 else None
    for fn in (lambda p: count_keypoints(GRAY[:1], p), lambda p: patch_feature_mask(32, 32, p)):
        kind, got = outcome(lambda fn=fn: fn(value))
        if valid is None:
            assert kind == "error", (value, got)
        else:
            assert kind == "ok", (value, got)
            assert torch.equal(got, fn(valid))


@CHECK
@given(NUMBERS)
def test_mask_fill(value):
    selected = torch.tensor([[True, False, False, True]] * 2)
    kind, got = outcome(lambda: mask_images(IMAGES, selected, 16, fill=value))
    number = plain_float(value)
    if number is None or abs(number) > torch.finfo(torch.float32).max:
        assert kind == "error", (value, got)
        return
    assert kind == "ok", (value, got)
    assert torch.all(got[:, :, :16, :16] == torch.tensor(number, dtype=torch.float32))
    assert torch.equal(got[:, :, :16, 16:], IMAGES[:, :, :16, 16:])


@CHECK
@given(st.one_of(st.just(torch.float32), st.just(torch.int64), st.just(torch.uint8), st.just(torch.float64)))
def test_mask_images_takes_a_bool_mask_only(dtype):
    selected = torch.tensor([[1, 0, 0, 1]] * 2).to(dtype)
    kind, got = outcome(lambda: mask_images(IMAGES, selected, 16))
    assert kind == "error", got


@CHECK
@given(NUMBERS, st.sampled_from(["top", "bottom", "random"]))
def test_select_ratio(value, mode):
    scores = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    kind, got = outcome(lambda: select_patches(scores, value, mode, torch.Generator().manual_seed(0)))
    ratio = plain_float(value)
    if ratio is None or not 0 <= ratio <= 1:
        assert kind == "error", (value, got)
        return
    assert kind == "ok", (value, got)
    assert got.dtype == torch.bool and got.sum(1).tolist() == [num_masked(ratio, 16)] * 2


@CHECK
@given(NUMBERS, NUMBERS)
def test_guided_masking_ratios(mask_ratio, key_share):
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    counts = torch.tensor([[0, 1, 2, 0] * 4] * 2)
    kind, got = outcome(lambda: guided_masking(x, counts, mask_ratio, key_share, generator=torch.Generator()))
    r, b = plain_float(mask_ratio), plain_float(key_share)
    if r is None or b is None or not (0 <= r <= 1 and 0 <= b <= 1):
        assert kind == "error", (mask_ratio, key_share, got)
        return
    if kind == "error":  # a ratio that masks no token or keeps none may be refused
        assert num_masked(r, 16) in (0, 16), (mask_ratio, key_share, got)
        return
    x_masked, mask, ids_restore = got
    n = num_masked(r, 16)
    assert mask.sum(1).tolist() == [n, n] and x_masked.shape == (2, 16 - n, 8)
    assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(16).expand(2, 16))


@CHECK
@given(st.floats(allow_nan=True, allow_infinity=True, width=32))
def test_guided_masking_noise(bad):
    x = torch.randn(1, 16, 8)
    counts = torch.tensor([[0, 1, 2, 0] * 4])
    noise = torch.rand(2, 1, 16, generator=torch.Generator().manual_seed(0))  # (2, B, N): key and non-key draws
    noise[0, 0, 3] = bad
    kind, got = outcome(lambda: guided_masking(x, counts, 0.5, 0.5, noise=noise))
    if not 0 <= bad < 1:
        assert kind == "error", (bad, got)
    else:
        assert kind == "ok" and got[1].sum() == 8


@CHECK
@given(NUMBERS, NUMBERS)
def test_key_share_schedule(start, epoch):
    kind, got = outcome(lambda: KeyShareSchedule(start=start)(epoch))
    s, e = plain_float(start), plain_int(epoch)
    if s is None or not 0 <= s <= 1 or e is None or e < 0:
        assert kind == "error", (start, epoch, got)
        return
    assert kind == "ok", (start, epoch, got)
    assert got == KeyShareSchedule(start=s)(e)


@CHECK
@given(NUMBERS, NUMBERS)
def test_theta_settings(gamma, min_keypoints):
    kind, got = outcome(lambda: ThetaSettings(gamma=gamma, min_keypoints=min_keypoints))
    g, m = plain_float(gamma), plain_int(min_keypoints)
    if g is None or g <= 0 or m is None or m < 1:
        assert kind == "error", (gamma, min_keypoints, got)
    else:
        assert kind == "ok" and got == ThetaSettings(gamma=g, min_keypoints=m)


@CHECK
@given(NUMBERS, st.sampled_from([(16, 16), (4, 4, 4), (2, 32, 32), (1, 3, 30, 32), (1, 3, 32, 32)]))
def test_scores_to_pixels(patch_size, shape):
    scores = torch.arange(4.0).view(1, 4)
    kind, got = outcome(lambda: patch_scores_to_pixels(scores, shape, patch_size))
    p = plain_int(patch_size)
    if p != 16 or shape != (1, 3, 32, 32):
        assert kind == "error", (patch_size, shape, got)
    else:
        assert kind == "ok" and got.shape == shape and float(got[0, 0, 31, 31]) == 3.0


IMAGE_TENSORS = st.one_of(
    st.sampled_from(
        [
            torch.rand(1, 3, 32, 32) * 255,
            torch.full((1, 3, 32, 32), float("nan")),
            torch.rand(1, 3, 32, 32).masked_fill(torch.rand(1, 3, 32, 32) > 0.99, float("inf")),
            (torch.rand(1, 3, 32, 32) * 255).to(torch.uint8),
            torch.rand(3, 32, 32),
            torch.rand(1, 3, 30, 32),
            torch.rand(1, 4, 32, 32),
            torch.rand(0, 3, 32, 32),
            torch.rand(1, 3, 32, 32) - 0.5,
            torch.rand(1, 3, 32, 32).double(),
            torch.rand(1, 3, 32, 32).half(),
            torch.rand(1, 3, 32, 32).bool(),
            torch.rand(1, 3, 32, 32),
        ]
    ),
    st.lists(st.integers(0, 40), min_size=0, max_size=5).map(lambda s: torch.rand(tuple(s))),
)


def _valid_pixels(x: torch.Tensor) -> bool:
    return (
        x.dim() == 4
        and x.shape[0] > 0
        and tuple(x.shape[1:]) == (3, 32, 32)
        and x.is_floating_point()
        and bool(torch.isfinite(x).all())
        and bool((x >= 0).all() and (x <= 1).all())
    )


@settings(CHECK, max_examples=30)
@given(IMAGE_TENSORS, st.sampled_from(["theta", "rollout", "raw", "analyze"]))
def test_image_tensors_into_the_attributions(images, method):
    model = tiny_model()
    calls = {
        "theta": lambda: SIFTInterrelation(model, image_space="pixel").attribute(images),
        "rollout": lambda: AttentionRollout(model, image_space="pixel").attribute(images),
        "raw": lambda: RawAttention(model, image_space="pixel").attribute(images),
        "analyze": lambda: analyze(model, images, image_space="pixel"),
    }
    kind, got = outcome(calls[method])
    if kind == "ok" and images.shape[0] == 0 and images.dim() == 4 and images.shape[1:] == (3, 32, 32):
        assert (got.num_images == 0) if method == "analyze" else (got.shape == images.shape)
        return  # an empty batch: an empty answer is a correct one
    if not _valid_pixels(images):
        # values a little outside [0, 1] may be a perturbation's noise (clipped for the keypoints, documented);
        # pixels of another float dtype are cast to the model's: both may give an answer, which must be sound
        near = images.is_floating_point() and _valid_pixels(images.float().clamp(0, 1)) and images.abs().max() < 2
        if not near:
            assert kind == "error", (tuple(images.shape), images.dtype, got)
            return
        if kind == "error":
            return
    assert kind == "ok", (tuple(images.shape), images.dtype, got)
    if method == "analyze":
        assert got.num_images == images.shape[0]
    else:
        assert got.shape == images.shape and bool(torch.isfinite(got).all())


@settings(CHECK, max_examples=25)
@given(NUMBERS, NUMBERS)
def test_evaluate_masking_numbers(ratio, seed):
    model = tiny_model()
    labels = torch.tensor([0, 2])
    kind, got = outcome(
        lambda: evaluate_masking(
            model, IMAGES, labels, ratios=[ratio], modes=["random"], seed=seed, image_space="pixel", progress=False
        )
    )
    r, s = plain_float(ratio), plain_int(seed)
    if r is None or not 0 <= r <= 1 or s is None:
        assert kind == "error", (ratio, seed, got)
        return
    if kind == "error":  # a seed beyond what a generator takes may be refused
        assert s < 0 or s >= 2**63, (ratio, seed, got)
        return
    accuracy = got.accuracy("random", r)
    assert 0 <= accuracy <= 1


@settings(CHECK, max_examples=20)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=3))
def test_evaluate_masking_labels(values):
    model = tiny_model()
    labels = torch.tensor(values + [0.0] * (2 - len(values)))[:2]
    kind, got = outcome(
        lambda: evaluate_masking(
            model, IMAGES, labels, ratios=[0.5], modes=["top"], image_space="pixel", progress=False
        )
    )
    assert kind == "error", (values, got)  # float labels are refused, whatever their values
    whole = labels.round()
    if bool(torch.isfinite(labels).all()) and torch.equal(whole, labels) and bool(((whole >= 0) & (whole < 3)).all()):
        got = evaluate_masking(
            model, IMAGES, whole.long(), ratios=[0.5], modes=["top"], image_space="pixel", progress=False
        )
        assert 0 <= got.accuracy("top", 0.5) <= 1


@settings(CHECK, max_examples=20)
@given(st.integers(0, 3), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_deletion_insertion_refuses_non_finite_scores(where, bad):
    vit = as_vit(tiny_model())
    scores = torch.rand(1, 4)
    scores[0, where] = bad
    kind, got = outcome(lambda: deletion_insertion(vit, IMAGES[:1], torch.tensor([0]), scores, steps=4))
    assert kind == "error", got


def _report_json(tmp_path) -> dict:
    report = analyze(tiny_model(), IMAGES, image_space="pixel")
    report.save_json(tmp_path / "r.json")
    return json.loads((tmp_path / "r.json").read_text())


def _leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(data, list) and data:
        yield from _leaves(data[0], path + (0,))
    else:
        yield path


@pytest.fixture(scope="module")
def report_json(tmp_path_factory):
    return _report_json(tmp_path_factory.mktemp("report"))


@settings(CHECK, max_examples=40)
@given(st.data(), st.sampled_from([float("nan"), 1e300, -1.0, 5.0, "x", None, [], {}, 2**70, True]))
def test_damaged_report_json(report_json, tmp_path_factory, data, bad):
    """One leaf of a written report replaced: a CaptumSiftError, or a report that still holds only valid numbers."""
    leaves = list(_leaves(report_json))
    path = data.draw(st.sampled_from(leaves))
    damaged = json.loads(json.dumps(report_json))
    node = damaged
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    file = tmp_path_factory.mktemp("damaged") / "r.json"
    file.write_text(json.dumps(damaged))
    kind, got = outcome(lambda: InterrelationReport.load_json(file))
    if kind == "ok":
        for name in ("kk", "nk"):
            curve = got.layer_mean(name)
            assert bool(((curve >= 0) & (curve <= 1) | torch.isnan(curve)).all()), (path, bad)


def test_deeply_nested_report_json(tmp_path):
    file = tmp_path / "r.json"
    file.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CaptumSiftError):
        InterrelationReport.load_json(file)
