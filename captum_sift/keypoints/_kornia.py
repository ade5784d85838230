"""The ``"kornia"`` backend: kornia's own scale-space detector, with Lowe's contrast threshold and edge test.

The detector is ``kornia.feature.ScaleSpaceDetector`` configured as kornia's
``SIFTFeatureScaleSpace`` configures it: a ``ScalePyramid`` of the doubled
image (``n_octave_layers`` levels per octave, ``sigma``, octaves down to 32
px), ``BlobDoG`` responses, ``ConvQuadInterp3d`` sub-pixel refinement, minima
(bright blobs) as well as maxima (dark blobs), kornia's border rule. kornia
keeps the ``num_features`` strongest responses and has no contrast threshold
and no edge test; here every candidate is kept (``num_features`` is an upper
bound of the octave's extrema) and SPEC §1's tests are applied on kornia's
DoG responses:

* contrast: ``|D(x_hat)| * n_octave_layers >= contrast_threshold``, with
  ``D(x_hat)`` kornia's refined response on the 0..1 gray image;
* edge: ``det > 0`` and ``tr^2 * r < (r + 1)^2 * det`` of the 2x2 spatial
  Hessian of the DoG at the refined sample (finite differences).

The detector runs one octave at a time (:class:`_OneOctave`), so that each
detection's DoG volume is known. Gray input as OpenCV sees it: ITU-R 601 luma,
rounded to 8-bit steps when ``quantize``.
"""

from __future__ import annotations

import math

import torch
from kornia.feature import BlobDoG, ScaleSpaceDetector
from kornia.geometry.subpix import ConvQuadInterp3d
from kornia.geometry.transform import ScalePyramid
from torch import nn

from .._checks import check_int
from ..errors import CaptumSiftError
from ._pyramid import to_gray255
from .params import SiftParams

MIN_SIZE = 32  # kornia's SIFTFeatureScaleSpace: no octave of 32 px or less
MR_SIZE = 6.0  # kornia's frame size / detection sigma (the LAF scale)


class _RecordedDoG(BlobDoG):
    """kornia's DoG response, kept for the edge test of the octave's detections."""

    def forward(self, input: torch.Tensor, sigmas: torch.Tensor | None = None) -> torch.Tensor:
        self.volume = super().forward(input, sigmas)
        return self.volume


class _OneOctave(nn.Module):
    """A ``scale_pyr_module`` that hands ``ScaleSpaceDetector`` one octave of a computed ``ScalePyramid``."""

    def __init__(self, n_levels: int) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.octave: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def forward(self, img: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        levels, sigmas, dists = self.octave  # type: ignore[misc]
        return [levels], [sigmas], [dists]


def _detector(p: SiftParams, device: torch.device) -> tuple[ScalePyramid, ScaleSpaceDetector]:
    """kornia's pyramid and its DoG detector, as ``SIFTFeatureScaleSpace`` builds them (no orientation)."""
    pyramid = ScalePyramid(p.n_octave_layers, p.sigma, MIN_SIZE, double_image=True)
    detector = ScaleSpaceDetector(
        resp_module=_RecordedDoG(),
        subpix_module=ConvQuadInterp3d(),
        scale_pyr_module=_OneOctave(p.n_octave_layers),
        scale_space_response=True,
        minima_are_also_good=True,
        mr_size=MR_SIZE,
    )
    return pyramid.to(device), detector.to(device)


def _edge_and_contrast(
    dog: torch.Tensor, lafs: torch.Tensor, response: torch.Tensor, scale: tuple[float, float, float], p: SiftParams
) -> torch.Tensor:
    """Which of one image's detections (lafs (K, 2, 3), response (K,)) pass Lowe's contrast and edge tests.

    ``dog``: the octave's (L, H, W) DoG; ``scale``: octave pixel -> input pixel (x, y), and the sigma of
    the octave's first level.
    """
    _, h, w = dog.shape
    col = torch.round(lafs[:, 0, 2] / scale[0]).long().clamp(1, w - 2)
    row = torch.round(lafs[:, 1, 2] / scale[1]).long().clamp(1, h - 2)
    sigma = lafs[:, 0, 0] / (MR_SIZE * scale[0])  # in octave pixels
    level = torch.round(p.n_octave_layers * torch.log2(sigma / scale[2])).long()
    level = level.clamp(0, dog.shape[0] - 1)
    d = dog.to(torch.float64)

    def at(dr: int, dc: int) -> torch.Tensor:
        return d[level, row + dr, col + dc]

    dxx = at(0, 1) + at(0, -1) - 2 * at(0, 0)
    dyy = at(1, 0) + at(-1, 0) - 2 * at(0, 0)
    dxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
    tr, det = dxx + dyy, dxx * dyy - dxy * dxy
    r = p.edge_threshold
    edge = (det > 0) & (tr * tr * r < (r + 1) ** 2 * det)
    return edge & (response.abs() * p.n_octave_layers >= p.contrast_threshold)


def _detect_batch(images: torch.Tensor, p: SiftParams) -> list[torch.Tensor]:
    """One (K_b, 4) tensor of x, y, sigma, |response| per image of a (b, C, H, W) batch."""
    gray = to_gray255(images, p.quantize) / 255.0
    pyramid, detector = _detector(p, images.device)
    height, width = images.shape[2:]
    found: list[list[torch.Tensor]] = [[] for _ in range(images.shape[0])]
    with torch.no_grad():
        for levels, sigmas, dists in zip(*pyramid(gray), strict=True):
            oct_h, oct_w = levels.shape[-2:]  # > MIN_SIZE: ScalePyramid stops before
            detector.scale_pyr.octave = (levels, sigmas, dists)
            # Every extremum fits: at most one strict maximum and one strict minimum per 2x2x2 block.
            bound = 2 * math.ceil(p.n_octave_layers / 2) * math.ceil(oct_h / 2) * math.ceil(oct_w / 2)
            responses, lafs = detector.detect(gray, bound)
            scale = ((width - 1) / max(oct_w - 1, 1), (height - 1) / max(oct_h - 1, 1), float(sigmas[0, 0]))
            dog = detector.resp.volume[:, 0]  # (b, L, H, W)
            for b in range(images.shape[0]):
                filled = lafs[b, :, 0, 0] > 0
                laf, response = lafs[b, filled], responses[b, filled]
                keep = _edge_and_contrast(dog[b], laf, response, scale, p)
                laf, response = laf[keep], response[keep]
                found[b].append(torch.stack([laf[:, 0, 2], laf[:, 1, 2], laf[:, 0, 0] / MR_SIZE, response.abs()], 1))
    return [torch.cat(rows) if rows else images.new_zeros(0, 4) for rows in found]


def detect_kornia(
    images: torch.Tensor, p: SiftParams, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's detector on ``chunk_size`` images at a time (default 1: kornia's sparse one-image path).

    Returns ``image_index`` (K,) and ``keypoints`` (K, 4) = x, y, sigma, response
    in input pixels, sorted by image; float64 for float64 images, else float32.
    """
    if p.precise_upscale:
        raise CaptumSiftError("backend='kornia' doubles the image as kornia does (corners aligned); got "
                              "precise_upscale=True")  # fmt: skip
    chunk_size = 1 if chunk_size is None else check_int(chunk_size, "chunk_size", low=1)
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    rows: list[torch.Tensor] = []
    for start in range(0, images.shape[0], chunk_size):
        rows += _detect_batch(images[start : start + chunk_size].to(dtype), p)
    index = torch.cat([torch.full((len(r),), i, dtype=torch.long, device=images.device) for i, r in enumerate(rows)])
    return index, torch.cat(rows).to(dtype)
