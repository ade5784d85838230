"""The Lowe detector's chunks on threads and the native kernels' build: same keypoints, errors, forks, cache."""

import shutil
import warnings

import pytest
import torch

from captum_sift import count_keypoints, detect_keypoints
from captum_sift.keypoints import _native, _threads
from captum_sift.keypoints._threads import _native_workers


@pytest.fixture
def native():
    """The native kernels: skipped only where no C compiler exists; where one does, they must build."""
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine: the eager path is tested alone")
    assert _native.library() is not None, "the native kernels must build where a C compiler exists"
    return _native


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

    images = sample_images(list(SAMPLE_PHOTOS[:6]), size=64)
    expected = count_keypoints(images, 16, chunk_size=1)
    ran, real = [], _threads.detect_chunk

    def chunk(x, params, workspace):
        ran.append(threading.get_ident())
        if x.shape[0] == 1 and torch.equal(x[0], images[4]) and fail:
            raise RuntimeError("chunk 4 failed")
        return real(x, params, workspace)

    monkeypatch.setattr(_threads, "detect_chunk", chunk)
    monkeypatch.setattr(_threads, "_native_workers", lambda images, chunks: 2)
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

    if _threads._omp_set_num_threads() is None:
        pytest.skip("torch's OpenMP runtime not found here (not Linux, or not an OpenMP build)")
    images = sample_images(list(SAMPLE_PHOTOS[:4]), size=64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        expected = count_keypoints(images, 16, chunk_size=1)
        pool = _threads._pool(1)
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

    noise = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(6))
    images = torch.nn.functional.avg_pool2d(noise, 3, 1, 1)
    expected = count_keypoints(images, 16)
    workspace = _threads._workspace(images.device)
    held = workspace.nbytes
    assert 0 < held <= _threads._RETAIN_BYTES
    buffers = {id(b) for b in workspace._buffers.values()}
    assert torch.equal(count_keypoints(images, 16), expected)
    assert {id(b) for b in workspace._buffers.values()} == buffers  # reused, not allocated again
    monkeypatch.setattr(_threads, "_RETAIN_BYTES", held - 1)
    assert torch.equal(count_keypoints(images, 16), expected) and workspace.nbytes == 0  # over the bound: let go


def test_chunks_on_threads_work_in_a_forked_child(native):
    import multiprocessing as mp

    from captum_sift.data import SAMPLE_PHOTOS, sample_images

    images = sample_images(list(SAMPLE_PHOTOS[:4]), size=64)
    assert list(_threads._pool(2).map(abs, [-1, -2])) == [1, 2]  # the parent's pool threads exist
    expected = count_keypoints(images, 16, chunk_size=1)
    with mp.get_context("fork").Pool(1) as pool:  # as DataLoader workers are made
        got = pool.apply_async(_count_in_child, (images,)).get(timeout=60)
    assert torch.equal(got, expected)


def _count_in_child(images: torch.Tensor) -> torch.Tensor:

    # torch stays on one thread (DataLoader workers do: GNU OpenMP hangs after a fork); our chunk threads do not
    torch.set_num_threads(1)
    _threads._native_workers = lambda images, chunks: 2
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
