"""Does an attribution point at the ground truth? Quantus's localisation metrics on the patch grid, and ROAD.

The package scores patches (:func:`~captum_sift.faithfulness.methods.patch_attribution`),
so the ground truth is a patch mask (B, N): :func:`patch_masks` takes patch
masks as they are and pixel masks (B, H, W) with a patch inside when at least
half of its pixels are. :func:`localisation_scores` hands the patch scores and
the patch mask to Quantus's ``PointingGame``, ``RelevanceMassAccuracy``,
``RelevanceRankAccuracy`` and ``TopKIntersection`` as a one-channel sequence
of N features (B, 1, N) — each metric flattens its inputs, so the N patches
are its features. :func:`road_scores` runs pytorch-grad-cam's ``ROADCombined``
(Rong et al. 2022) with the patch scores spread over their pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_classes, check_int, shape_of
from ..attr.patches import patch_scores_to_pixels
from ..errors import CaptumSiftError
from ..vit import ViTAdapter, as_vit, eval_mode
from .methods import _Logits
from .metrics import _quantus

__all__ = ["LOCALISATION_METRICS", "ROAD_PERCENTILES", "TOP_K", "localisation_scores", "patch_masks", "road_scores"]

#: The rows :func:`localisation_scores` gives, in order (higher is better for each).
LOCALISATION_METRICS = ("pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection")
#: Patches of Quantus's ``TopKIntersection`` (fewer on a grid of <= 5 patches: Quantus needs k < N).
TOP_K = 5
#: The percentiles of pixels kept of :func:`road_scores` (pytorch-grad-cam's default).
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def patch_masks(masks: Any, batch: int, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Ground-truth masks as boolean patch masks (B, N), checked.

    ``masks``: patch masks (B, N), N = grid[0] x grid[1] patches in row-major
    order, or pixel masks (B, H, W) of the images' size, H = grid[0] x
    ``patch_size`` (a patch is inside when at least half of its pixels are).
    Either bool or numbers that are all 0 or 1 (nothing is thresholded);
    every image's mask must hold at least one patch.

    Example:
        >>> pixels = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> pixels[0, :2, 2:] = True  # the top-right 2 x 2 patch
        >>> patch_masks(pixels, 1, (2, 2), 2)
        tensor([[False,  True, False, False]])
    """
    n = grid[0] * grid[1]
    pixel_shape = (batch, grid[0] * patch_size, grid[1] * patch_size)
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) not in ((batch, n), pixel_shape):
        raise CaptumSiftError(f"expected masks of shape (B, N) = ({batch}, {n}) (patch masks) or (B, H, W) = "
                              f"{pixel_shape} (pixel masks), got {shape_of(masks)}")  # fmt: skip
    masks = _binary(masks.detach(), "masks")
    if masks.dim() == 2:
        _non_empty(masks)
        return masks
    share = torch.nn.functional.avg_pool2d(masks.unsqueeze(1).float(), patch_size).flatten(1)
    _non_empty(share >= 0.5, "covers no patch by half or more")
    return share >= 0.5


def _binary(masks: torch.Tensor, name: str) -> torch.Tensor:
    """``masks`` as bool: bool tensors as they are, numbers only where every value is 0 or 1."""
    if masks.dtype == torch.bool:
        return masks
    if masks.is_complex():
        raise CaptumSiftError(f"expected binary {name} (bool, or 0 and 1), got dtype {masks.dtype}")
    inside = masks == 1
    if not bool((inside | (masks == 0)).all()):
        values = masks[~(inside | (masks == 0))]
        nan = int(torch.isnan(values).sum()) if values.is_floating_point() else 0
        shown = sorted({float(v) for v in values[:1000].double().tolist() if not math.isnan(v)})[:3]
        raise CaptumSiftError(f"expected binary {name} (bool, or 0 and 1 only; nothing is thresholded), got "
                              f"{values.numel()} other values ({nan} NaN; e.g. {shown})")  # fmt: skip
    return inside


def _non_empty(masks: torch.Tensor, how: str = "holds no patch") -> None:
    empty = (~masks.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise CaptumSiftError(f"expected every image's mask to hold at least one patch, the mask of images "
                              f"{empty[:10]}{' ...' if len(empty) > 10 else ''} {how}")  # fmt: skip


def localisation_scores(scores: torch.Tensor, masks: torch.Tensor, *, k: int = TOP_K) -> dict[str, list[float]]:
    """Quantus's localisation metrics of patch scores (B, N) against patch masks (B, N), one value per image.

    ``pointing_game``: 1 where a patch of the highest score lies in the mask
    (ties count as hits, as in Quantus); ``relevance_mass_accuracy``: the
    share of the positive relevance inside the mask (Arras et al. 2022
    count positive relevance only: negative scores are set to 0 first; NaN
    where no score is positive); ``relevance_rank_accuracy``: the share of
    the mask's K patches among the K highest scores; ``top_k_intersection``:
    the share of the ``k`` highest-scoring patches inside the mask (Quantus
    needs 1 <= k < N). Quantus defaults otherwise (each attribution divided
    by the batch's largest magnitude, which none of the four depends on).
    NaN, never a value read off nothing: in every metric for an image whose
    scores are not all finite, all equal or all negative (Quantus refuses
    such attributions: they order nothing or hold no relevance; decided per
    image, so a value never depends on the other images of its batch), and
    in ``relevance_mass_accuracy`` where no score is positive.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1, 0.5, 0.2]])
        >>> masks = torch.tensor([[True, False, False, False]])
        >>> {m: round(v[0], 3) for m, v in localisation_scores(scores, masks, k=2).items()}
        {'pointing_game': 1.0, 'relevance_mass_accuracy': 0.529, 'relevance_rank_accuracy': 1.0, 'top_k_intersection': 0.5}
    """  # noqa: E501
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise CaptumSiftError(f"expected real scores of shape (B, N), got {shape_of(scores)}")
    if not scores.is_floating_point():  # bool or integer scores order patches by ties only
        raise CaptumSiftError(f"expected floating-point scores, got dtype {scores.dtype}")
    if not isinstance(masks, torch.Tensor) or masks.shape != scores.shape:
        raise CaptumSiftError(f"expected masks of the scores' shape {tuple(scores.shape)}, got {shape_of(masks)}")
    masks = _binary(masks.detach(), "masks")
    _non_empty(masks)
    batch, n = scores.shape
    if n < 2:
        raise CaptumSiftError(f"expected at least 2 patches to localise among, got scores of shape {(batch, n)}")
    k = check_int(k, "k (patches of the top-k intersection)", low=1, high=n - 1)
    quantus = _quantus()

    a_all = scores.detach().cpu().double()
    finite = torch.isfinite(a_all).all(dim=1)
    usable = finite & (a_all.amax(dim=1) > a_all.amin(dim=1)) & (a_all.amax(dim=1) >= 0)
    positive = usable & (a_all > 0).any(dim=1)
    out = {metric: [float("nan")] * batch for metric in LOCALISATION_METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = {"pointing_game": (quantus.PointingGame(disable_warnings=True), usable),
                   "relevance_mass_accuracy": (quantus.RelevanceMassAccuracy(disable_warnings=True), positive),
                   "relevance_rank_accuracy": (quantus.RelevanceRankAccuracy(disable_warnings=True), usable),
                   "top_k_intersection": (quantus.TopKIntersection(k=k, disable_warnings=True), usable)}  # fmt: skip
        for name, (metric, rows) in metrics.items():
            if not bool(rows.any()):
                continue
            a = a_all[rows].numpy()[:, None, :]
            if name == "relevance_mass_accuracy":
                a = a.clip(min=0)
            s = masks.cpu()[rows].double().numpy()[:, None, :]
            x, y = np.zeros_like(a), np.zeros(a.shape[0], dtype=np.int64)  # x is read for its shape only
            values = metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s, channel_first=True)
            for row, value in zip(rows.nonzero().flatten().tolist(), values, strict=True):
                out[name][row] = float(value)
    return out


def road_scores(
    vit: ViTAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    *,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> list[float]:
    """ROAD (Rong et al. 2022) of patch scores (B, N) on model-space images: pytorch-grad-cam's ``ROADCombined``.

    Its parts, as ``ROADCombined`` puts them together: pytorch-grad-cam's
    ``PerturbationConfidenceMetric`` with ``RemoveMostRelevantFirst`` and
    ``RemoveLeastRelevantFirst`` at each percentile and its
    ``NoisyLinearImputer``, whose noise is seeded per image.

    For each percentile p, the pixels of the patches above it are removed
    (most relevant first, MoRF) or those below it (least relevant first,
    LeRF) and filled by noisy linear imputation from their neighbours; the
    value per image is the mean over the percentiles of (LeRF change - MoRF
    change) / 2 of the target class's logit: higher is better (removing what
    the attribution calls relevant costs more than removing the rest). The
    imputation is linear, so it works the same on model-space (normalised)
    images; its noise (0.01) is drawn from torch's generator seeded with
    ``seed + i`` at each imputation of image i (so an image's value does not
    depend on the others of its batch; the global state is restored after). An image
    whose scores are not all finite or all equal (they rank nothing) gets NaN. ``targets``
    are checked against the model's classes.
    """
    vit = as_vit(vit)
    try:
        from pytorch_grad_cam.metrics.perturbation_confidence import (
            PerturbationConfidenceMetric,
            RemoveLeastRelevantFirst,
            RemoveMostRelevantFirst,
        )
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise CaptumSiftError(
            "ROAD needs pytorch-grad-cam: pip install grad-cam "
            "(from a clone of captum_sift: pip install -c constraints.txt '.[gradcam]')"
        ) from exc
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    batch = images.shape[0]
    grid = vit.grid(images)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (batch, grid[0] * grid[1]):
        raise CaptumSiftError(f"expected scores of shape ({batch}, {grid[0] * grid[1]}) (one per patch of the "
                              f"{grid[0]} x {grid[1]} grid), got {shape_of(scores)}")  # fmt: skip
    classes = vit.num_classes
    if classes is None:
        vit.check_classifier()
        with torch.no_grad(), eval_mode(vit.model):
            classes = int(vit.logits(images[:1]).shape[1])
    targets = check_classes(targets, batch, "targets", high=classes)
    percentiles = [check_int(p, "every ROAD percentile", low=1, high=99) for p in percentiles]
    if not percentiles:
        raise CaptumSiftError("expected at least one ROAD percentile, got none")
    detached = scores.detach()
    # an image whose scores are not finite or all equal ranks nothing: NaN, as in localisation_scores
    finite = (torch.isfinite(detached).all(dim=1) & (detached.amax(dim=1) > detached.amin(dim=1))).cpu()
    out = [float("nan")] * batch
    rows = finite.nonzero().flatten().tolist()
    if not rows:
        return out
    picked = scores.detach().cpu().double()[finite]
    cams = patch_scores_to_pixels(picked, (len(rows), 1, *images.shape[2:]), vit.patch_size)[:, 0].float().numpy()
    imputer = _seeded_imputer([seed + row for row in rows])
    model, x = _Logits(vit), images.detach()[finite.to(images.device)]
    chosen = [ClassifierOutputTarget(int(t)) for t in targets[finite.to(targets.device)]]
    with torch.random.fork_rng(devices=[]), torch.no_grad(), eval_mode(vit.model), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2's, on pytorch-grad-cam's tensors
        lerf = [PerturbationConfidenceMetric(RemoveLeastRelevantFirst(p, imputer))(x, cams, chosen, model)
                for p in percentiles]  # fmt: skip
        morf = [PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, imputer))(x, cams, chosen, model)
                for p in percentiles]  # fmt: skip
    values = ((np.mean(lerf, axis=0) - np.mean(morf, axis=0)) / 2).tolist()  # ROADCombined's value
    for row, value in zip(rows, values, strict=True):
        out[row] = float(value)
    return out


def _seeded_imputer(seeds: list[int]) -> Any:
    """pytorch-grad-cam's NoisyLinearImputer, the generator seeded with ``seeds[i]`` before image i's imputation.

    ``PerturbationConfidenceMetric`` imputes the images of a batch in order, once per call.
    """
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    class SeededImputer(NoisyLinearImputer):
        calls = 0

        def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            torch.manual_seed(seeds[self.calls % len(seeds)])
            self.calls += 1
            return super().__call__(img, mask)

    return SeededImputer()
