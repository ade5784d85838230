"""The Gaussian scale space of the package's Lowe detector (``backend="lowe"``), eager torch path.

Conventions of OpenCV's ``cv2.SIFT_create()`` (the SPEC §1 reference):

* gray image on OpenCV's 0..255 scale, quantised to 8-bit steps by default;
* the image doubled (bilinear, half-pixel centres as ``cv2.resize``) and blurred
  from the assumed camera blur 0.5 to sigma0 = 1.6;
* ``n_octave_layers + 3`` Gaussian images per octave, each blurred from the
  previous one with ``sqrt(s_i^2 - s_{i-1}^2)``; kernels of ``round(8 s + 1) | 1``
  taps with reflect-101 borders, as ``cv2.GaussianBlur`` on float images;
* each octave starts from Gaussian layer ``n_octave_layers`` of the previous
  one subsampled by 2 (nearest).

Images are stacked as (H, W, b), the images of a chunk innermost: the batch is
the channel dimension of a depthwise convolution. On CPU, float32 stacks go
through the C kernels of :mod:`._native` instead.
"""

from __future__ import annotations

import functools
import math

import kornia
import torch
import torch.nn.functional as F

from . import _native
from .params import SiftParams

_INIT_SIGMA = 0.5  # blur assumed in the input image (Lowe 2004, OpenCV)


@functools.lru_cache(maxsize=64)
def gaussian_kernel1d(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sampled, normalised Gaussian of ``round(8 sigma + 1) | 1`` taps (cv2.GaussianBlur on float).

    Cached (the same few sigmas in every call): the tensor is shared, never write into it.
    """
    ksize = int(round(sigma * 8 + 1)) | 1
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-0.5 * x * x / (sigma * sigma))
    return (g / g.sum()).to(device=device, dtype=dtype)


class Workspace:
    """Scratch tensors reused across layers, octaves and chunks (and, on CPU, calls: see ``_threads``).

    Allocating a fresh multi-MB temporary for every elementwise op makes the
    CPU detector spend a third of its time in page faults; reusing buffers
    avoids that without touching any process-wide allocator setting.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Let every buffer go."""
        self._buffers.clear()

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None):
        key = (name, shape, dtype or like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
        return buf


def _reflect101_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a reflect-101 padding (``gfedcb|abcdefgh|gfedcba``) of any width."""
    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def _pad_hw(x: torch.Tensor, pad: int, ws: Workspace | None = None) -> torch.Tensor:
    """Reflect-101 pad dims 0 and 1 of an (H, W, b) tensor (any pad width).

    The image is copied into the middle of the padded buffer and only the
    borders are gathered: two full ``index_select`` passes cost ~3x as much.
    """
    h, w, b = x.shape
    shape = (h + 2 * pad, w + 2 * pad, b)
    out = torch.empty(shape, dtype=x.dtype, device=x.device) if ws is None else ws.get("pad", shape, x)
    out[pad : pad + h, pad : pad + w] = x
    rows = _reflect101_index(h, pad, x.device)
    out[:pad, pad : pad + w] = x.index_select(0, rows[:pad])
    out[pad + h :, pad : pad + w] = x.index_select(0, rows[pad + h :])
    cols = _reflect101_index(w, pad, x.device) + pad
    out[:, :pad] = out.index_select(1, cols[:pad])
    out[:, pad + w :] = out.index_select(1, cols[pad + w :])
    return out


_SMALL_SINGLE = 160 * 160  # up to this many pixels, one image is blurred as a plain (1, 1, H, W) convolution


def _blur_single(xp: torch.Tensor, kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Blur of one padded image (H+2r, W+2r, 1): oneDNN's one-channel depthwise path is slow for it.

    Measured single-thread (this CPU): a plain (1, 1, H, W) convolution is up
    to 10x faster than the channels-last depthwise one up to ~160 x 160 px;
    above, k shifted multiply-adds per direction are ~2x faster (and give the
    depthwise convolution's values bit for bit on the sizes tried).
    """
    k = kernel.numel()
    if h * w <= _SMALL_SINGLE:
        y = F.conv2d(xp.view(1, 1, *xp.shape[:2]), kernel.view(1, 1, 1, k))
        return F.conv2d(y, kernel.view(1, 1, k, 1)).view(h, w, 1)
    taps = kernel.tolist()
    row = xp[:, 0:w] * taps[0]
    for i in range(1, k):
        row.add_(xp[:, i : i + w], alpha=taps[i])
    out = row[0:h] * taps[0]
    for i in range(1, k):
        out.add_(row[i : i + h], alpha=taps[i])
    return out


def blur(
    x: torch.Tensor,
    kernel: torch.Tensor,
    ws: Workspace | None = None,
    out: torch.Tensor | None = None,
    dog: torch.Tensor | None = None,
    native: bool | None = None,
) -> torch.Tensor:
    """Separable Gaussian blur of an (H, W, b) stack, reflect-101 borders; ``dog`` = result - ``x`` if given.

    On CPU float32 the native kernel (:mod:`._native`) does it in one pass,
    into ``out`` when given. Otherwise the images are the channels of a
    depthwise convolution in channels-last layout: measured ~3x faster on CPU
    than ``kornia.filters.gaussian_blur2d`` and ~8x faster than a (b, 1, H, W)
    convolution (benchmarks/keypoints.py).
    """
    b = x.shape[2]
    k = kernel.numel()
    if k // 2 <= _native.MAX_RADIUS and (_native.usable(x) if native is None else native):
        out = torch.empty_like(x) if out is None else out
        _native.blur(x, kernel, out, dog, ws or Workspace())
        return out
    xp = _pad_hw(x, k // 2, ws)
    if b == 1:
        y = _blur_single(xp, kernel, x.shape[0], x.shape[1])
    else:
        # (1, b, H+2r, W+2r) channels-last view. The batch stride must be the full
        # size: oneDNN falls back to a ~8x slower path for unsqueeze(0)'s stride.
        xp = xp.view(1, *xp.shape).permute(0, 3, 1, 2)
        y = F.conv2d(xp, kernel.view(1, 1, 1, k).expand(b, 1, 1, k).contiguous(), groups=b)
        y = F.conv2d(y, kernel.view(1, 1, k, 1).expand(b, 1, k, 1).contiguous(), groups=b)
        y = y[0].permute(1, 2, 0)  # (H, W, b), contiguous
    if dog is not None:
        torch.sub(y, x, out=dog)
    return y


def initial_image(images: torch.Tensor, p: SiftParams, ws: Workspace | None = None) -> torch.Tensor:
    """Base of octave 0 from (b, C, H, W) images in [0, 1] -> gray (H', W', b) on the 0..255 scale, blurred."""
    if p.double_image and not p.precise_upscale and _native.usable(images):
        x = _native.base(images, p.quantize, True, ws or Workspace())  # the same values as below, in one pass
    else:
        gray = to_gray255(images, p.quantize)
        if p.double_image and p.precise_upscale:  # cv2.warpAffine: pixel x of the input lands on 2x
            g = F.pad(gray, (0, 1, 0, 1), mode="replicate")
            b, _, h, w = gray.shape
            up = gray.new_empty(b, 1, 2 * h, 2 * w)
            up[..., 0::2, 0::2] = g[..., :-1, :-1]
            up[..., 0::2, 1::2] = 0.5 * (g[..., :-1, :-1] + g[..., :-1, 1:])
            up[..., 1::2, 0::2] = 0.5 * (g[..., :-1, :-1] + g[..., 1:, :-1])
            up[..., 1::2, 1::2] = 0.5 * (up[..., 0::2, 1::2] + 0.5 * (g[..., 1:, :-1] + g[..., 1:, 1:]))
            gray = up
        elif p.double_image:  # cv2.resize INTER_LINEAR: half-pixel centres
            gray = F.interpolate(gray, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = gray[:, 0].permute(1, 2, 0).contiguous()  # (H, W, b)
    init = _INIT_SIGMA * 2 if p.double_image else _INIT_SIGMA
    sig_diff = math.sqrt(max(p.sigma**2 - init**2, 0.01))
    return blur(x, gaussian_kernel1d(sig_diff, x.device, x.dtype), ws)


def layer_sigmas(p: SiftParams) -> list[float]:
    """Incremental blur of each Gaussian layer (OpenCV's ``sig[i]``)."""
    k = 2.0 ** (1.0 / p.n_octave_layers)
    sig = [p.sigma]
    for i in range(1, p.n_octave_layers + 3):
        prev = k ** (i - 1) * p.sigma
        sig.append(math.sqrt((prev * k) ** 2 - prev**2))
    return sig


def num_octaves(height: int, width: int, p: SiftParams) -> int:
    """OpenCV's octave count: ``round(log2(min side of the base) - 2)``."""
    scale = 2 if p.double_image else 1
    side = min(height, width) * scale
    return max(int(round(math.log2(side) - 2)), 0) if side > 0 else 0


def to_gray255(images: torch.Tensor, quantize: bool) -> torch.Tensor:
    """ITU-R 601 luma on OpenCV's 0..255 scale, (B, 1, H, W); rounded to 8-bit steps if ``quantize``."""
    gray = kornia.color.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    gray = gray * 255.0
    return torch.round(gray) if quantize else gray
