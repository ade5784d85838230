"""Batched Lowe (2004) DoG keypoint detector in torch: the ``"kornia"`` backend.

It follows the conventions of OpenCV's ``cv2.SIFT_create()`` (the SPEC §1
reference) step by step, so that the two agree on real photographs:

* gray image on OpenCV's 0..255 scale, quantised to 8-bit steps by default;
* the image doubled (bilinear, half-pixel centres as ``cv2.resize``) and blurred
  from the assumed camera blur 0.5 to sigma0 = 1.6;
* ``n_octave_layers + 3`` Gaussian images per octave, each blurred from the
  previous one with ``sqrt(s_i^2 - s_{i-1}^2)``; kernels of ``round(8 s + 1) | 1``
  taps with reflect-101 borders, as ``cv2.GaussianBlur`` on float images;
* each octave starts from Gaussian layer ``n_octave_layers`` of the previous
  one subsampled by 2 (nearest);
* candidates: ``|D| > floor(0.5 * contrast_threshold / n_octave_layers * 255)``
  and a non-strict 3x3x3 extremum, 5 pixels away from the border;
* quadratic refinement up to 5 steps, the border re-checked at every step;
* Lowe's contrast test ``|D(x_hat)| * n_octave_layers >= contrast_threshold`` and
  edge test ``tr^2 * r < (r + 1)^2 * det`` with r = ``edge_threshold``;
* candidates that converge to the same sample are merged (OpenCV removes
  them as duplicates).

Orientation assignment is not done: it only repeats a location once per extra
dominant orientation, which does not change where keypoints are.

Everything is vectorised over the images of a chunk (the batch is the channel
dimension of a depthwise convolution) and over candidates; the only Python
loops are over octaves, layers and the 5 refinement steps. On CPU, float32
chunks go through the C kernels of :mod:`._native` instead (the same steps,
one streamed pass per octave); this eager path serves CUDA, float64 and machines without a
C compiler.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

from . import _native

_INIT_SIGMA = 0.5  # blur assumed in the input image (Lowe 2004, OpenCV)
_BORDER = 5  # SIFT_IMG_BORDER
_MAX_STEPS = 5  # SIFT_MAX_INTERP_STEPS


@dataclass(frozen=True)
class SiftParams:
    """Hyper-parameters of the DoG detector (OpenCV's defaults)."""

    n_octave_layers: int = 3
    sigma: float = 1.6
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    double_image: bool = True
    precise_upscale: bool = False
    quantize: bool = True


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
    """Scratch tensors reused across layers, octaves and chunks (and, on CPU, calls: see ``detect``).

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


def _blur(
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


def _initial_image(images: torch.Tensor, p: SiftParams, ws: Workspace | None = None) -> torch.Tensor:
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
    return _blur(x, gaussian_kernel1d(sig_diff, x.device, x.dtype), ws)


def _layer_sigmas(p: SiftParams) -> list[float]:
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


def _boxes(dog: torch.Tensor, n_layers: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The inner samples of an (S+2, H, W, b) DoG stack and their 6 face neighbours, as views."""
    hh, ww = dog.shape[1] - 2 * _BORDER, dog.shape[2] - 2 * _BORDER

    def box(ds: int, dr: int, dc: int) -> torch.Tensor:
        return dog[1 + ds : 1 + ds + n_layers, _BORDER + dr : _BORDER + dr + hh, _BORDER + dc : _BORDER + dc + ww]

    return box(0, 0, 0), [box(*f) for f in _FACES]


def _prefilter_eager(dog: torch.Tensor, threshold: float, n_layers: int, out: torch.Tensor, ws: Workspace) -> None:
    """``out`` = 1 where a sample may be a 3x3x3 extremum, of the (n_layers, H - 10, W - 10, b) inner samples.

    ``|D| > threshold`` and the non-strict extremum over the 6 face neighbours
    (scale, row, column), a necessary condition of the 26-neighbour test that
    keeps 1-3 % of the samples on photographs; buffers reused.
    """
    c, faces = _boxes(dog, n_layers)
    # c > t  <=>  c >= next float above t: the threshold folds into the clamp.
    above = torch.nextafter(torch.tensor(float(threshold), dtype=dog.dtype), torch.tensor(math.inf, dtype=dog.dtype))
    thr = above.item()
    side = ws.get("side", out.shape, dog, torch.bool)
    for name, ext_op, bound, cmp, dest in (
        ("hi", torch.maximum, {"min": thr}, torch.ge, out),
        ("lo", torch.minimum, {"max": -thr}, torch.le, side),
    ):
        buf = ws.get(name, out.shape, dog)
        ext_op(faces[0], faces[1], out=buf)
        for v in faces[2:]:
            ext_op(buf, v, out=buf)
        buf.clamp_(**bound)
        cmp(c, buf, out=dest)
    out.logical_or_(side)


_FACES = ((-1, 0, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0))  # scale, column, row
# Measured: testing the 2 scale faces only (6 % of photo samples pass, not 1-3 %) makes the eager
# detector ~1.4x slower in all: gathering a candidate's neighbours costs far more than a dense pass.


def _candidates(dog: torch.Tensor, threshold: float, shape: tuple[int, int, int, int], ws: Workspace) -> torch.Tensor:
    """Flat indices into ``shape`` = (n_layers, H - 10, W - 10, b) of the samples that pass :func:`_prefilter_eager`."""
    n_layers, n = shape[0], math.prod(shape)
    # A bool buffer padded to whole 8-byte words: nonzero runs over the words
    # first (8x fewer elements; candidates are sparse), then inside the hits.
    words = ws.get("words", (-(-n // 8),), dog, torch.int64)
    words[-1] = 0
    mask = words.view(torch.bool)[:n].view(shape)
    _prefilter_eager(dog, threshold, n_layers, mask, ws)
    hit = words.ne(0).nonzero().squeeze(1)
    sub = words.view(torch.bool).view(-1, 8)[hit].nonzero()
    return hit[sub[:, 0]] * 8 + sub[:, 1]


def _extrema(dog: torch.Tensor, threshold: float, n_layers: int, ws: Workspace) -> torch.Tensor:
    """Non-strict 3x3x3 extrema of an (S+2, H, W, b) DoG stack -> (n, 4) [layer, r, c, image].

    ``|D| > threshold``, 5 pixels away from the border, and ``D`` >= (<=) all
    26 neighbours. A dense prefilter (:func:`_prefilter_eager`) keeps the few samples
    that pass the 6 face neighbours; only those are gathered with their 26
    neighbours, so the result equals the full dense test.
    """
    _, h, w, b = dog.shape
    if h <= 2 * _BORDER or w <= 2 * _BORDER:
        return torch.zeros(0, 4, dtype=torch.long, device=dog.device)
    shape = (n_layers, h - 2 * _BORDER, w - 2 * _BORDER, b)
    layer, row, col, image = torch.unravel_index(_candidates(dog, threshold, shape, ws), shape)
    layer, row, col = layer + 1, row + _BORDER, col + _BORDER
    sd, sr = h * w * b, w * b
    at = layer * sd + row * sr + col * b + image
    flat_dog = dog.reshape(-1)
    centre = flat_dog[at]
    is_max = centre > 0  # the prefilter kept |D| > threshold >= 0 only
    keep = torch.arange(at.numel(), device=dog.device)
    # The neighbours the prefilter did not see, in two rounds: those in the
    # sample's own scale reject most candidates before the scales above and
    # below are gathered.
    for ring in _RINGS:
        offsets = torch.tensor([ds * sd + dr * sr + dc * b for ds, dr, dc in ring], device=dog.device)
        near = torch.take(flat_dog, at[keep].unsqueeze(1) + offsets)
        c = centre[keep].unsqueeze(1)
        keep = keep[torch.where(is_max[keep].unsqueeze(1), c >= near, c <= near).all(1)]
    return torch.stack([layer, row, col, image], 1)[keep]


# The 20 neighbours the prefilter does not test: the 4 in-scale diagonals, then the 16 of the scales above and below.
_REST = [(ds, dr, dc) for ds in (-1, 0, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (ds, dr, dc) not in _FACES]
_RINGS = ([n for n in _REST if n[0] == 0 and n != (0, 0, 0)], [n for n in _REST if n[0] != 0])


def _local_fit(dflat: torch.Tensor, flat: torch.Tensor, strides: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Gradient and Hessian of the DoG at flat sample indices (finite differences, 0..1 scale)."""
    ds, dr, dc = strides
    offs = torch.tensor(
        [0, dc, -dc, dr, -dr, ds, -ds,
         dr + dc, dr - dc, -dr + dc, -dr - dc,
         ds + dc, ds - dc, -ds + dc, -ds - dc,
         ds + dr, ds - dr, -ds + dr, -ds - dr],
        device=flat.device,
    )  # fmt: skip
    v = dflat[flat.unsqueeze(1) + offs].unbind(1)
    s = 1.0 / 255.0  # OpenCV's img_scale: derivatives on the 0..1 scale
    centre = v[0]
    grad = torch.stack([(v[1] - v[2]) * (0.5 * s), (v[3] - v[4]) * (0.5 * s), (v[5] - v[6]) * (0.5 * s)], 1)
    dxx = (v[1] + v[2] - 2 * centre) * s
    dyy = (v[3] + v[4] - 2 * centre) * s
    dss = (v[5] + v[6] - 2 * centre) * s
    dxy = (v[7] - v[8] - v[9] + v[10]) * (0.25 * s)
    dxs = (v[11] - v[12] - v[13] + v[14]) * (0.25 * s)
    dys = (v[15] - v[16] - v[17] + v[18]) * (0.25 * s)
    return centre, grad, dxx, dyy, dss, dxy, dxs, dys


def _solve3(grad: torch.Tensor, dxx, dyy, dss, dxy, dxs, dys) -> torch.Tensor:
    """Offset -H^{-1} g of the quadratic fit (Cramer's rule; 0 where H is singular, as OpenCV)."""
    c00 = dyy * dss - dys * dys
    c01 = dxs * dys - dxy * dss
    c02 = dxy * dys - dyy * dxs
    det = dxx * c00 + dxy * c01 + dxs * c02
    c11 = dxx * dss - dxs * dxs
    c12 = dxy * dxs - dxx * dys
    c22 = dxx * dyy - dxy * dxy
    gx, gy, gs = grad.unbind(1)
    adj_g = [c00 * gx + c01 * gy + c02 * gs, c01 * gx + c11 * gy + c12 * gs, c02 * gx + c12 * gy + c22 * gs]
    inv = torch.stack(adj_g, 1)  # adj(H) g; H^{-1} g = adj(H) g / det
    singular = det == 0
    x = -inv / torch.where(singular, torch.ones_like(det), det).unsqueeze(1)
    return torch.where(singular.unsqueeze(1), torch.zeros_like(x), x)  # (n, 3): xc, xr, xi


def _refine(dog: torch.Tensor, cand: torch.Tensor, p: SiftParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadratic refinement, contrast and edge tests of candidates (n, 4) [layer, r, c, image].

    Returns the surviving samples (m, 4) [layer, r, c, image] and their
    (m, 4) [xc, xr, xi, |D(x_hat)|] sub-sample offsets and contrast, one per
    sample, sorted by sample.
    """
    n_s, h, w, b = dog.shape
    strides = (h * w * b, w * b, b)
    dflat = dog.reshape(-1)
    pos = cand.clone()
    done_pos, done_fit = [], []
    for _ in range(_MAX_STEPS):
        if pos.shape[0] == 0:
            break
        flat = pos[:, 0] * strides[0] + pos[:, 1] * strides[1] + pos[:, 2] * strides[2] + pos[:, 3]
        centre, grad, dxx, dyy, dss, dxy, dxs, dys = _local_fit(dflat, flat, strides)
        x = _solve3(grad, dxx, dyy, dss, dxy, dxs, dys)
        conv = (x.abs() < 0.5).all(1)
        g = grad * x  # summed in a fixed order, as the native kernel does
        contr = centre / 255.0 + 0.5 * (g[:, 0] + g[:, 1] + g[:, 2])
        done_pos.append(pos[conv])
        fit = torch.cat([x, torch.stack([contr, dxx, dyy, dxy], 1)], 1)  # (n, 7)
        done_fit.append(fit[conv])
        move = ~conv & (x.abs() <= 2**31 / 3).all(1)
        pos, x = pos[move], x[move]
        pos[:, 0] += torch.round(x[:, 2]).long()
        pos[:, 1] += torch.round(x[:, 1]).long()
        pos[:, 2] += torch.round(x[:, 0]).long()
        inside = (
            (pos[:, 0] >= 1) & (pos[:, 0] <= p.n_octave_layers)
            & (pos[:, 1] >= _BORDER) & (pos[:, 1] < h - _BORDER)
            & (pos[:, 2] >= _BORDER) & (pos[:, 2] < w - _BORDER)
        )  # fmt: skip
        pos = pos[inside]
    pos = torch.cat(done_pos) if done_pos else cand[:0]
    fit = torch.cat(done_fit) if done_fit else dog.new_zeros(0, 7)
    contr, dxx, dyy, dxy = fit[:, 3], fit[:, 4], fit[:, 5], fit[:, 6]
    tr, det = dxx + dyy, dxx * dyy - dxy * dxy
    r = p.edge_threshold
    keep = (contr.abs() * p.n_octave_layers >= p.contrast_threshold) & (det > 0) & (tr * tr * r < (r + 1) ** 2 * det)
    fit = torch.cat([fit[:, :3], fit[:, 3:4].abs()], 1)
    return _merge(pos[keep], fit[keep], dog.shape)


def _merge(pos: torch.Tensor, fit: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates that converged to the same sample are one keypoint (OpenCV removes duplicates).

    Returns them sorted by sample (layer, r, c, image).
    """
    sel = _first_of_each(_sample_key(pos, shape))
    return pos[sel], fit[sel]


def _sample_key(pos: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Flat index of each (layer, r, c, image) row of ``pos`` into a stack of ``shape`` (S+2, H, W, b)."""
    _, h, w, b = shape
    return ((pos[:, 0] * h + pos[:, 1]) * w + pos[:, 2]) * b + pos[:, 3]


def _first_of_each(key: torch.Tensor) -> torch.Tensor:
    """Indices of one row per distinct key, in increasing key order."""
    key, order = torch.sort(key)
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    return order[first]


def to_gray255(images: torch.Tensor, quantize: bool) -> torch.Tensor:
    """ITU-R 601 luma on OpenCV's 0..255 scale, (B, 1, H, W); rounded to 8-bit steps if ``quantize``."""
    gray = kornia.color.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    gray = gray * 255.0
    return torch.round(gray) if quantize else gray


def detect_chunk(images: torch.Tensor, p: SiftParams, ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Detect keypoints in one chunk of images (b, C, H, W) in [0, 1].

    Returns ``image_index`` (K,) and ``keypoints`` (K, 4) = x, y, sigma, response
    in input-pixel coordinates, sorted by image.
    """
    ws = Workspace() if ws is None else ws
    compute_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    images = images.to(compute_dtype)
    n_oct = num_octaves(images.shape[2], images.shape[3], p)
    first_octave = -1 if p.double_image else 0
    sig = _layer_sigmas(p)
    kernels = [gaussian_kernel1d(s, images.device, compute_dtype) for s in sig]
    thr = math.floor(0.5 * p.contrast_threshold / p.n_octave_layers * 255)
    base = _initial_image(images, p, ws)
    native = _native.usable(base)
    streamed = (
        native and len(kernels) <= _native.MAX_GAUSS and max(k.numel() for k in kernels[1:]) // 2 <= _native.MAX_RADIUS
    )
    positions, fits, scales, keys, offset = [], [], [], [], 0
    for o in range(n_oct):
        h, w = base.shape[:2]
        if min(h, w) <= 2 * _BORDER:
            break  # no sample of this or any later octave is far enough from the border
        dog = ws.get("dog", (p.n_octave_layers + 2, h, w, base.shape[2]), base)  # (S+2, H, W, b)
        if streamed:  # the whole octave in one native pass: its Gaussian layers are never written out
            cand, base = _native.octave(base, kernels, dog, p.n_octave_layers, thr, _BORDER, ws)
            pos, fit = _native.refine(dog, cand, _BORDER, p)
            keys.append(_sample_key(pos, dog.shape) + offset)  # duplicates merged once, for all octaves
            offset += dog.numel()
        else:
            gauss = [base]
            for i in range(1, p.n_octave_layers + 3):
                out = ws.get(f"gauss{i}", base.shape, base) if native else None
                gauss.append(_blur(gauss[-1], kernels[i], ws, out, dog[i - 1], native))
            if native:
                base = _native.half(gauss[p.n_octave_layers])
                pos, fit = _merge(*_native.refine(dog, _native.extrema(dog, thr, _BORDER), _BORDER, p), dog.shape)
            else:
                base = gauss[p.n_octave_layers][0 : 2 * (h // 2) : 2, 0 : 2 * (w // 2) : 2].contiguous()
                pos, fit = _refine(dog, _extrema(dog, thr, p.n_octave_layers, ws), p)
        positions.append(pos)
        fits.append(fit)
        scales.append(torch.full((pos.shape[0],), 2.0 ** (o + first_octave), dtype=compute_dtype, device=pos.device))
    if not positions:
        return images.new_zeros(0, dtype=torch.long), images.new_zeros(0, 4)
    # Input-pixel coordinates of every octave's keypoints at once (a power-of-two scale is exact).
    pos, fit, scale = torch.cat(positions), torch.cat(fits), torch.cat(scales)
    if keys:
        sel = _first_of_each(torch.cat(keys))
        pos, fit, scale = pos[sel], fit[sel], scale[sel]
    x = (pos[:, 2].to(compute_dtype) + fit[:, 0]) * scale
    y = (pos[:, 1].to(compute_dtype) + fit[:, 1]) * scale
    sigma = p.sigma * torch.pow(2.0, (pos[:, 0].to(compute_dtype) + fit[:, 2]) / p.n_octave_layers) * scale
    keypoints = torch.stack([x, y, sigma, fit[:, 3]], 1)
    image_index, order = torch.sort(pos[:, 3], stable=True)
    return image_index, keypoints[order]
