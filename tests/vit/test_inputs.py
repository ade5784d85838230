"""Batch: model input, pixels, grid and counts of one batch, checked once; to_model_and_pixels by hand."""

import dataclasses

import pytest
import timm
import torch

from captum_sift import CaptumSiftError
from captum_sift.vit import Batch, as_vit, to_model_and_pixels

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
    return as_vit(model.eval(), mean=MEAN, std=STD)


def _photo(batch=2, height=32, width=48):
    """Pixels spanning [0, 1] in every channel (no narrow-band warning)."""
    ramp = torch.linspace(0, 1, height * width).view(1, 1, height, width)
    return ramp.expand(batch, 3, height, width).flip(-1).contiguous() * 0.5 + torch.rand(batch, 3, height, width) * 0.5


def test_pixel_batch_by_hand(vit):
    pixels = _photo()
    counts = torch.arange(2 * 6).view(2, 2, 3)  # (B, Gh, Gw)
    batch = Batch.build(vit, pixels, "pixel", counts)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(batch.model_input, (pixels - mean) / std)
    assert torch.equal(batch.pixels, pixels)
    assert batch.grid == (2, 3) and batch.num_patches == 6
    assert batch.keypoint_counts.dtype == torch.long
    assert batch.keypoint_counts.tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]


def test_model_batch_by_hand_and_without_pixels(vit):
    pixels = _photo()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (pixels - mean) / std
    batch = Batch.build(vit, x, "model")
    assert torch.equal(batch.model_input, x) and batch.keypoint_counts is None
    torch.testing.assert_close(batch.pixels, (x * std + mean).clamp(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(batch.pixels, pixels, rtol=0, atol=1e-6)
    assert Batch.build(vit, x, "model", need_pixels=False).pixels is None


def test_batch_holds_what_to_model_and_pixels_gives(vit):
    pixels = _photo(batch=3, height=32, width=32)
    for space, images in (("pixel", pixels), ("model", to_model_and_pixels(vit, pixels, "pixel")[0])):
        model_input, got_pixels = to_model_and_pixels(vit, images, space)
        batch = Batch.build(vit, images, space)
        assert torch.equal(batch.model_input, model_input) and torch.equal(batch.pixels, got_pixels)


def test_float_counts_become_int64_and_with_counts_checks(vit):
    batch = Batch.build(vit, _photo(batch=1), "pixel")
    counts = batch.with_counts(torch.tensor([[0.0, 2.0, 1.0, 0.0, 0.0, 3.0]])).keypoint_counts
    assert counts.dtype == torch.long and counts.tolist() == [[0, 2, 1, 0, 0, 3]]
    assert batch.keypoint_counts is None  # frozen: a new batch
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.grid = (1, 1)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (torch.zeros(2, 5), r"\(B, N\) = \(2, 6\).*got \(2, 5\)"),
        (torch.zeros(1, 6), r"\(B, N\) = \(2, 6\).*got \(1, 6\)"),
        (torch.full((2, 6), 0.5), "integral"),
        (torch.full((2, 6), -1), ">= 0"),
        (torch.full((2, 6), float("nan")), "finite"),
        ([[0] * 6] * 2, "torch.Tensor, got list"),
    ],
)
def test_bad_counts_are_refused(vit, counts, message):
    with pytest.raises(CaptumSiftError, match=message):
        Batch.build(vit, _photo(), "pixel", counts)


def test_shape_channels_and_grid_are_checked_before_values(vit):
    with pytest.raises(CaptumSiftError, match=r"\(B, C, H, W\), got \(3, 32, 32\)"):
        Batch.build(vit, torch.rand(3, 32, 32), "pixel")
    with pytest.raises(CaptumSiftError, match="3-channel images"):
        Batch.build(vit, torch.rand(1, 1, 32, 32), "pixel")
    with pytest.raises(CaptumSiftError, match="multiples of its patch size 16, got H=40"):
        Batch.build(vit, torch.rand(1, 3, 40, 32) * 255, "pixel")  # the grid, before the 0..255 values
    with pytest.raises(CaptumSiftError, match="0..255 image"):
        Batch.build(vit, torch.rand(1, 3, 32, 32) * 255, "pixel")
    with pytest.raises(CaptumSiftError, match="image_space 'model' or 'pixel'"):
        Batch.build(vit, _photo(), "raw")


def test_pixels_of_a_float64_model_are_normalised_in_its_dtype(vit):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1).double()
    batch = Batch.build(as_vit(model), _photo(batch=1), "pixel")
    assert batch.model_input.dtype == torch.float64 and batch.pixels.dtype == torch.float32


def test_the_stream_reads_a_batch_as_its_model_input(vit):
    batch = Batch.build(vit, _photo(width=32), "pixel")
    from_batch = list(vit.iter_attention(batch))
    from_tensor = list(vit.iter_attention(batch.model_input))
    assert [i for i, _ in from_batch] == [0, 1]
    for (_, a), (_, b) in zip(from_batch, from_tensor, strict=True):
        assert torch.equal(a, b)
