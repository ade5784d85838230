"""Chunks of the Lowe detector on threads: the chunk sizes, the thread pool, the OpenMP setting of its threads.

The native kernels release the GIL, so chunks of a batch run side by side on
``torch.get_num_threads()`` threads, the calling one included, each taking the
next chunk when done with one. Scratch buffers are kept per thread between
calls on CPU.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import re
import threading
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import torch

from .._checks import check_int
from . import _native
from ._lowe import detect_chunk
from ._pyramid import Workspace
from .params import SiftParams


def detect_lowe(images: torch.Tensor, params: SiftParams, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All keypoints of a batch, chunk by chunk on threads: ``image_index`` (K,) and ``keypoints`` (K, 4), by image."""
    if chunk_size is None:
        chunk_size = _default_chunk(images, params)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    starts = range(0, images.shape[0], chunk_size)
    workers = _native_workers(images, len(starts))
    results: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(starts)  # type: ignore[list-item]
    order = itertools.count()  # the next chunk to take: next() on it is atomic under the GIL
    used: set[Workspace] = set()

    def drain() -> None:
        """Run chunks, each thread taking the next one as it finishes one."""
        workspace = _workspace(images.device)
        used.add(workspace)
        while (i := next(order)) < len(starts):
            idx, kps = detect_chunk(images[starts[i] : starts[i] + chunk_size], params, workspace)
            results[i] = (idx + starts[i], kps)

    # The calling thread takes chunks too: a chunk starts at once, not after a pool thread wakes up.
    helpers = [_pool(workers - 1).submit(drain) for _ in range(workers - 1)] if workers > 1 else []
    try:
        drain()
    finally:
        futures.wait(helpers)
        for workspace in used:  # the threads are idle now
            if workspace.nbytes > _RETAIN_BYTES:
                workspace.clear()
    for helper in helpers:
        helper.result()  # a helper's error
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


# Scratch buffers kept per thread between calls on CPU, up to this size: fresh
# buffers for every call cost ~3.6 ms of page faults for one 224-px image
# (~60 % of its time). GPU calls use a fresh Workspace (the caching allocator).
_RETAIN_BYTES = 64 * 2**20
_LOCAL = threading.local()
_POOL: dict[str, object] = {}
_POOL_LOCK = threading.Lock()


def _workspace(device: torch.device) -> Workspace:
    if device.type != "cpu":
        return Workspace()
    if not hasattr(_LOCAL, "workspace"):
        _LOCAL.workspace = Workspace()
    return _LOCAL.workspace


def _pool(workers: int) -> ThreadPoolExecutor:
    """The threads that run chunks beside the calling thread (kept between calls, so are their buffers)."""
    with _POOL_LOCK:
        if _POOL.get("key") != (workers, os.getpid()):
            old = _POOL.get("pool")
            if old is not None and _POOL["key"][1] == os.getpid():  # type: ignore[index]
                old.shutdown(wait=False)  # type: ignore[attr-defined]
            # A forked child (DataLoader workers) has none of the parent's threads: a pool of its own.
            _POOL["pool"] = ThreadPoolExecutor(
                workers, thread_name_prefix="captum_sift_keypoints", initializer=_one_torch_thread
            )
            _POOL["key"] = (workers, os.getpid())
        return _POOL["pool"]  # type: ignore[return-value]


def _one_torch_thread() -> None:
    """Pool threads run their torch ops on themselves alone: no OpenMP team of their own.

    A torch op that goes parallel on a thread gives that thread an OpenMP team
    of ``torch.get_num_threads()`` threads, kept for good. With a pool
    thread's team beside the caller's, GNU OpenMP manages more threads than
    there are CPUs and throttles its spin-waits for the whole process: every
    parallel op of the caller's own forwards then puts its threads to sleep
    and wakes them (measured on a ViT-S forward at batch 4, 2 threads: ~320
    sleeps after a few ``count_keypoints`` calls instead of ~0). The chunks'
    torch ops are small; the kernels run on the pool threads themselves.
    """
    torch.get_num_threads()  # torch's own set-up of this thread first: it would undo what follows
    set_num_threads = _omp_set_num_threads()
    if set_num_threads is not None:
        set_num_threads(1)  # this thread's OpenMP setting only; torch.set_num_threads would change every thread's


@functools.cache
def _omp_set_num_threads() -> Callable[[int], object] | None:
    """``omp_set_num_threads`` of the OpenMP runtime torch runs on, or None (not found, not Linux, not OpenMP)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}  # the mapped files
    except OSError:
        return None
    runtimes = sorted(p for p in paths if re.match(r"lib(g|i)?omp(5|140)?[-.]", os.path.basename(p)))
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    ours = [p for p in runtimes if p.startswith(torch_lib + os.sep)] or runtimes
    if len(ours) != 1:  # none, or several and none of them torch's own: leave the threads as they are
        return None
    try:
        return ctypes.CDLL(ours[0]).omp_set_num_threads  # already loaded: the same library, not a second copy
    except (OSError, AttributeError):
        return None


def _native_workers(images: torch.Tensor, chunks: int) -> int:
    """Threads for the native CPU path, the calling one included: torch's thread count (1 elsewhere).

    The kernels release the GIL, so chunks run side by side; each thread
    takes the next chunk when it is done with one, so a core that another
    process keeps busy slows only the chunks it runs (torch's own parallel
    ops wait for it at every op). The caller starts on the first chunk at
    once (waking a pool thread takes ~1 ms on a shared VM). The keypoints do
    not depend on it.
    """
    if chunks < 2 or not _native_path(images):
        return 1
    return max(1, min(torch.get_num_threads(), chunks))


def _native_path(images: torch.Tensor) -> bool:
    """Whether ``detect_chunk`` runs these images through the native kernels (CPU, float32 compute)."""
    return images.device.type == "cpu" and images.dtype != torch.float64 and _native.library() is not None


_NATIVE_PIXELS = 2 * 448 * 448  # doubled-image pixels per chunk of the native CPU kernels


def _default_chunk(images: torch.Tensor, params: SiftParams) -> int:
    """Images per chunk: what keeps a chunk's layers in cache on CPU; a GPU takes big chunks.

    Measured one-thread (benchmarks/keypoints.py): the native kernels are
    fastest with ~2 doubled 224-px images per chunk (2 at 224 px, 8 at
    112 px, 1 at 448 px; 16 images of 224 px are ~35 % slower); the eager
    path with 16 (large temporaries cause page-fault storms, small chunks
    pay torch's per-op overhead).
    """
    if images.device.type != "cpu":
        return 128
    if not _native_path(images):
        return 16
    scale = 4 if params.double_image else 1
    return max(1, min(64, _NATIVE_PIXELS // (scale * images.shape[2] * images.shape[3])))
