"""Extrema of the DoG and their refinement, the package's Lowe detector (``backend="lowe"``), eager torch path.

As OpenCV's ``cv2.SIFT_create()``:

* candidates: ``|D| > floor(0.5 * contrast_threshold / n_octave_layers * 255)``
  and a non-strict 3x3x3 extremum, 5 pixels away from the border;
* quadratic refinement up to 5 steps, the border re-checked at every step;
* Lowe's contrast test ``|D(x_hat)| * n_octave_layers >= contrast_threshold`` and
  edge test ``tr^2 * r < (r + 1)^2 * det`` with r = ``edge_threshold``;
* candidates that converge to the same sample are merged (OpenCV removes
  them as duplicates).

Vectorised over the images of a chunk and over candidates; the only Python
loops are over the 5 refinement steps. The C kernels of :mod:`._native` do
the same on CPU float32.
"""

from __future__ import annotations

import math

import torch

from ._pyramid import Workspace
from .params import SiftParams

BORDER = 5  # SIFT_IMGBORDER
_MAX_STEPS = 5  # SIFT_MAX_INTERP_STEPS


def _boxes(dog: torch.Tensor, n_layers: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The inner samples of an (S+2, H, W, b) DoG stack and their 6 face neighbours, as views."""
    hh, ww = dog.shape[1] - 2 * BORDER, dog.shape[2] - 2 * BORDER

    def box(ds: int, dr: int, dc: int) -> torch.Tensor:
        return dog[1 + ds : 1 + ds + n_layers, BORDER + dr : BORDER + dr + hh, BORDER + dc : BORDER + dc + ww]

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


def extrema_eager(dog: torch.Tensor, threshold: float, n_layers: int, ws: Workspace) -> torch.Tensor:
    """Non-strict 3x3x3 extrema of an (S+2, H, W, b) DoG stack -> (n, 4) [layer, r, c, image].

    ``|D| > threshold``, 5 pixels away from the border, and ``D`` >= (<=) all
    26 neighbours. A dense prefilter (:func:`_prefilter_eager`) keeps the few samples
    that pass the 6 face neighbours; only those are gathered with their 26
    neighbours, so the result equals the full dense test.
    """
    _, h, w, b = dog.shape
    if h <= 2 * BORDER or w <= 2 * BORDER:
        return torch.zeros(0, 4, dtype=torch.long, device=dog.device)
    shape = (n_layers, h - 2 * BORDER, w - 2 * BORDER, b)
    layer, row, col, image = torch.unravel_index(_candidates(dog, threshold, shape, ws), shape)
    layer, row, col = layer + 1, row + BORDER, col + BORDER
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


def refine_eager(dog: torch.Tensor, cand: torch.Tensor, p: SiftParams) -> tuple[torch.Tensor, torch.Tensor]:
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
            & (pos[:, 1] >= BORDER) & (pos[:, 1] < h - BORDER)
            & (pos[:, 2] >= BORDER) & (pos[:, 2] < w - BORDER)
        )  # fmt: skip
        pos = pos[inside]
    pos = torch.cat(done_pos) if done_pos else cand[:0]
    fit = torch.cat(done_fit) if done_fit else dog.new_zeros(0, 7)
    contr, dxx, dyy, dxy = fit[:, 3], fit[:, 4], fit[:, 5], fit[:, 6]
    tr, det = dxx + dyy, dxx * dyy - dxy * dxy
    r = p.edge_threshold
    keep = (contr.abs() * p.n_octave_layers >= p.contrast_threshold) & (det > 0) & (tr * tr * r < (r + 1) ** 2 * det)
    fit = torch.cat([fit[:, :3], fit[:, 3:4].abs()], 1)
    return merge(pos[keep], fit[keep], dog.shape)


def merge(pos: torch.Tensor, fit: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates that converged to the same sample are one keypoint (OpenCV removes duplicates).

    Returns them sorted by sample (layer, r, c, image).
    """
    sel = first_of_each(sample_key(pos, shape))
    return pos[sel], fit[sel]


def sample_key(pos: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Flat index of each (layer, r, c, image) row of ``pos`` into a stack of ``shape`` (S+2, H, W, b)."""
    _, h, w, b = shape
    return ((pos[:, 0] * h + pos[:, 1]) * w + pos[:, 2]) * b + pos[:, 3]


def first_of_each(key: torch.Tensor) -> torch.Tensor:
    """Indices of one row per distinct key, in increasing key order."""
    key, order = torch.sort(key)
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    return order[first]
