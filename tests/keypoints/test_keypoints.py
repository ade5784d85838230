"""SIFT keypoints and per-patch counts (SPEC §1): hand-made images with known answers."""

import pytest
import torch
from helpers import blob_image, ring_image

from captum_sift import CaptumSiftError, KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts
from captum_sift.keypoints._pyramid import Workspace, _pad_hw, _reflect101_index, num_octaves
from captum_sift.keypoints.params import SiftParams


@pytest.mark.parametrize("channels", [1, 3])
def test_blank_image_has_no_keypoint(device, channels):
    images = torch.full((2, channels, 64, 96), 0.5, device=device)
    kps = detect_keypoints(images)
    assert [k.shape for k in kps] == [(0, 4), (0, 4)]
    counts = count_keypoints(images, 16)
    assert counts.shape == (2, 4, 6) and counts.dtype == torch.long and counts.device.type == device.type
    assert int(counts.sum()) == 0


def test_single_blob_gives_keypoints_in_its_patch_only(device):
    # Blob centred in patch (row 1, col 2) of a 64x64 image with 16-px patches.
    image = blob_image(64, centre=(24.0, 40.0)).to(device)
    counts = count_keypoints(image, 16)[0]
    assert counts[1, 2] >= 1
    counts[1, 2] = 0
    assert int(counts.sum()) == 0
    kp = detect_keypoints(image)[0]
    # The refined centre is the blob centre (OpenCV reports the doubled-image
    # sample / 2, a bias of at most a quarter pixel).
    assert torch.allclose(kp[:, :2].mean(0).cpu(), torch.tensor([40.0, 24.0]), atol=0.5)
    # The DoG scale of a Gaussian blob of sigma s is about s (Lindeberg: sigma = s).
    assert 1.5 < float(kp[:, 2].max()) < 4.0


def test_edge_rejection_removes_edge_responses():
    image = ring_image()
    with_rejection = len(detect_keypoints(image)[0])
    without = len(detect_keypoints(image, edge_threshold=1e6)[0])
    assert without >= 50
    assert with_rejection <= without // 20


def test_contrast_threshold_removes_faint_blob():
    faint = 0.2 * blob_image(64, (32.0, 32.0))
    assert len(detect_keypoints(faint)[0]) >= 1
    assert len(detect_keypoints(faint, contrast_threshold=0.5)[0]) == 0


def test_border_assignment_is_floor_and_clamped():
    kps = [
        torch.tensor([[15.999, 0.0], [16.0, 0.0], [-0.4, 31.6], [31.7, 31.9], [32.2, 15.0], [0.0, 16.0]]),
        torch.zeros(0, 4),
    ]
    counts = keypoints_to_counts(kps, (32, 32), 16)
    expected = torch.tensor([[[1, 2], [2, 1]], [[0, 0], [0, 0]]])
    # (15.999, 0) -> (0, 0); (16, 0) -> (0, 1); (-0.4, 31.6) -> (1, 0) clamped;
    # (31.7, 31.9) -> (1, 1); (32.2, 15) -> (0, 1) clamped; (0, 16) -> (1, 0).
    assert torch.equal(counts, expected)


def test_counts_match_keypoints_and_batch_equals_singles():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 48, 32)
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1)  # some structure, still in [0, 1]
    kps = detect_keypoints(images)
    singles = [detect_keypoints(images[i : i + 1])[0] for i in range(3)]
    chunked = detect_keypoints(images, chunk_size=1)
    for a, b, c in zip(kps, singles, chunked, strict=True):
        # The convolution may sum in another order for another batch size:
        # the same keypoints, positions equal to 1e-3 px.
        assert a.shape == b.shape == c.shape and a.shape[0] > 0
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3) and torch.allclose(a, c, rtol=1e-4, atol=1e-3)
    counts = count_keypoints(images, 16)
    assert counts.shape == (3, 3, 2)
    assert torch.equal(counts, keypoints_to_counts(kps, (48, 32), 16))
    assert counts.sum(dim=(1, 2)).tolist() == [k.shape[0] for k in kps]


def test_output_dtype_and_device(device):
    image = blob_image(32, (16.0, 16.0)).to(device)
    kp32 = detect_keypoints(image)[0]
    kp64 = detect_keypoints(image.double())[0]
    assert kp32.dtype == torch.float32 and kp64.dtype == torch.float64
    assert kp32.device.type == device.type and kp64.device.type == device.type
    assert torch.allclose(kp32.double(), kp64, atol=1e-3)


def test_min_keypoints_zeroes_counts_below_the_bar():
    from captum_sift.data import sample_images

    image = sample_images(["astronaut"], size=64)
    t1 = count_keypoints(image, 16)
    t3 = count_keypoints(image, 16, min_keypoints=3)
    assert torch.equal(t3, torch.where(t1 >= 3, t1, torch.zeros_like(t1)))
    assert int((t1 > 0).sum()) > int((t3 > 0).sum()) > 0


@pytest.mark.parametrize("size", [(5, 7, 2, 3), (3, 2, 1, 9), (20, 11, 4, 12), (1, 6, 2, 2), (8, 8, 3, 0)])
def test_reflect101_padding_equals_index_gather(size):
    h, w, b, pad = size
    x = torch.randn(h, w, b)
    rows, cols = _reflect101_index(h, pad, x.device), _reflect101_index(w, pad, x.device)
    expected = x.index_select(0, rows).index_select(1, cols)
    assert torch.equal(_pad_hw(x, pad), expected) and torch.equal(_pad_hw(x, pad, Workspace()), expected)
    if h > 1 and w > 1:  # gfedcb|abcdefgh|gfedcba by hand
        assert _pad_hw(torch.arange(4.0).view(1, 4, 1).expand(2, 4, 1).contiguous(), 2)[0, :, 0].tolist() == [
            2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0,
        ]  # fmt: skip


def test_octave_count_follows_opencv():
    p = SiftParams()
    assert num_octaves(224, 224, p) == 7  # round(log2(448) - 2) = 7
    assert num_octaves(32, 48, p) == 4


def test_keypoint_counter_module():
    counter = KeypointCounter(16, min_keypoints=2, edge_threshold=12.0)
    assert "patch_size=16" in repr(counter) and "edge_threshold=12.0" in repr(counter)
    image = blob_image(64, (24.0, 40.0)).expand(1, 3, 64, 64)
    assert torch.equal(counter(image), count_keypoints(image, 16, min_keypoints=2, edge_threshold=12.0))


@pytest.mark.parametrize(
    ("images", "patch", "message"),
    [
        (torch.zeros(3, 224), 16, r"expected images of shape \(B, C, H, W\), got \(3, 224\)"),
        (torch.zeros(1, 2, 32, 32), 16, r"1 or 3 channels.*got C=2"),
        (torch.zeros(1, 3, 40, 32), 16, r"multiples of patch_size=16, got H=40, W=32"),
        (torch.zeros(1, 3, 32, 32), 0, r"patch_size to be an int >= 1, got 0"),
        (torch.full((1, 3, 32, 32), float("nan")), 16, r"finite images, got 3072 NaN or Inf"),
        (torch.tensor([0.0, float("inf")]).repeat(512).view(1, 1, 32, 32), 16, "finite images"),
        (torch.full((1, 3, 32, 32), 200.0), 16, r"values in \[0, 1\], got values in \[200, 200\].*divide it by 255"),
        (torch.full((1, 3, 32, 32), -0.5), 16, r"values in \[0, 1\]"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 16, r"floating-point images.*float\(\) / 255"),
    ],
)
def test_bad_input_raises_clear_error(images, patch, message):
    with pytest.raises(CaptumSiftError, match=message):
        count_keypoints(images, patch)
    if patch == 16 and "multiples" not in message:
        with pytest.raises(CaptumSiftError, match=message):
            detect_keypoints(images)


def test_bad_arguments_raise():
    image = torch.zeros(1, 1, 32, 32)
    with pytest.raises(CaptumSiftError, match="backend"):
        count_keypoints(image, 16, backend="sift")
    with pytest.raises(CaptumSiftError, match="min_keypoints"):
        count_keypoints(image, 16, min_keypoints=0)
    with pytest.raises(CaptumSiftError, match="unknown detector argument"):
        count_keypoints(image, 16, sigmaa=1.6)
    with pytest.raises(CaptumSiftError, match="sigma to be a finite number > 0"):
        detect_keypoints(image, sigma=-1.0)
    assert issubclass(CaptumSiftError, ValueError)


def test_empty_batch():
    empty = torch.zeros(0, 3, 64, 32)
    counts = count_keypoints(empty, 16)
    assert counts.shape == (0, 4, 2) and counts.dtype == torch.long
    assert detect_keypoints(empty) == []


def test_sift_params_are_the_one_place_of_the_defaults():
    import inspect

    from captum_sift.keypoints.params import OPTIONS

    assert OPTIONS == {"n_octave_layers": 3, "sigma": 1.6, "contrast_threshold": 0.04, "edge_threshold": 10.0,
                       "precise_upscale": False, "quantize": True}  # fmt: skip
    for fn in (detect_keypoints, KeypointCounter):
        parameters = inspect.signature(fn).parameters
        assert {name: parameters[name].default for name in OPTIONS} == OPTIONS
        assert parameters["backend"].default == "lowe"
    assert SiftParams().options() == OPTIONS and SiftParams().double_image
    assert KeypointCounter(16, sigma=2).params == SiftParams(sigma=2.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_octave_layers": 0}, r"n_octave_layers to be an int >= 1, got 0"),
        ({"n_octave_layers": 2.5}, r"n_octave_layers"),
        ({"sigma": 0.0}, r"sigma to be a finite number > 0"),
        ({"contrast_threshold": -0.1}, r"contrast_threshold to be a finite number >= 0"),
        ({"edge_threshold": float("nan")}, r"edge_threshold"),
    ],
)
def test_sift_params_refuse_bad_values(options, message):
    with pytest.raises(CaptumSiftError, match=message):
        SiftParams(**options)
    with pytest.raises(CaptumSiftError, match=message):
        KeypointCounter(16, **options)
