"""SIFT keypoints and per-patch counts (SPEC §1): hand-made images with known answers."""

import math
import shutil
import warnings

import pytest
import torch
from conftest import blob_image, ring_image

from captum_sift import CaptumSiftError, KeypointCounter, count_keypoints, detect_keypoints, keypoints_to_counts
from captum_sift.keypoints import _native, _scale_space
from captum_sift.keypoints._scale_space import SiftParams, Workspace, _extrema, _pad_hw, _reflect101_index, num_octaves
from captum_sift.keypoints.detect import _native_workers


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
        return _extrema(dog, threshold, dog.shape[0] - 2, Workspace())
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
    flat = _extrema(dog, 0.0, 3, Workspace())
    assert torch.equal(found, ((flat[:, 0] * 64 + flat[:, 1]) * 64 + flat[:, 2]) * 4 + flat[:, 3])


def _photo_dog(size: int = 96, images: int = 2) -> torch.Tensor:
    """The octave-0 DoG stack (5, 2 size, 2 size, b) of real photos, from the eager blur."""
    from captum_sift.data import SAMPLE_PHOTOS, sample_images

    p = SiftParams()
    base = _scale_space._initial_image(sample_images(list(SAMPLE_PHOTOS[:images]), size=size), p)
    kernels = [_scale_space.gaussian_kernel1d(s, base.device, base.dtype) for s in _scale_space._layer_sigmas(p)]
    gauss = [base]
    for k in kernels[1:]:
        gauss.append(_scale_space._blur(gauss[-1], k))
    return torch.stack([b - a for a, b in zip(gauss[:-1], gauss[1:], strict=True)]).contiguous()


def test_native_refine_equals_eager_bit_for_bit(monkeypatch, native):
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "0")
    dog = _photo_dog()
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "1")
    p = SiftParams()
    cand = _extrema(dog, 1, 3, Workspace())
    pos, fit = _scale_space._refine(dog, cand, p)
    flat = ((cand[:, 0] * dog.shape[1] + cand[:, 1]) * dog.shape[2] + cand[:, 2]) * dog.shape[3] + cand[:, 3]
    n_pos, n_fit = _scale_space._merge(*_native.refine(dog, flat, 5, p), dog.shape)
    assert pos.shape[0] > 50 and cand.shape[0] > pos.shape[0]  # the tests reject some
    assert torch.equal(n_pos, pos) and torch.equal(n_fit, fit)
    strict = SiftParams(contrast_threshold=0.1, edge_threshold=3.0)  # other thresholds reach the kernel
    assert torch.equal(_scale_space._merge(*_native.refine(dog, flat, 5, strict), dog.shape)[0],
                       _scale_space._refine(dog, cand, strict)[0])  # fmt: skip


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
    kernel = _scale_space.gaussian_kernel1d(sigma, x.device, x.dtype)
    dog = torch.empty_like(x)
    out = _scale_space._blur(x, kernel, Workspace(), dog=dog)
    assert _native.usable(x)
    torch.testing.assert_close(out.double(), _reference_blur(x, kernel), rtol=0, atol=2e-4 * 255)
    assert torch.equal(dog, out - x)
    for i in range(shape[2]):  # each image gets the values it gets alone
        assert torch.equal(_scale_space._blur(x[..., i : i + 1].contiguous(), kernel)[..., 0], out[..., i])


@pytest.mark.parametrize("shape", ["photos", (14, 23, 3), (11, 12, 1)])
def test_native_octave_equals_the_per_layer_kernels(shape, native, monkeypatch):
    """One streamed pass per octave (rings of rows) = blur per layer, extremum search, subsampling, bit for bit."""
    from captum_sift.data import SAMPLE_PHOTOS, sample_images

    p = SiftParams()
    if shape == "photos":  # octave 0 of two photos: (192, 192, 2)
        x = _scale_space._initial_image(sample_images(list(SAMPLE_PHOTOS[:2]), size=96), p)
    else:  # kernels of up to 25 taps on 11-23 rows: the reflections wrap
        x = (torch.rand(*shape, generator=torch.Generator().manual_seed(6)) * 255).round()
    kernels = [_scale_space.gaussian_kernel1d(s, x.device, x.dtype) for s in _scale_space._layer_sigmas(p)]
    dog = torch.empty(len(kernels) - 1, *x.shape)
    gauss = [x]
    for i, kernel in enumerate(kernels[1:]):
        gauss.append(_scale_space._blur(gauss[-1], kernel, Workspace(), dog=dog[i]))
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
        gray = _scale_space.to_gray255(images, quantize)
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


def test_native_chunks_on_threads_give_the_same_keypoints(native):
    from captum_sift.data import SAMPLE_PHOTOS, sample_images

    images = sample_images(list(SAMPLE_PHOTOS[:5]), size=96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = detect_keypoints(images, chunk_size=1)
        torch.set_num_threads(3)  # 3 workers over 5 chunks, whatever the machine's cores
        assert _native_workers(images, 5) == 3
        many = detect_keypoints(images, chunk_size=1)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True)) and sum(len(k) for k in one) > 20


def test_chunks_run_on_the_caller_and_pool_threads_and_errors_reach_the_caller(native, monkeypatch):
    import threading

    from captum_sift.data import SAMPLE_PHOTOS, sample_images
    from captum_sift.keypoints import detect

    images = sample_images(list(SAMPLE_PHOTOS[:6]), size=64)
    expected = count_keypoints(images, 16, chunk_size=1)
    ran, real = [], detect.detect_chunk

    def chunk(x, params, workspace):
        ran.append(threading.get_ident())
        if x.shape[0] == 1 and torch.equal(x[0], images[4]) and fail:
            raise RuntimeError("chunk 4 failed")
        return real(x, params, workspace)

    monkeypatch.setattr(detect, "detect_chunk", chunk)
    monkeypatch.setattr(detect, "_native_workers", lambda images, chunks: 2)
    fail = False
    assert torch.equal(count_keypoints(images, 16, chunk_size=1), expected)
    assert len(ran) == 6 and threading.get_ident() in ran  # the caller took chunks too
    fail = True
    with pytest.raises(RuntimeError, match="chunk 4 failed"):  # on whichever thread ran it
        count_keypoints(images, 16, chunk_size=1)
    fail = False
    assert torch.equal(count_keypoints(images, 16, chunk_size=1), expected)


def test_pool_threads_run_torch_ops_on_themselves_alone(native):
    """A torch op on a pool thread makes no OpenMP team (one beside the caller's slows every op in the process)."""
    import os

    from captum_sift.data import SAMPLE_PHOTOS, sample_images
    from captum_sift.keypoints import detect

    if detect._omp_set_num_threads() is None:
        pytest.skip("torch's OpenMP runtime not found here (not Linux, or not an OpenMP build)")
    images = sample_images(list(SAMPLE_PHOTOS[:4]), size=64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        expected = count_keypoints(images, 16, chunk_size=1)
        pool = detect._pool(1)
        assert torch.get_num_threads() == 2 and pool.submit(torch.get_num_threads).result() == 1
        big = torch.rand(1 << 20)
        tripled = big * 3  # an op torch splits over 2 threads (the caller's team exists now)
        before = len(os.listdir("/proc/self/task"))  # the pool's thread started
        assert torch.equal(pool.submit(torch.mul, big, 3).result(), tripled)
        assert torch.equal(count_keypoints(images, 16, chunk_size=1), expected)
        assert len(os.listdir("/proc/self/task")) == before  # no thread started: no second OpenMP team
    finally:
        torch.set_num_threads(threads)


def test_cpu_scratch_buffers_are_kept_between_calls_up_to_a_bound(monkeypatch):
    from captum_sift.keypoints import detect

    noise = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(6))
    images = torch.nn.functional.avg_pool2d(noise, 3, 1, 1)
    expected = count_keypoints(images, 16)
    workspace = detect._workspace(images.device)
    held = workspace.nbytes
    assert 0 < held <= detect._RETAIN_BYTES
    buffers = {id(b) for b in workspace._buffers.values()}
    assert torch.equal(count_keypoints(images, 16), expected)
    assert {id(b) for b in workspace._buffers.values()} == buffers  # reused, not allocated again
    monkeypatch.setattr(detect, "_RETAIN_BYTES", held - 1)
    assert torch.equal(count_keypoints(images, 16), expected) and workspace.nbytes == 0  # over the bound: let go


def test_chunks_on_threads_work_in_a_forked_child(native):
    import multiprocessing as mp

    from captum_sift.data import SAMPLE_PHOTOS, sample_images
    from captum_sift.keypoints import detect

    images = sample_images(list(SAMPLE_PHOTOS[:4]), size=64)
    assert list(detect._pool(2).map(abs, [-1, -2])) == [1, 2]  # the parent's pool threads exist
    expected = count_keypoints(images, 16, chunk_size=1)
    with mp.get_context("fork").Pool(1) as pool:  # as DataLoader workers are made
        got = pool.apply_async(_count_in_child, (images,)).get(timeout=60)
    assert torch.equal(got, expected)


def _count_in_child(images: torch.Tensor) -> torch.Tensor:
    from captum_sift.keypoints import detect

    # torch stays on one thread (DataLoader workers do: GNU OpenMP hangs after a fork); our chunk threads do not
    torch.set_num_threads(1)
    detect._native_workers = lambda images, chunks: 2
    return count_keypoints(images, 16, chunk_size=1)


def test_native_build_failure_falls_back_to_eager_once(monkeypatch, tmp_path):
    images = torch.nn.functional.avg_pool2d(
        torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(3)), 3, 1, 1
    )
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "0")
    expected = count_keypoints(images, 8)
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "1")
    monkeypatch.setenv("CAPTUM_SIFT_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setattr(_native, "_STATE", {})
    with pytest.warns(RuntimeWarning, match="native keypoint kernels are not available.*this compiler is broken"):
        counts = count_keypoints(images, 8)
    assert torch.equal(counts, expected) and int(expected.sum()) > 0
    assert _native._STATE == {"lib": None} and list((tmp_path / "cache").iterdir()) == []  # nothing half-written
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls stay eager in silence
        assert torch.equal(count_keypoints(images, 8), expected)


def test_native_library_is_built_once_into_the_cache(monkeypatch, tmp_path, native):
    monkeypatch.setenv("CAPTUM_SIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_STATE", {})
    assert _native.library() is not None
    (built,) = (tmp_path / "cache").iterdir()
    assert built.name.startswith("native-") and built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(_native, "_STATE", {})  # a new process: loads, does not compile again
    monkeypatch.setattr(_native, "_build", lambda *a: pytest.fail("compiled again"))
    assert _native.library() is not None and built.stat().st_mtime_ns == stamp
    monkeypatch.setenv("CAPTUM_SIFT_NATIVE", "0")
    assert _native.library() is None and not _native.usable(torch.zeros(1))


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
