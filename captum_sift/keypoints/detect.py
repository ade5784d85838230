"""Image -> keypoints -> per-patch keypoint counts t_j (paper §2.2, SPEC §1)."""

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
from typing import Literal

import torch
from torch import nn

from .._checks import check_images, check_int, check_min_keypoints, check_number, check_patch_size, shape_of
from ..errors import CaptumSiftError
from . import _native
from ._opencv import detect_opencv
from ._scale_space import SiftParams, Workspace, detect_chunk

Backend = Literal["kornia", "opencv"]
_BACKENDS = ("kornia", "opencv")


def _params(
    n_octave_layers: int,
    sigma: float,
    contrast_threshold: float,
    edge_threshold: float,
    precise_upscale: bool,
    quantize: bool,
) -> SiftParams:
    return SiftParams(
        n_octave_layers=check_int(n_octave_layers, "n_octave_layers", low=1),
        sigma=check_number(sigma, "sigma", low=0, low_open=True),
        contrast_threshold=check_number(contrast_threshold, "contrast_threshold", low=0),
        edge_threshold=check_number(edge_threshold, "edge_threshold", low=0, low_open=True),
        precise_upscale=bool(precise_upscale),
        quantize=bool(quantize),
    )


def _detect_flat(
    images: torch.Tensor, backend: str, params: SiftParams, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All keypoints of a batch: ``image_index`` (K,) and ``keypoints`` (K, 4), sorted by image."""
    if backend not in _BACKENDS:
        raise CaptumSiftError(f"expected backend to be one of {_BACKENDS}, got {backend!r}")
    if backend == "opencv":
        return detect_opencv(images, params)
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


def _check_input(images: object) -> torch.Tensor:
    """:func:`~captum_sift._checks.check_images`, and a tensor with data (not on the meta device)."""
    if isinstance(images, torch.Tensor) and images.device.type == "meta":
        raise CaptumSiftError("expected images with data (on a CPU or an accelerator), got a tensor on the meta device")
    return check_images(images)


def detect_keypoints(
    images: torch.Tensor,
    *,
    backend: Backend = "kornia",
    n_octave_layers: int = 3,
    sigma: float = 1.6,
    contrast_threshold: float = 0.04,
    edge_threshold: float = 10.0,
    precise_upscale: bool = False,
    quantize: bool = True,
    chunk_size: int | None = None,
) -> list[torch.Tensor]:
    """SIFT keypoint locations of every image (Lowe 2004; SPEC §1).

    DoG scale-space extrema with OpenCV's defaults: the image doubled, 3 scales
    per octave, sigma0 = 1.6, contrast threshold 0.04 / 3 on the refined DoG
    value and edge rejection with principal-curvature ratio r = 10. One row per
    keypoint *location*: OpenCV's repeats of a location for extra orientations
    are not produced (``"kornia"``) or merged (``"opencv"``).

    Args:
        images: float images in [0, 1]; RGB is turned into ITU-R 601 luma.
        backend: ``"kornia"`` (batched torch/kornia detector, any device) or
            ``"opencv"`` (``cv2.SIFT_create()``, needs the ``opencv`` extra).
        n_octave_layers: scales per octave (OpenCV's ``nOctaveLayers``).
        sigma: blur of the first Gaussian layer of each octave.
        contrast_threshold: Lowe's contrast threshold, divided by
            ``n_octave_layers`` as in OpenCV.
        edge_threshold: principal-curvature ratio r of the edge test.
        precise_upscale: double the image with pixel x -> 2x (OpenCV's
            ``enable_precise_upscale``); the default follows OpenCV's default.
        quantize: round the gray image to 8-bit steps, as OpenCV sees an 8-bit
            image (default). ``False`` keeps the float gray values.
        chunk_size: images processed at once by the ``"kornia"`` backend
            (default: ~0.4 M doubled-image pixels on CPU, i.e. 2 images of
            224 px, 16 with the eager fallback, 128 on GPU); only memory and
            speed depend on it.

    Returns:
        One (K_b, 4) tensor per image, rows ``(x, y, sigma, response)``: the
        sub-pixel position in input pixels (pixel centres at integers, as
        OpenCV), the scale sigma (OpenCV's ``size / 2``) and ``|D(x_hat)|``.
        On the images' device; float64 for float64 images, else float32.

    Shape:
        - images: (B, C, H, W), C in {1, 3}
        - output: list of B tensors (K_b, 4)

    Example:
        >>> img = torch.zeros(1, 1, 64, 64)
        >>> img[..., 28:36, 28:36] = 1.0
        >>> kps = detect_keypoints(img)
        >>> len(kps), kps[0].shape[1]
        (1, 4)
        >>> bool(((kps[0][:, :2] > 20) & (kps[0][:, :2] < 44)).all())
        True
    """
    images = _check_input(images)
    params = _params(n_octave_layers, sigma, contrast_threshold, edge_threshold, precise_upscale, quantize)
    if images.shape[0] == 0:
        return []
    index, keypoints = _detect_flat(images, backend, params, chunk_size)
    sizes = torch.bincount(index, minlength=images.shape[0]).tolist()
    return list(torch.split(keypoints, sizes))


def keypoints_to_counts(keypoints: list[torch.Tensor], image_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Number of keypoints in every patch (SPEC §1).

    A keypoint at (x, y) belongs to patch ``(floor(y / P), floor(x / P))``,
    clamped to the grid, so a keypoint on a patch border goes to the patch
    right of / below it and one past the last pixel centre to the last patch.

    Args:
        keypoints: per image, (K_b, >= 2) tensors whose first columns are x, y.
        image_size: (H, W) of the images the keypoints were detected on.
        patch_size: P, a divisor of H and W.

    Returns:
        LongTensor (B, H // P, W // P) of counts, on the keypoints' device.

    Example:
        >>> kps = [torch.tensor([[0.0, 0.0], [15.9, 3.0], [16.0, 3.0], [40.0, 40.0]])]
        >>> keypoints_to_counts(kps, (32, 32), 16)
        tensor([[[2, 1],
                 [0, 1]]])
    """
    if isinstance(keypoints, torch.Tensor) or not isinstance(keypoints, (list, tuple)):
        raise CaptumSiftError(
            f"expected keypoints as a list of (K_b, >= 2) tensors, one per image (as detect_keypoints returns), "
            f"got {type(keypoints).__name__}"
        )
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise CaptumSiftError(f"expected image_size (H, W), got {image_size!r}")
    height, width = image_size
    patch_size = check_patch_size(patch_size, height, width)
    grid_h, grid_w = height // patch_size, width // patch_size
    device = keypoints[0].device if keypoints and isinstance(keypoints[0], torch.Tensor) else torch.device("cpu")
    if not keypoints:
        return torch.zeros(0, grid_h, grid_w, dtype=torch.long, device=device)
    for i, k in enumerate(keypoints):
        if not isinstance(k, torch.Tensor) or k.dim() != 2 or k.shape[1] < 2:
            raise CaptumSiftError(f"expected keypoints[{i}] of shape (K, >= 2), got {shape_of(k)}")
    index = torch.cat([torch.full((k.shape[0],), i, dtype=torch.long, device=device) for i, k in enumerate(keypoints)])
    xy = torch.cat([k[:, :2] for k in keypoints])
    return _bin(index, xy, len(keypoints), grid_h, grid_w, patch_size)


def _bin(index: torch.Tensor, xy: torch.Tensor, batch: int, grid_h: int, grid_w: int, patch: int) -> torch.Tensor:
    """Histogram of keypoints (image, x, y) over the patch grid -> (B, Gh, Gw)."""
    if not bool(torch.isfinite(xy).all()):
        raise CaptumSiftError("expected finite keypoint coordinates, got NaN or Inf")
    col = torch.div(xy[:, 0], patch, rounding_mode="floor").long().clamp(0, grid_w - 1)
    row = torch.div(xy[:, 1], patch, rounding_mode="floor").long().clamp(0, grid_h - 1)
    flat = (index * grid_h + row) * grid_w + col
    counts = torch.bincount(flat, minlength=batch * grid_h * grid_w)
    return counts.view(batch, grid_h, grid_w)


def count_keypoints(
    images: torch.Tensor,
    patch_size: int,
    *,
    backend: Backend = "kornia",
    min_keypoints: int = 1,
    **detector_kwargs: object,
) -> torch.Tensor:
    """Keypoint count t_j of every ViT patch (paper §2.2, SPEC §1).

    Counts are taken on ``images`` exactly as given, so pass the images as the
    model sees them (after resize and crop).

    Args:
        images: float images in [0, 1], H and W multiples of ``patch_size``.
        patch_size: the ViT's patch size P.
        backend: ``"kornia"`` or ``"opencv"``, see :func:`detect_keypoints`.
        min_keypoints: a patch is Key when ``t_j >= min_keypoints``; counts
            below the bar are reported as 0 (Non-key), so downstream code can
            always test ``t_j >= 1``. The default 1 changes nothing.
        **detector_kwargs: passed to :func:`detect_keypoints`.

    Returns:
        LongTensor (B, H // P, W // P) on the images' device.

    Shape:
        - images: (B, C, H, W), C in {1, 3}
        - output: (B, Gh, Gw)

    Example:
        >>> img = torch.zeros(2, 3, 64, 64)
        >>> img[0, :, 28:36, 28:36] = 1.0  # one bright blob in image 0
        >>> t = count_keypoints(img, 16)
        >>> t.shape, t.dtype
        (torch.Size([2, 4, 4]), torch.int64)
        >>> int(t[1].sum())  # a blank image has no keypoint
        0
    """
    images = _check_input(images)
    grid_h, grid_w = images.shape[2], images.shape[3]
    patch_size = check_patch_size(patch_size, grid_h, grid_w)
    check_min_keypoints(min_keypoints)
    grid_h, grid_w = grid_h // patch_size, grid_w // patch_size
    if images.shape[0] == 0:
        return torch.zeros(0, grid_h, grid_w, dtype=torch.long, device=images.device)
    chunk_size = detector_kwargs.pop("chunk_size", None)
    params = _params(**_param_kwargs(detector_kwargs))
    index, keypoints = _detect_flat(images, backend, params, chunk_size)  # type: ignore[arg-type]
    counts = _bin(index, keypoints[:, :2], images.shape[0], grid_h, grid_w, patch_size)
    return torch.where(counts >= min_keypoints, counts, torch.zeros_like(counts))


_PARAM_DEFAULTS = {
    "n_octave_layers": 3,
    "sigma": 1.6,
    "contrast_threshold": 0.04,
    "edge_threshold": 10.0,
    "precise_upscale": False,
    "quantize": True,
}


def _param_kwargs(kwargs: dict[str, object]) -> dict:
    unknown = sorted(set(kwargs) - set(_PARAM_DEFAULTS))
    if unknown:
        raise CaptumSiftError(
            f"unknown detector argument(s) {unknown}; expected some of {sorted(_PARAM_DEFAULTS)} or chunk_size"
        )
    return {**_PARAM_DEFAULTS, **kwargs}


class KeypointCounter(nn.Module):
    """Module form of :func:`count_keypoints`: stores the hyper-parameters.

    Example:
        >>> counter = KeypointCounter(patch_size=16)
        >>> counter
        KeypointCounter(patch_size=16, backend='kornia', min_keypoints=1, n_octave_layers=3, sigma=1.6,
            contrast_threshold=0.04, edge_threshold=10.0, precise_upscale=False, quantize=True)
        >>> counter(torch.zeros(1, 3, 32, 48)).shape
        torch.Size([1, 2, 3])
    """

    def __init__(
        self,
        patch_size: int,
        *,
        backend: Backend = "kornia",
        min_keypoints: int = 1,
        n_octave_layers: int = 3,
        sigma: float = 1.6,
        contrast_threshold: float = 0.04,
        edge_threshold: float = 10.0,
        precise_upscale: bool = False,
        quantize: bool = True,
    ) -> None:
        super().__init__()
        patch_size = check_int(patch_size, "patch_size", low=1)
        if backend not in _BACKENDS:
            raise CaptumSiftError(f"expected backend to be one of {_BACKENDS}, got {backend!r}")
        self.patch_size = patch_size
        self.backend: Backend = backend
        self.min_keypoints = check_min_keypoints(min_keypoints)
        self.params = _params(n_octave_layers, sigma, contrast_threshold, edge_threshold, precise_upscale, quantize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Counts (B, H // P, W // P) of ``images`` (B, C, H, W)."""
        return count_keypoints(
            images,
            self.patch_size,
            backend=self.backend,
            min_keypoints=self.min_keypoints,
            **{name: getattr(self.params, name) for name in _PARAM_DEFAULTS},
        )

    def extra_repr(self) -> str:
        fields = [f"patch_size={self.patch_size}", f"backend={self.backend!r}", f"min_keypoints={self.min_keypoints}"]
        fields += [f"{name}={getattr(self.params, name)!r}" for name in _PARAM_DEFAULTS]
        return ", ".join(fields)
