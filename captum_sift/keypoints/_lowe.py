"""The package's Lowe (2004) DoG detector on one chunk of images (``backend="lowe"``).

It follows the conventions of OpenCV's ``cv2.SIFT_create()`` (the SPEC §1
reference) step by step, so that the two agree on real photographs: the scale
space of :mod:`._pyramid`, the extrema and their refinement of
:mod:`._extrema`. Orientation assignment is not done: it only repeats a
location once per extra dominant orientation, which does not change where
keypoints are.

On CPU, float32 chunks go through the C kernels of :mod:`._native` (the same
steps, one streamed pass per octave); the eager torch path serves CUDA,
float64 and machines without a C compiler.
"""

from __future__ import annotations

import math

import torch

from . import _native
from ._extrema import BORDER, extrema_eager, first_of_each, merge, refine_eager, sample_key
from ._pyramid import Workspace, blur, gaussian_kernel1d, initial_image, layer_sigmas, num_octaves
from .params import SiftParams


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
    sig = layer_sigmas(p)
    kernels = [gaussian_kernel1d(s, images.device, compute_dtype) for s in sig]
    thr = math.floor(0.5 * p.contrast_threshold / p.n_octave_layers * 255)
    base = initial_image(images, p, ws)
    native = _native.usable(base)
    streamed = (
        native and len(kernels) <= _native.MAX_GAUSS and max(k.numel() for k in kernels[1:]) // 2 <= _native.MAX_RADIUS
    )
    positions, fits, scales, keys, offset = [], [], [], [], 0
    for o in range(n_oct):
        h, w = base.shape[:2]
        if min(h, w) <= 2 * BORDER:
            break  # no sample of this or any later octave is far enough from the border
        dog = ws.get("dog", (p.n_octave_layers + 2, h, w, base.shape[2]), base)  # (S+2, H, W, b)
        if streamed:  # the whole octave in one native pass: its Gaussian layers are never written out
            cand, base = _native.octave(base, kernels, dog, p.n_octave_layers, thr, BORDER, ws)
            pos, fit = _native.refine(dog, cand, BORDER, p)
            keys.append(sample_key(pos, dog.shape) + offset)  # duplicates merged once, for all octaves
            offset += dog.numel()
        else:
            gauss = [base]
            for i in range(1, p.n_octave_layers + 3):
                out = ws.get(f"gauss{i}", base.shape, base) if native else None
                gauss.append(blur(gauss[-1], kernels[i], ws, out, dog[i - 1], native))
            if native:
                base = _native.half(gauss[p.n_octave_layers])
                pos, fit = merge(*_native.refine(dog, _native.extrema(dog, thr, BORDER), BORDER, p), dog.shape)
            else:
                base = gauss[p.n_octave_layers][0 : 2 * (h // 2) : 2, 0 : 2 * (w // 2) : 2].contiguous()
                pos, fit = refine_eager(dog, extrema_eager(dog, thr, p.n_octave_layers, ws), p)
        positions.append(pos)
        fits.append(fit)
        scales.append(torch.full((pos.shape[0],), 2.0 ** (o + first_octave), dtype=compute_dtype, device=pos.device))
    if not positions:
        return images.new_zeros(0, dtype=torch.long), images.new_zeros(0, 4)
    # Input-pixel coordinates of every octave's keypoints at once (a power-of-two scale is exact).
    pos, fit, scale = torch.cat(positions), torch.cat(fits), torch.cat(scales)
    if keys:
        sel = first_of_each(torch.cat(keys))
        pos, fit, scale = pos[sel], fit[sel], scale[sel]
    x = (pos[:, 2].to(compute_dtype) + fit[:, 0]) * scale
    y = (pos[:, 1].to(compute_dtype) + fit[:, 1]) * scale
    sigma = p.sigma * torch.pow(2.0, (pos[:, 0].to(compute_dtype) + fit[:, 2]) / p.n_octave_layers) * scale
    keypoints = torch.stack([x, y, sigma, fit[:, 3]], 1)
    image_index, order = torch.sort(pos[:, 3], stable=True)
    return image_index, keypoints[order]
