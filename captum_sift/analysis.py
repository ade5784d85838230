"""analyze(): the patch-interrelation analysis of a ViT on a batch (SPEC §2-5)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from ._checks import all_finite, check_image_space, check_images, check_int, shape_of
from .errors import CaptumSiftError
from .functional import _check_counts, _theta, _theta_weights, focus_index, interrelation, patch_block
from .keypoints import count_keypoints
from .report import InterrelationReport
from .settings import LayerChoice, ThetaSettings, resolve_layers
from .vit import ViTAdapter, as_vit, non_finite_attention

__all__ = ["analyze", "model_normalization", "resolve_layers", "to_model_and_pixels"]

# Undoing the normalisation of a normalised image gives back [0, 1] up to rounding.
_TOL = 1e-4
# A perturbation (Captum's NoiseTunnel, sensitivity_max, infidelity) pushes pixels out of [0, 1], but its noise
# averages out over a patch (sigma / P for P x P pixels); a wrong normalisation (or 0..255 values) moves whole
# regions. Patch means (per image and channel) may leave [0, 1] by _PATCH_TOL + 5 sigma / P, sigma the image's
# noise level estimated from its neighbour differences (their median: edges hardly move it).
_PATCH_TOL = 0.05
# A normalised image whose normalisation is undone usually spans most of [0, 1]; raw pixels taken for normalised
# ones, or other statistics, squeeze it into a narrow band. So can a dark or hazy photo: a warning, not an error.
_MIN_SPAN = 0.5
# Input that is itself in [0, 1] (raw pixels?) must spread wider still once de-normalised.
_MIN_SPAN_PIXELS = 0.75


def model_normalization(model: nn.Module | ViTAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input mean and std, each (C,) (see :func:`captum_sift.vit.as_vit`)."""
    vit = as_vit(model)
    return torch.tensor(vit.mean), torch.tensor(vit.std)


def _stats_hint(vit: ViTAdapter) -> str:
    return f"mean={list(vit.mean)}, std={list(vit.std)}"


_ADVICE = (
    "if they are pixels in [0, 1], pass image_space='pixel'; if they were normalised with other "
    "statistics, pass those as mean=/std="
)


def _patch_means_within(pixels: torch.Tensor, patch_size: int) -> tuple[bool, float, float, float]:
    """Whether the patch means of ``pixels`` leave [0, 1] by no more than a perturbation's noise explains.

    Returns (within, lowest patch mean, highest patch mean, the smallest tolerance of the images).
    """
    pixels = pixels.float()
    height, width = pixels.shape[-2:]
    if height % patch_size or width % patch_size:  # the model refuses the size later, with its own message
        patch_size = 1
    means = torch.nn.functional.avg_pool2d(pixels, patch_size).flatten(1)  # (B, C Gh Gw)
    steps = (pixels[..., :, 1:] - pixels[..., :, :-1]).abs().flatten(1)
    sigma = steps.median(dim=1).values / (0.6745 * math.sqrt(2))  # (B,): white noise's sigma from its MAD
    tolerance = _PATCH_TOL + 5 * sigma / patch_size
    beyond = torch.maximum(-means, means - 1).amax(dim=1)  # (B,): how far the patch means leave [0, 1]
    return bool((beyond <= tolerance).all()), float(means.min()), float(means.max()), float(tolerance.min())


def check_model_space(vit: ViTAdapter, images: torch.Tensor, need_pixels: bool = True) -> torch.Tensor | None:
    """Pixels in [0, 1] behind finite model-space ``images`` (None unless ``need_pixels``); an error when they
    cannot be normalised ones.

    One pass takes every channel's minimum and maximum in every image (NaN
    propagates, so it settles finiteness too); ``x * std + mean`` is monotone
    in float arithmetic as well, so the pixel range and the channel spans
    follow from them exactly, without a pass over the pixels.

    Refused (certainly wrong): de-normalised values outside [0, 1] whose
    patch means (per image and channel) leave [0, 1] too, by more than
    0.05 + 5 sigma / P, sigma the image's noise level (estimated from the
    median neighbour difference): 0..255 values, other statistics over a
    photo with bright or dark regions. Values outside [0, 1] within that
    are a perturbation's noise (Captum's NoiseTunnel, ``sensitivity_max``,
    ``infidelity``) or a resize's ringing: the pixels are clipped to [0, 1].
    A batch whose widest channel spans < 0.5 (< 0.75 when the input itself
    lies in [0, 1]) only warns, once per statistics: raw pixels or other
    statistics squeeze it so, but so can a dark or hazy photo. Statistics
    close to the right ones (CLIP's for ImageNet's) pass unseen.
    """
    if images.numel() == 0:
        raise CaptumSiftError(f"expected non-empty images, got shape {tuple(images.shape)}")
    images = images.detach()
    mean, std = vit.stats(images)
    flat = images.flatten(2)
    lo, hi = flat.amin(2), flat.amax(2)  # (B, C): NaN propagates
    if not (all_finite(lo) and all_finite(hi)):
        raise CaptumSiftError("expected finite floating-point images")
    m, s = mean.view(1, -1), std.view(1, -1)
    ends = torch.stack([lo * s + m, hi * s + m])  # the pixels' per-channel ends, as the pixels round them
    p_lo, p_hi = ends.amin(0), ends.amax(0)
    lo_all, hi_all = float(p_lo.min()), float(p_hi.max())
    span = float((p_hi - p_lo).max())  # the widest channel of the widest image
    pixels = None
    if lo_all < -_TOL or hi_all > 1 + _TOL:
        pixels = (images * std).add_(mean)
        within, mean_lo, mean_hi, tolerance = _patch_means_within(pixels, vit.patch_size)
        if not within:
            raise CaptumSiftError(
                f"images given as model input (image_space='model') are not normalised with the model's statistics "
                f"({_stats_hint(vit)}): undoing that normalisation gives values in [{lo_all:.3g}, {hi_all:.3g}] and "
                f"patch means in [{mean_lo:.3g}, {mean_hi:.3g}], not [0, 1] (a perturbation's noise averages out "
                f"over a patch: its patch means leave [0, 1] by less than ~{tolerance:.2g} here); " + _ADVICE
            )
    looks_like_pixels = float(lo.min()) >= 0.0 and float(hi.max()) <= 1.0
    bar = _MIN_SPAN_PIXELS if looks_like_pixels else _MIN_SPAN
    if span < bar:
        # One text per statistics and bar: Python's warning registry shows it once, not once per batch.
        warnings.warn(
            f"images given as model input (image_space='model') may be un-normalised or normalised with other "
            f"statistics than the model's ({_stats_hint(vit)}): undoing that normalisation leaves every channel "
            f"of every image in a band narrower than {bar:g} (raw pixels passed as model input land in "
            f"[mean, mean + std]; a dark or hazy photo can be that narrow too); " + _ADVICE,
            UserWarning,
            stacklevel=2,
        )
    if not need_pixels:
        return None
    if pixels is None:
        pixels = (images * std).add_(mean)
    return pixels.clamp_(0, 1)


def _check_pixel_input(vit: ViTAdapter, images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] for keypoints; values a perturbation pushed out of [0, 1] are clipped (the model sees
    them as given), values no perturbation explains are refused, see :func:`check_model_space`."""
    if not images.is_floating_point() or images.numel() == 0:
        return check_images(images)  # its messages for integer and empty input
    lo, hi = (float(v) for v in torch.aminmax(images))
    if lo >= 0.0 and hi <= 1.0:
        return images
    if not all_finite(images):
        return check_images(images)  # names the NaN / Inf values
    within, mean_lo, mean_hi, tolerance = _patch_means_within(images, vit.patch_size)
    if within:
        return images.clamp(0, 1)
    hint = "; this looks like a 0..255 image: divide it by 255" if lo >= 0.0 and hi > 2.0 else ""
    raise CaptumSiftError(
        f"expected pixel images (image_space='pixel') with values in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
        f"and patch means in [{mean_lo:.3g}, {mean_hi:.3g}] (a perturbation's noise averages out over a patch: "
        f"its patch means leave [0, 1] by less than ~{tolerance:.2g} here){hint}"
    )


def to_model_and_pixels(
    vit: ViTAdapter, images: torch.Tensor, image_space: str, need_pixels: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(model input, pixel images in [0, 1] or None when not needed) for images in ``image_space``.

    Both spaces are checked the same way whether pixels are needed or not
    (:func:`check_model_space`). Pixel input becomes model input in the
    model's dtype (a float64, half or bfloat16 model gets its own dtype).
    """
    check_image_space(image_space)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    if images.device.type == "meta":
        raise CaptumSiftError("expected images with data (on a CPU or an accelerator), got a tensor on the meta device")
    if images.shape[1] != vit.in_chans:
        raise CaptumSiftError(f"expected {vit.in_chans}-channel images for this model, got shape {tuple(images.shape)}")
    images = images.detach()
    if image_space == "pixel":
        pixels = _check_pixel_input(vit, images)
        mean, std = vit.stats(images)
        return ((images - mean) / std).to(vit.dtype), pixels
    if not images.is_floating_point():
        raise CaptumSiftError("expected finite floating-point images")
    return images, check_model_space(vit, images, need_pixels)


def analyze(
    model: nn.Module | ViTAdapter,
    images: torch.Tensor,
    keypoint_counts: torch.Tensor | None = None,
    settings: ThetaSettings | None = None,
    *,
    image_space: Literal["model", "pixel"] = "model",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    query_patch: int | None = None,
    **options: Any,
) -> InterrelationReport:
    """Patch-interrelation analysis of a ViT on a batch (paper §3-4, SPEC §2-5).

    One non-fused forward, streamed layer by layer (:func:`iter_attention`):
    for every analysed layer and head, θ_i (eq. 3), the classes θ_KK, θ_KN,
    θ_NK, θ_NN (eq. 4) and the attention focus index (eq. 5). Only one
    layer's attention is alive at a time.

    Args:
        model: a timm, torchvision or Hugging Face ViT, or a
            :class:`~captum_sift.vit.ViTAdapter` (any prefix tokens, patch
            size, grid).
        images: a batch in the model's input space (``image_space="model"``,
            normalised with ``mean``/``std``) or pixels in [0, 1]
            (``image_space="pixel"``: normalised here).
        keypoint_counts: t_j of every patch, (B, N) or (B, Gh, Gw). If None,
            :func:`~captum_sift.count_keypoints` counts them on the pixel
            images (model-space images are un-normalised first). Either way,
            images that cannot have been normalised with ``mean``/``std``
            are refused and a suspiciously narrow batch warns, see
            :func:`check_model_space`.
        settings: a :class:`~captum_sift.ThetaSettings` (gamma, weighted,
            include_self, min_keypoints, layers, keypoint_backend); its
            fields may also be given as keyword ``options``, which replace
            them. A stage name as ``layers`` analyses every block.
        image_space: ``"model"`` or ``"pixel"``, see ``images``.
        mean, std: the model's input statistics per channel (default: the
            adapter's, see :func:`~captum_sift.vit.as_vit`): sequences,
            arrays or tensors of finite numbers (std > 0), one value for
            every channel or one per channel.
        query_patch: patch whose attention row is kept for Fig. 7b (default:
            the patch with the most keypoints of each image).

    Returns:
        An :class:`InterrelationReport`.

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3)
        >>> report = analyze(model, torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[1, 0, 2, 0], [0, 0, 0, 3]]))
        >>> report.kk.shape, report.patch_theta.shape
        (torch.Size([2, 3, 3]), torch.Size([2, 3, 4]))
    """
    vit = as_vit(model, mean=mean, std=std)
    theta_settings = ThetaSettings.resolve(settings, **options)
    return _analyze(vit, images, keypoint_counts, theta_settings, image_space, query_patch)


class PatchThetas(NamedTuple):
    """What the per-patch scores need of an analysis (``_analyze(..., full=False)``), without a report."""

    layers: list[int]  # the analysed layers
    patch_theta: torch.Tensor  # (B, L, N): θ_i averaged over heads
    kk: torch.Tensor | None  # (B, L, h), when the scores' layers are a stage name
    keypoint_counts: torch.Tensor  # (B, N)

    def scores(self, layers: LayerChoice) -> torch.Tensor:
        """The SPEC §7 per-patch scores (B, N), as :func:`patch_scores_from_report` gives them from a report."""
        return _patch_scores(self.patch_theta, self.layers, layers, self.kk)


def _analyze(
    vit: ViTAdapter,
    images: torch.Tensor,
    keypoint_counts: torch.Tensor | None,
    theta_settings: ThetaSettings,
    image_space: Literal["model", "pixel"],
    query_patch: int | None,
    full: bool = True,
) -> InterrelationReport | PatchThetas:
    """:func:`analyze` on an adapter; ``full=False``: only what the per-patch scores need, as :class:`PatchThetas`.

    The report's classes, focus index, query rows and sums take ~2-3 % of a
    forward on a ViT-S; an attribution that returns no report skips them.
    """
    layer_list = theta_settings.layer_list(vit.depth)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    if images.shape[0] == 0:
        raise CaptumSiftError(f"expected at least one image, got shape {tuple(images.shape)}")
    grid = vit.grid(images)
    n = grid[0] * grid[1]
    query_index = None if query_patch is None else check_int(query_patch, "query_patch", 0, n - 1)
    model_input, pixels = to_model_and_pixels(vit, images, image_space, need_pixels=keypoint_counts is None)
    if keypoint_counts is None:
        keypoint_counts = count_keypoints(pixels, vit.patch_size, backend=theta_settings.keypoint_backend)
    counts = _check_counts(keypoint_counts, images.shape[0], n).to(images.device).long()
    if query_patch is None:
        query = counts.argmax(dim=1)  # first patch with the most keypoints
    else:
        query = torch.full((images.shape[0],), query_index, device=images.device)
    prefix = vit.num_prefix_tokens
    gamma, min_keypoints = theta_settings.gamma, theta_settings.min_keypoints
    wanted = set(layer_list)
    weights = _theta_weights(counts.float(), weighted=theta_settings.weighted, min_keypoints=min_keypoints)
    thetas, focuses, query_rows = [], [], []
    rows = torch.arange(images.shape[0], device=images.device)
    attended = None  # S_i of every layer in turn: one buffer

    def measure(index: int, attn: torch.Tensor) -> None:
        """θ, focus and query row of one block's map, inside its forward (the map is still in cache)."""
        nonlocal attended
        if index not in wanted:
            return
        attn_patch = patch_block(attn.float(), prefix)  # (B, h, N, N)
        line = attn_patch.mean(dim=-1, keepdim=True)  # (B, h, N, 1): eq. 2's row means
        # The map is checked through its patch rows' means, which θ takes anyway: NaN or Inf in a patch row
        # makes its mean non-finite (a full pass more per layer otherwise); nothing here reads prefix rows.
        if not (all_finite(line) or all_finite(attn_patch)):  # a mean that overflowed: settled exactly
            raise non_finite_attention(index)
        if attended is None:
            attended = torch.empty(attn_patch.shape, dtype=attn_patch.dtype, device=attn_patch.device)
        thetas.append(_theta(attn_patch, weights, gamma, theta_settings.include_self, line, attended))  # (B, h, N)
        if full:
            focuses.append(focus_index(attn_patch))
            query_rows.append(attn_patch[rows, :, query].mean(dim=1))

    # Each map is measured inside its block's forward, as the capture hands it over: read while still in
    # cache, and not kept past the block's own use of it.
    for _ in vit._iter_attention(model_input, layer_list[-1], unchecked=wanted, consume=measure):
        pass
    theta = torch.stack(thetas, dim=1)  # (B, L, h, N): the per-head statistics of all layers at once
    patch_theta = torch.nanmean(theta, dim=2)  # SPEC §7: mean over heads
    if not full:
        stage = isinstance(theta_settings.layers, str)
        kk = interrelation(theta.flatten(1, 2), counts, min_keypoints).kk.view(theta.shape[:3]) if stage else None
        return PatchThetas(layer_list, patch_theta, kk, counts)
    classes = interrelation(theta.flatten(1, 2), counts, min_keypoints)  # (B, L * h)
    per_image = {
        "kk": classes.kk.view(theta.shape[:3]),
        "nk": classes.nk.view(theta.shape[:3]),
        "focus": torch.stack(focuses, dim=1),
        "patch_theta": patch_theta,
        "query_attention": torch.stack(query_rows, dim=1),
    }
    per_image["keypoint_counts"] = counts
    per_image["query_patch"] = query
    report_settings = {
        "gamma": gamma,
        "weighted": theta_settings.weighted,
        "include_self": theta_settings.include_self,
        "min_keypoints": min_keypoints,
        "num_prefix_tokens": prefix,
        "model": vit.name,
        "family": vit.family,
    }
    return InterrelationReport.from_per_image(
        layers=layer_list, grid_size=grid, settings=report_settings, per_image=per_image
    )


def patch_scores_from_report(report: InterrelationReport, layers: LayerChoice = None) -> torch.Tensor:
    """Per-patch score of SPEC §7: θ_i averaged over heads and the chosen layers -> (B, N).

    Args:
        report: an :class:`InterrelationReport` with per-image data.
        layers: None (every analysed layer), layer indices (each must be in
            the report), or a stage name. A stage is found **per image** from
            that image's own θ_KK curve (:func:`~captum_sift.stages.split_theta_kk`, the rule of
            :func:`~captum_sift.find_stages`),
            so a batch gives the same scores as its images one by one; to use
            one data-set stage for every image, pass ``find_stages(report)["capture"]``.
    """
    if not report.has_per_image:
        raise CaptumSiftError("expected a report with per-image data (patch_theta), got a sums-only report")
    return _patch_scores(report.patch_theta, report.layers, layers, report.kk)


def _patch_scores(
    theta: torch.Tensor, analysed: list[int], layers: LayerChoice, kk: torch.Tensor | None
) -> torch.Tensor:
    """:func:`patch_scores_from_report` from head-mean θ (B, L, N) of the ``analysed`` layers (θ_KK for a stage)."""
    from .stages import STAGE_NAMES, split_theta_kk

    if layers is None:
        return torch.nanmean(theta, dim=1)
    if isinstance(layers, str):
        if layers not in STAGE_NAMES:
            raise CaptumSiftError(f"expected a stage name in {STAGE_NAMES}, got {layers!r}")
        curves = torch.nanmean(kk, dim=2)  # (B, L): head means per image
        scores = []
        for b in range(theta.shape[0]):
            try:
                start, end = split_theta_kk(curves[b])
            except CaptumSiftError as exc:
                raise CaptumSiftError(f"cannot find the stages of image {b}: {exc}") from exc
            span = {"retrieval": (0, start), "capture": (start, end + 1), "coach": (end + 1, curves.shape[1])}[layers]
            if span[0] == span[1]:
                raise CaptumSiftError(f"image {b} has no {layers} stage: its θ_KK is still rising at the last layer")
            scores.append(torch.nanmean(theta[b, span[0] : span[1]], dim=0))
        return torch.stack(scores)
    wanted = resolve_layers(layers, max(analysed) + 1)
    missing = [layer for layer in wanted if layer not in analysed]
    if missing:
        raise CaptumSiftError(f"expected layers among the analysed ones {analysed}, got {missing}")
    return torch.nanmean(theta[:, [analysed.index(layer) for layer in wanted]], dim=1)
