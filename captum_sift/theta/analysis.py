"""analyze(): the patch-interrelation analysis of a ViT on a batch (SPEC §2-5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from .._checks import all_finite, check_int, shape_of
from ..errors import CaptumSiftError
from ..keypoints import count_keypoints
from ..vit import ViTAdapter, as_vit, non_finite_attention
from ..vit.inputs import Batch
from .control_theta import ControlPass
from .functional import _attended_sums, focus_index, interrelation, patch_block, theta_weights
from .report import InterrelationReport
from .report_io import int_tensor
from .settings import STAGE_NAMES, LayerChoice, ThetaSettings, resolve_layers
from .stages import split_theta_kk

__all__ = ["PatchThetas", "analyze", "analyze_batch", "patch_scores_from_report", "patch_thetas"]


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
    image_index: Any = None,
    **options: Any,
) -> InterrelationReport:
    """Patch-interrelation analysis of a ViT on a batch (paper §3-4, SPEC §2-5).

    One non-fused forward, streamed layer by layer (:func:`iter_attention`):
    for every analysed layer and head, θ_i (eq. 3), the classes θ_KK, θ_KN,
    θ_NK, θ_NN (eq. 4) and the attention focus index (eq. 5). Only one
    layer's attention is alive at a time.

    Args:
        model: a timm, torchvision or Hugging Face ViT, or a
            :class:`~captum_sift.vit.adapter.ViTAdapter` (any prefix tokens, patch
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
            include_self, min_keypoints, layers, keypoint_backend, controls);
            its fields may also be given as keyword ``options``, which replace
            them. A stage name as ``layers`` analyses every block. ``controls=
            "fast"`` or ``"all"`` measures the SPEC §9 null attentions in the
            same pass (:mod:`~captum_sift.theta.control_theta`; the report's
            :meth:`~InterrelationReport.control_verdicts`).
        image_space: ``"model"`` or ``"pixel"``, see ``images``.
        mean, std: the model's input statistics per channel (default: the
            adapter's, see :func:`~captum_sift.vit.adapter.as_vit`): sequences,
            arrays or tensors of finite numbers (std > 0), one value for
            every channel or one per channel.
        query_patch: patch whose attention row is kept for Fig. 7b (default:
            the patch with the most keypoints of each image).
        image_index: the data-set index of each image (B,) unique ints >= 0
            (default 0 .. B-1): seeds the shuffled control's draws per image
            and orders the per-image curves (:meth:`InterrelationReport.with_image_index`),
            so that a data set split over batches or processes gives the numbers of one pass.

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
    return analyze_batch(vit, images, keypoint_counts, theta_settings, image_space, query_patch, image_index)


class PatchThetas(NamedTuple):
    """What the per-patch scores need of an analysis (:func:`patch_thetas`), without a report."""

    layers: list[int]  # the analysed layers
    patch_theta: torch.Tensor  # (B, L, N): θ_i averaged over heads
    kk: torch.Tensor | None  # (B, L, h), when the scores' layers are a stage name
    keypoint_counts: torch.Tensor  # (B, N)

    def scores(self, layers: LayerChoice) -> torch.Tensor:
        """The SPEC §7 per-patch scores (B, N), as :func:`patch_scores_from_report` gives them from a report."""
        return _patch_scores(self.patch_theta, self.layers, layers, self.kk)


def analyze_batch(
    vit: ViTAdapter,
    images: torch.Tensor | Batch,
    keypoint_counts: torch.Tensor | None,
    settings: ThetaSettings,
    image_space: Literal["model", "pixel"] = "model",
    query_patch: int | None = None,
    image_index: Any = None,
) -> InterrelationReport:
    """:func:`analyze` on an adapter and resolved settings: the full report of one batch."""
    layers = settings.layer_list(vit.depth)
    batch, query_index = _prepare(vit, images, keypoint_counts, settings, image_space, query_patch)
    counts = batch.keypoint_counts
    if query_index is None:
        query = counts.argmax(dim=1)  # first patch with the most keypoints
    else:
        query = torch.full((counts.shape[0],), query_index, device=counts.device)
    ids = None if image_index is None else int_tensor(image_index, "image index")
    if ids is not None and tuple(ids.shape) != (counts.shape[0],):
        raise CaptumSiftError(f"expected an image index of shape ({counts.shape[0]},), got {tuple(ids.shape)}")
    controls = None
    if settings.controls != "none":
        weights = theta_weights(counts.float(), weighted=settings.weighted, min_keypoints=settings.min_keypoints)
        own = torch.arange(counts.shape[0]) if ids is None else ids
        controls = ControlPass(counts, batch.grid, weights, settings, own)
    theta, focus, query_attention = _stream(vit, batch, settings, layers, query, controls)
    kk, nk = _classes(theta, counts, settings.min_keypoints)
    per_image = {
        "kk": kk,
        "nk": nk,
        "focus": focus,
        "patch_theta": torch.nanmean(theta, dim=2),  # SPEC §7: mean over heads
        "query_attention": query_attention,
        "keypoint_counts": counts,
        "query_patch": query,
    }
    report = InterrelationReport.from_per_image(
        layers=layers, grid_size=batch.grid, settings=_report_settings(vit, settings), per_image=per_image,
        controls=None if controls is None else controls.classes(),
    )  # fmt: skip
    return report if ids is None else report.with_image_index(ids)


def patch_thetas(
    vit: ViTAdapter,
    images: torch.Tensor | Batch,
    keypoint_counts: torch.Tensor | None,
    settings: ThetaSettings,
    image_space: Literal["model", "pixel"] = "model",
) -> PatchThetas:
    """What the per-patch scores need of :func:`analyze_batch`, without building a report.

    The report's classes, focus index, query rows and sums take ~2-3 % of a
    forward on a ViT-S; an attribution that returns no report skips them.
    θ_KK is taken only when ``settings.layers`` is a stage name.
    """
    layers = settings.layer_list(vit.depth)
    batch, _ = _prepare(vit, images, keypoint_counts, settings, image_space, None)
    counts = batch.keypoint_counts
    theta, _, _ = _stream(vit, batch, settings, layers, None)
    kk = _classes(theta, counts, settings.min_keypoints)[0] if isinstance(settings.layers, str) else None
    return PatchThetas(layers, torch.nanmean(theta, dim=2), kk, counts)


def _prepare(
    vit: ViTAdapter,
    images: torch.Tensor | Batch,
    keypoint_counts: torch.Tensor | None,
    settings: ThetaSettings,
    image_space: Literal["model", "pixel"],
    query_patch: int | None,
) -> tuple[Batch, int | None]:
    """The batch, checked once (a :class:`~captum_sift.vit.Batch` is taken as built), with its counts
    (counted on its pixels when neither given nor held), and the checked query patch."""
    if isinstance(images, Batch):
        batch, grid = images, images.grid
    else:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
        if images.shape[0] == 0:
            raise CaptumSiftError(f"expected at least one image, got shape {tuple(images.shape)}")
        batch, grid = None, vit.grid(images)  # the grid before the query patch and the values
    query_index = None if query_patch is None else check_int(query_patch, "query_patch", 0, grid[0] * grid[1] - 1)
    if batch is None:
        batch = Batch.build(vit, images, image_space, need_pixels=keypoint_counts is None)
    if keypoint_counts is not None:
        return batch.with_counts(keypoint_counts), query_index
    if batch.keypoint_counts is not None:
        return batch, query_index
    if batch.pixels is None:
        raise CaptumSiftError("expected keypoint_counts, or a Batch built with its pixels to count them on")
    counts = count_keypoints(batch.pixels, vit.patch_size, backend=settings.keypoint_backend)
    return batch.with_counts(counts), query_index


def _stream(
    vit: ViTAdapter,
    batch: Batch,
    settings: ThetaSettings,
    layers: list[int],
    query: torch.Tensor | None,
    controls: ControlPass | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """θ (B, L, h, N) of the analysed layers; with ``query`` (B,) also focus (B, L, h) and query rows (B, L, N);
    ``controls`` measure each analysed map too (their :meth:`~ControlPass.classes` afterwards).

    Each map is measured inside its block's forward, as the capture hands it
    over: read while still in cache, and not kept past the block's own use
    of it. Only one layer's attention is alive at a time.
    """
    prefix, wanted = vit.num_prefix_tokens, set(layers)
    counts = batch.keypoint_counts
    weights = theta_weights(counts.float(), weighted=settings.weighted, min_keypoints=settings.min_keypoints)
    if controls is not None:
        weights = controls.weights(weights)
    thetas, focuses, query_rows = [], [], []
    rows = torch.arange(counts.shape[0], device=counts.device)
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
        profile = None if controls is None else controls.profile(attn_patch, line, attended)
        sums = _attended_sums(attn_patch, weights, settings.gamma, settings.include_self, line, attended)
        thetas.append(sums[..., 0] / sums[..., 1])  # (B, h, N): eq. 3, 0 / 0 = NaN where S_i is empty
        if controls is not None:
            controls.add_layer(sums, profile)
        if query is not None:
            focuses.append(focus_index(attn_patch))
            query_rows.append(attn_patch[rows, :, query].mean(dim=1))

    # Each map is measured inside its block's forward, as the capture hands it over: read while still in
    # cache, and not kept past the block's own use of it.
    for _ in vit.iter_attention(batch, layers[-1], unchecked=wanted, consume=measure):
        pass
    if query is None:
        return torch.stack(thetas, dim=1), None, None
    return torch.stack(thetas, dim=1), torch.stack(focuses, dim=1), torch.stack(query_rows, dim=1)


def _classes(theta: torch.Tensor, counts: torch.Tensor, min_keypoints: int) -> tuple[torch.Tensor, torch.Tensor]:
    """θ_KK and θ_NK (B, L, h) of θ (B, L, h, N): eq. 4 on every layer and head at once."""
    classes = interrelation(theta.flatten(1, 2), counts, min_keypoints)  # (B, L * h)
    return classes.kk.view(theta.shape[:3]), classes.nk.view(theta.shape[:3])


def _report_settings(vit: ViTAdapter, settings: ThetaSettings) -> dict[str, Any]:
    """The settings a report records: θ's options, the prefix tokens and the model."""
    return {
        "gamma": settings.gamma,
        "weighted": settings.weighted,
        "include_self": settings.include_self,
        "min_keypoints": settings.min_keypoints,
        "num_prefix_tokens": vit.num_prefix_tokens,
        "model": vit.name,
        "family": vit.family,
    } | ({"controls": settings.controls} if settings.controls != "none" else {})


def patch_scores_from_report(report: InterrelationReport, layers: LayerChoice = None) -> torch.Tensor:
    """Per-patch score of SPEC §7: θ_i averaged over heads and the chosen layers -> (B, N).

    Args:
        report: an :class:`InterrelationReport` with per-image data.
        layers: None (every analysed layer), layer indices (each must be in
            the report), or a stage name. A stage is found **per image** from
            that image's own θ_KK curve (:func:`~captum_sift.theta.stages.split_theta_kk`, the rule of
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
