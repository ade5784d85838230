"""Image -> keypoints -> per-patch keypoint counts t_j (paper §2.2, SPEC §1): the public functions."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_images, check_int, check_min_keypoints, check_patch_size, shape_of
from ..errors import CaptumSiftError
from ._kornia import detect_kornia
from ._opencv import detect_opencv
from ._threads import detect_lowe
from .params import DEFAULT_BACKEND, DEFAULTS, OPTIONS, Backend, SiftParams, check_backend

__all__ = ["KeypointCounter", "count_keypoints", "detect_keypoints", "keypoints_to_counts"]


def _detect(
    images: torch.Tensor, backend: str, params: SiftParams, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All keypoints of a non-empty batch: ``image_index`` (K,) and ``keypoints`` (K, 4), sorted by image."""
    if backend == "opencv":
        return detect_opencv(images, params)
    if backend == "kornia":
        return detect_kornia(images, params, chunk_size)
    return detect_lowe(images, params, chunk_size)


def _check_input(images: object) -> torch.Tensor:
    """:func:`~captum_sift._checks.check_images`, and a tensor with data (not on the meta device)."""
    if isinstance(images, torch.Tensor) and images.device.type == "meta":
        raise CaptumSiftError("expected images with data (on a CPU or an accelerator), got a tensor on the meta device")
    return check_images(images)


def detect_keypoints(
    images: torch.Tensor,
    *,
    backend: Backend = DEFAULT_BACKEND,
    n_octave_layers: int = DEFAULTS.n_octave_layers,
    sigma: float = DEFAULTS.sigma,
    contrast_threshold: float = DEFAULTS.contrast_threshold,
    edge_threshold: float = DEFAULTS.edge_threshold,
    precise_upscale: bool = DEFAULTS.precise_upscale,
    quantize: bool = DEFAULTS.quantize,
    chunk_size: int | None = None,
) -> list[torch.Tensor]:
    """SIFT keypoint locations of every image (Lowe 2004; SPEC §1).

    DoG scale-space extrema with OpenCV's defaults: the image doubled, 3 scales
    per octave, sigma0 = 1.6, contrast threshold 0.04 / 3 on the refined DoG
    value and edge rejection with principal-curvature ratio r = 10. One row per
    keypoint *location*: OpenCV's repeats of a location for extra orientations
    are not produced (``"lowe"``, ``"kornia"``) or merged (``"opencv"``).

    Args:
        images: float images in [0, 1]; RGB is turned into ITU-R 601 luma.
        backend: ``"lowe"`` (default: the package's batched Lowe detector,
            torch on any device, C kernels on CPU), ``"kornia"`` (kornia's own
            scale-space detector, ``kornia.feature.ScaleSpaceDetector`` with
            DoG responses, followed by this contrast threshold and edge test;
            it warns once that the name changed meaning) or ``"opencv"``
            (``cv2.SIFT_create()``, needs the ``opencv`` extra).
        n_octave_layers: scales per octave (OpenCV's ``nOctaveLayers``).
        sigma: blur of the first Gaussian layer of each octave.
        contrast_threshold: Lowe's contrast threshold, divided by
            ``n_octave_layers`` as in OpenCV.
        edge_threshold: principal-curvature ratio r of the edge test.
        precise_upscale: double the image with pixel x -> 2x (OpenCV's
            ``enable_precise_upscale``); the default follows OpenCV's default.
        quantize: round the gray image to 8-bit steps, as OpenCV sees an 8-bit
            image (default). ``False`` keeps the float gray values.
        chunk_size: images processed at once by the ``"lowe"`` backend
            (default: ~0.4 M doubled-image pixels on CPU, i.e. 2 images of
            224 px, 16 with the eager fallback, 128 on GPU) and by ``"kornia"``
            (default 1); only memory and speed depend on it.

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
    backend = check_backend(backend)
    params = SiftParams(n_octave_layers, sigma, contrast_threshold, edge_threshold, precise_upscale, quantize)
    if images.shape[0] == 0:
        return []
    index, keypoints = _detect(images, backend, params, chunk_size)
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
    backend: Backend = DEFAULT_BACKEND,
    min_keypoints: int = 1,
    **detector_kwargs: object,
) -> torch.Tensor:
    """Keypoint count t_j of every ViT patch (paper §2.2, SPEC §1).

    Counts are taken on ``images`` exactly as given, so pass the images as the
    model sees them (after resize and crop).

    Args:
        images: float images in [0, 1], H and W multiples of ``patch_size``.
        patch_size: the ViT's patch size P.
        backend: ``"lowe"`` (default), ``"kornia"`` or ``"opencv"``, see :func:`detect_keypoints`.
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
    backend = check_backend(backend)
    grid_h, grid_w = images.shape[2], images.shape[3]
    patch_size = check_patch_size(patch_size, grid_h, grid_w)
    check_min_keypoints(min_keypoints)
    grid_h, grid_w = grid_h // patch_size, grid_w // patch_size
    if images.shape[0] == 0:
        return torch.zeros(0, grid_h, grid_w, dtype=torch.long, device=images.device)
    chunk_size = detector_kwargs.pop("chunk_size", None)
    unknown = sorted(set(detector_kwargs) - set(OPTIONS))
    if unknown:
        raise CaptumSiftError(
            f"unknown detector argument(s) {unknown}; expected some of {sorted(OPTIONS)} or chunk_size"
        )
    params = SiftParams(**detector_kwargs)  # type: ignore[arg-type]
    index, keypoints = _detect(images, backend, params, chunk_size)  # type: ignore[arg-type]
    counts = _bin(index, keypoints[:, :2], images.shape[0], grid_h, grid_w, patch_size)
    return torch.where(counts >= min_keypoints, counts, torch.zeros_like(counts))


class KeypointCounter(nn.Module):
    """Module form of :func:`count_keypoints`: stores the hyper-parameters.

    Example:
        >>> counter = KeypointCounter(patch_size=16)
        >>> counter
        KeypointCounter(patch_size=16, backend='lowe', min_keypoints=1, n_octave_layers=3, sigma=1.6,
            contrast_threshold=0.04, edge_threshold=10.0, precise_upscale=False, quantize=True)
        >>> counter(torch.zeros(1, 3, 32, 48)).shape
        torch.Size([1, 2, 3])
    """

    def __init__(
        self,
        patch_size: int,
        *,
        backend: Backend = DEFAULT_BACKEND,
        min_keypoints: int = 1,
        n_octave_layers: int = DEFAULTS.n_octave_layers,
        sigma: float = DEFAULTS.sigma,
        contrast_threshold: float = DEFAULTS.contrast_threshold,
        edge_threshold: float = DEFAULTS.edge_threshold,
        precise_upscale: bool = DEFAULTS.precise_upscale,
        quantize: bool = DEFAULTS.quantize,
    ) -> None:
        super().__init__()
        patch_size = check_int(patch_size, "patch_size", low=1)
        self.patch_size = patch_size
        self.backend: Backend = check_backend(backend)  # type: ignore[assignment]
        self.min_keypoints = check_min_keypoints(min_keypoints)
        self.params = SiftParams(n_octave_layers, sigma, contrast_threshold, edge_threshold, precise_upscale, quantize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Counts (B, H // P, W // P) of ``images`` (B, C, H, W)."""
        return count_keypoints(
            images,
            self.patch_size,
            backend=self.backend,
            min_keypoints=self.min_keypoints,
            **self.params.options(),
        )

    def extra_repr(self) -> str:
        fields = [f"patch_size={self.patch_size}", f"backend={self.backend!r}", f"min_keypoints={self.min_keypoints}"]
        fields += [f"{name}={value!r}" for name, value in self.params.options().items()]
        return ", ".join(fields)
