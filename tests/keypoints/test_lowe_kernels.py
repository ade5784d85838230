"""The Lowe detector's eager and native kernels: extrema, refinement, blur, octave pass, base image (SPEC §1)."""

import math
import shutil

import pytest
import torch

from captum_sift import detect_keypoints
from captum_sift.keypoints import _extrema, _native, _pyramid
from captum_sift.keypoints._extrema import extrema_eager
from captum_sift.keypoints._pyramid import Workspace, _reflect101_index
from captum_sift.keypoints.params import SiftParams


def _brute_force_extrema(dog: torch.Tensor, threshold: float) -> set:
    expected = set()
    s_n, h, w, b_n = dog.shape
    for s in range(1, s_n - 1):
        for r in range(5, h - 5):
            for c in range(5, w - 5):
                for b in range(b_n):
                    v = float(dog[s, r, c, b])
                    cube = dog[s - 1 : s + 2, r - 1 : r + 2, c - 1 : c + 2, b]
                    if (v > threshold and v >= float(cube.max())) or (v < -threshold and v <= float(cube.min())):
                        expected.add((s, r, c, b))
    return expected


@pytest.fixture
def native():
    """The native kernels: skipped only where no C compiler exists; where one does, they must build."""
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine: the eager path is tested alone")
    assert _native.library() is not None, "the native kernels must build where a C compiler exists"
    return _native


def _extrema_of(path: str, dog: torch.Tensor, threshold: float) -> torch.Tensor:
    """The extremum search of either path, as (n, 4) [layer, r, c, image] rows."""
    if path == "eager":
        return extrema_eager(dog, threshold, dog.shape[0] - 2, Workspace())
    return torch.stack(torch.unravel_index(_native.extrema(dog, threshold, 5), dog.shape), 1)


@pytest.mark.parametrize(
    ("path", "dtype"), [("eager", torch.float32), ("eager", torch.float64), ("native", torch.float32)]
)
def test_extrema_equal_brute_force(path, dtype, request):
    if path == "native":
        request.getfixturevalue("native")
    torch.manual_seed(1)
    # ties included (the test is non-strict); a flat-ish stack has many candidates for the gathered rounds
    for shape, scale in (((5, 17, 19, 2), 1.0), ((6, 23, 14, 3), 0.4), ((5, 12, 40, 1), 1.0)):
        dog = (torch.randn(*shape) * scale).round(decimals=1).to(dtype)
        found = _extrema_of(path, dog, 0.3)
        assert found.tolist() == sorted(found.tolist())  # ordered as the dense mask's nonzero
        expected = _brute_force_extrema(dog, 0.3)
        assert {tuple(r) for r in found.tolist()} == expected and len(expected) > 0


def test_native_extrema_with_more_candidates_than_its_first_buffer(native):
    dog = torch.randn(5, 64, 64, 4, generator=torch.Generator().manual_seed(2))  # noise: ~7 % are extrema
    found = native.extrema(dog, 0.0, 5)
    assert found.numel() > max(1024, dog.numel() // 64)  # the first guess of the output size was too small
    flat = extrema_eager(dog, 0.0, 3, Workspace())
    assert torch.equal(found, ((flat[:, 0] * 64 + flat[:, 1]) * 64 + flat[:, 2]) * 4 + flat[:, 3])


def _photo_dog(size: int = 96, images: int = 2) -> torch.Tensor:
    """The octave-0 DoG stack (5, 2 size, 2 size, b) of real photos, from the eager blur."""
    from captum_sift.data import SAMPLE_PHOTOS, sample_images

    p = SiftParams()
    base = _pyramid.initial_image(sample_images(list(SAMPLE_PHOTOS[:images]), size=size), p)
    kernels = [_pyramid.gaussian_kernel1d(s, base.device, base.dtype) for s in _pyramid.layer_sigmas(p)]
    gauss = [base]
    for k in kernels[1:]:
        gauss.append(_pyramid.blur(gauss[-1], k))
    return torch.stack([b - a for a, b in zip(gauss[:-1], gauss[1:], strict=True)]).contiguous()


def test_native_refine_equals_eager_bit_for_bit(monkeypatch, native):
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "0")
    dog = _photo_dog()
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "1")
    p = SiftParams()
    cand = extrema_eager(dog, 1, 3, Workspace())
    pos, fit = _extrema.refine_eager(dog, cand, p)
    flat = ((cand[:, 0] * dog.shape[1] + cand[:, 1]) * dog.shape[2] + cand[:, 2]) * dog.shape[3] + cand[:, 3]
    n_pos, n_fit = _extrema.merge(*_native.refine(dog, flat, 5, p), dog.shape)
    assert pos.shape[0] > 50 and cand.shape[0] > pos.shape[0]  # the tests reject some
    assert torch.equal(n_pos, pos) and torch.equal(n_fit, fit)
    strict = SiftParams(contrast_threshold=0.1, edge_threshold=3.0)  # other thresholds reach the kernel
    assert torch.equal(_extrema.merge(*_native.refine(dog, flat, 5, strict), dog.shape)[0],
                       _extrema.refine_eager(dog, cand, strict)[0])  # fmt: skip


def _reference_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """float64 separable blur of an (H, W, b) stack with reflect-101 borders, by index gathers."""
    r = kernel.numel() // 2
    h, w, _ = x.shape
    xp = (
        x.double().index_select(0, _reflect101_index(h, r, x.device)).index_select(1, _reflect101_index(w, r, x.device))
    )
    k = kernel.double()
    rows = sum(k[t] * xp[:, t : t + w] for t in range(2 * r + 1))
    return sum(k[t] * rows[t : t + h] for t in range(2 * r + 1))


@pytest.mark.parametrize("shape", [(40, 37, 3), (7, 5, 2), (1, 30, 1), (33, 1, 4), (64, 64, 16)])
@pytest.mark.parametrize("sigma", [0.8, 3.09])
def test_native_blur_equals_reference(shape, sigma, native):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(4)) * 255
    kernel = _pyramid.gaussian_kernel1d(sigma, x.device, x.dtype)
    dog = torch.empty_like(x)
    out = _pyramid.blur(x, kernel, Workspace(), dog=dog)
    assert _native.usable(x)
    torch.testing.assert_close(out.double(), _reference_blur(x, kernel), rtol=0, atol=2e-4 * 255)
    assert torch.equal(dog, out - x)
    for i in range(shape[2]):  # each image gets the values it gets alone
        assert torch.equal(_pyramid.blur(x[..., i : i + 1].contiguous(), kernel)[..., 0], out[..., i])


@pytest.mark.parametrize("shape", ["photos", (14, 23, 3), (11, 12, 1)])
def test_native_octave_equals_the_per_layer_kernels(shape, native, monkeypatch):
    """One streamed pass per octave (rings of rows) = blur per layer, extremum search, subsampling, bit for bit."""
    from captum_sift.data import SAMPLE_PHOTOS, sample_images

    p = SiftParams()
    if shape == "photos":  # octave 0 of two photos: (192, 192, 2)
        x = _pyramid.initial_image(sample_images(list(SAMPLE_PHOTOS[:2]), size=96), p)
    else:  # kernels of up to 25 taps on 11-23 rows: the reflections wrap
        x = (torch.rand(*shape, generator=torch.Generator().manual_seed(6)) * 255).round()
    kernels = [_pyramid.gaussian_kernel1d(s, x.device, x.dtype) for s in _pyramid.layer_sigmas(p)]
    dog = torch.empty(len(kernels) - 1, *x.shape)
    gauss = [x]
    for i, kernel in enumerate(kernels[1:]):
        gauss.append(_pyramid.blur(gauss[-1], kernel, Workspace(), dog=dog[i]))
    found = []
    for threshold, room in ((1.0, None), (0.0, 8)):  # room 8: more candidates than the first output buffer holds
        if room:
            monkeypatch.setattr(_native, "_room", lambda dog, room=room: room)
        streamed = torch.full_like(dog, math.nan)
        cand, half = native.octave(x, kernels, streamed, p.n_octave_layers, threshold, 5, Workspace())
        assert torch.equal(streamed, dog)
        assert torch.equal(cand, native.extrema(dog, threshold, 5))
        assert torch.equal(half, native.half(gauss[p.n_octave_layers]))
        found.append(cand.numel())
    if shape == "photos":
        assert 100 < found[0] < found[1]


@pytest.mark.parametrize("channels", [1, 3])
def test_native_base_image_equals_torch(channels, native):
    images = torch.rand(3, channels, 13, 8, generator=torch.Generator().manual_seed(5))
    for quantize in (True, False):
        gray = _pyramid.to_gray255(images, quantize)
        up = torch.nn.functional.interpolate(gray, scale_factor=2.0, mode="bilinear", align_corners=False)
        expected = up[:, 0].permute(1, 2, 0)
        got = _native.base(images, quantize, True, Workspace())
        once = _native.base(images, quantize, False, Workspace())
        if quantize:  # integer gray levels: the bilinear weights (1/16 steps) give exact sums in any order
            assert torch.equal(got, expected) and torch.equal(once, gray[:, 0].permute(1, 2, 0))
        else:  # float gray: torch may fuse a multiply-add in the luma
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
            torch.testing.assert_close(once, gray[:, 0].permute(1, 2, 0), rtol=0, atol=1e-4)
    assert torch.equal(_native.half(expected.contiguous()), expected[::2, ::2])


def test_native_and_eager_detectors_agree(monkeypatch, native):
    from captum_sift.data import SAMPLE_PHOTOS, sample_images

    images = sample_images(list(SAMPLE_PHOTOS[:4]), size=128)
    native = detect_keypoints(images)
    singles = [detect_keypoints(images[i : i + 1])[0] for i in range(4)]
    for a, b in zip(native, singles, strict=True):  # batch == singles: the same samples and fits, exactly
        assert torch.equal(a[:, [0, 1, 3]], b[:, [0, 1, 3]])  # x, y, response
        torch.testing.assert_close(a[:, 2], b[:, 2], rtol=1e-6, atol=0)  # sigma: torch.pow's vector/scalar paths
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "0")
    eager = detect_keypoints(images)
    # The blurs sum in another order (float rounding): the same keypoints but a rare borderline one,
    # sub-pixel offsets (a fit to differences of near-equal DoG values) within a tenth of a pixel.
    for a, b in zip(native, eager, strict=True):
        assert abs(a.shape[0] - b.shape[0]) <= max(2, b.shape[0] // 100) and b.shape[0] > 20
        near = torch.cdist(a[:, :2], b[:, :2]).min(1).values
        assert float((near < 0.1).float().mean()) >= 0.98
