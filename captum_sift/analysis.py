"""analyze(): the patch-interrelation analysis of a ViT on a batch (SPEC §2-5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from ._checks import check_gamma, check_images, check_min_keypoints, shape_of
from .attention import _blocks, iter_attention, model_grid, num_prefix_tokens, patch_size_of
from .errors import CaptumSiftError
from .functional import _check_counts, focus_index, interrelation, patch_block, patch_theta
from .keypoints import count_keypoints
from .report import InterrelationReport

__all__ = ["analyze", "model_normalization", "resolve_layers"]


def resolve_layers(layers: int | Iterable[int] | None, depth: int) -> list[int]:
    """Sorted, de-duplicated layer indices; negative indices count from the end."""
    if layers is None:
        return list(range(depth))
    items = [layers] if isinstance(layers, int) else list(layers)
    resolved = set()
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
            raise CaptumSiftError(
                f"expected layer indices in [-{depth}, {depth}) for a {depth}-block model, got {layer!r}"
            )
        resolved.add(layer % depth)
    if not resolved:
        raise CaptumSiftError("expected at least one layer, got an empty selection")
    return sorted(resolved)


def model_normalization(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input mean and std (timm's data config), each (3,)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    return torch.tensor(config["mean"]), torch.tensor(config["std"])


def _split_spaces(model: nn.Module, images: torch.Tensor, image_space: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(model input, pixel images in [0, 1] or None if they cannot be had exactly)."""
    if image_space not in ("model", "pixel"):
        raise CaptumSiftError(f"expected image_space 'model' or 'pixel', got {image_space!r}")
    mean, std = model_normalization(model)
    shape = (1, -1, 1, 1)
    mean = mean.to(images.device, images.dtype).view(shape)
    std = std.to(images.device, images.dtype).view(shape)
    if image_space == "pixel":
        pixels = check_images(images)
        if pixels.shape[1] != mean.shape[1]:
            raise CaptumSiftError(f"expected {mean.shape[1]}-channel images for this model, got {pixels.shape[1]}")
        return (pixels - mean) / std, pixels
    pixels = images * std + mean
    # Undoing timm's normalisation leaves rounding error only: anything more
    # means the images were not normalised for this model.
    tol = 1e-4
    if bool(((pixels < -tol) | (pixels > 1 + tol)).any()):
        return images, None
    return images, pixels.clamp(0, 1)


def analyze(
    model: nn.Module,
    images: torch.Tensor,
    keypoint_counts: torch.Tensor | None = None,
    *,
    gamma: float = 1.0,
    weighted: bool = True,
    include_self: bool = True,
    min_keypoints: int = 1,
    layers: int | Iterable[int] | None = None,
    image_space: Literal["model", "pixel"] = "model",
    keypoint_backend: str = "kornia",
    query_patch: int | None = None,
) -> InterrelationReport:
    """Patch-interrelation analysis of a timm ViT on a batch (paper §3-4, SPEC §2-5).

    One non-fused forward, streamed layer by layer (:func:`iter_attention`):
    for every analysed layer and head, θ_i (eq. 3), the classes θ_KK, θ_KN,
    θ_NK, θ_NN (eq. 4) and the attention focus index (eq. 5). Only one
    layer's attention is alive at a time.

    Args:
        model: a timm Vision Transformer (any prefix tokens, patch size, grid).
        images: a batch in the model's input space (``image_space="model"``,
            normalised as timm's transforms do) or pixels in [0, 1]
            (``image_space="pixel"``: normalised here with the model's
            mean/std from its timm data config).
        keypoint_counts: t_j of every patch, (B, N) or (B, Gh, Gw). If None,
            :func:`~captum_sift.count_keypoints` counts them on the pixel
            images (model-space images are un-normalised with the model's
            mean/std first).
        gamma: detection-line height (eq. 2), > 0.
        weighted: weighted θ (eq. 3, default) or unweighted.
        include_self: whether patch i may be in its own attended set.
        min_keypoints: Key(j) <=> t_j >= min_keypoints.
        layers: indices of the blocks to analyse (default all; negative count
            from the end). Blocks after the last one are not run.
        image_space: ``"model"`` or ``"pixel"``, see ``images``.
        keypoint_backend: backend of :func:`~captum_sift.count_keypoints`.
        query_patch: patch whose attention row is kept for Fig. 7b (default:
            the patch with the most keypoints of each image).

    Returns:
        An :class:`InterrelationReport`.

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3)
        >>> report = analyze(model, torch.rand(2, 3, 32, 32), torch.tensor([[1, 0, 2, 0], [0, 0, 0, 3]]))
        >>> report.kk.shape, report.patch_theta.shape
        (torch.Size([2, 3, 3]), torch.Size([2, 3, 4]))
    """
    blocks = _blocks(model)
    layer_list = resolve_layers(layers, len(blocks))
    check_gamma(gamma)  # checked before the forward pass, not at its first layer
    check_min_keypoints(min_keypoints)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    if images.shape[0] == 0:
        raise CaptumSiftError(f"expected at least one image, got shape {tuple(images.shape)}")
    grid = model_grid(model, images)
    n = grid[0] * grid[1]
    model_input, pixels = _split_spaces(model, images, image_space)
    if keypoint_counts is None:
        if pixels is None:
            raise CaptumSiftError(
                "cannot count keypoints: images * std + mean with the model's normalisation is outside [0, 1]; "
                "pass keypoint_counts, or pixel images with image_space='pixel'"
            )
        keypoint_counts = count_keypoints(pixels, patch_size_of(model), backend=keypoint_backend)
    counts = _check_counts(keypoint_counts, images.shape[0], n).to(images.device).long()
    if query_patch is None:
        query = counts.argmax(dim=1)  # first patch with the most keypoints
    elif isinstance(query_patch, int) and not isinstance(query_patch, bool) and 0 <= query_patch < n:
        query = torch.full((images.shape[0],), query_patch, device=images.device)
    else:
        raise CaptumSiftError(f"expected query_patch in [0, {n}), got {query_patch!r}")
    prefix = num_prefix_tokens(model)
    wanted = set(layer_list)
    per_layer: dict[str, list[torch.Tensor]] = {k: [] for k in ("kk", "nk", "focus", "patch_theta", "query_attention")}
    rows = torch.arange(images.shape[0], device=images.device)
    for index, attn in iter_attention(model, model_input):
        if index not in wanted:
            continue
        attn_patch = patch_block(attn.float(), prefix)  # (B, h, N, N)
        theta = patch_theta(
            attn_patch, counts, gamma=gamma, weighted=weighted, include_self=include_self, min_keypoints=min_keypoints
        )
        classes = interrelation(theta, counts, min_keypoints)
        per_layer["kk"].append(classes.kk)
        per_layer["nk"].append(classes.nk)
        per_layer["focus"].append(focus_index(attn_patch))
        per_layer["patch_theta"].append(torch.nanmean(theta, dim=1))  # SPEC §7: mean over heads
        per_layer["query_attention"].append(attn_patch[rows, :, query].mean(dim=1))
        del attn, attn_patch, theta  # before the next block runs: one layer's attention alive at a time
        if index == layer_list[-1]:
            break
    per_image = {k: torch.stack(v, dim=1) for k, v in per_layer.items()}
    per_image["keypoint_counts"] = counts
    per_image["query_patch"] = query
    settings = {
        "gamma": float(gamma),
        "weighted": bool(weighted),
        "include_self": bool(include_self),
        "min_keypoints": int(min_keypoints),
        "num_prefix_tokens": prefix,
        "model": str(getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)),
    }
    return InterrelationReport.from_per_image(layers=layer_list, grid_size=grid, settings=settings, per_image=per_image)


LayerChoice = Literal["retrieval", "capture", "coach"] | int | Iterable[int] | None


def patch_scores_from_report(report: InterrelationReport, layers: LayerChoice = None) -> torch.Tensor:
    """Per-patch score of SPEC §7: θ_i averaged over heads and the chosen layers -> (B, N).

    Args:
        report: an :class:`InterrelationReport` with per-image data.
        layers: None (every analysed layer), layer indices (each must be in
            the report), or a stage name. A stage is found **per image** from
            that image's own θ_KK − θ_NK curve (:func:`~captum_sift.stages.split_stages`),
            so a batch gives the same scores as its images one by one; to use
            one data-set stage for every image, pass ``find_stages(report)["capture"]``.
    """
    from .stages import STAGE_NAMES, split_stages

    if not report.has_per_image:
        raise CaptumSiftError("expected a report with per-image data (patch_theta), got a sums-only report")
    theta = report.patch_theta  # (B, L, N)
    if layers is None:
        return torch.nanmean(theta, dim=1)
    if isinstance(layers, str):
        if layers not in STAGE_NAMES:
            raise CaptumSiftError(f"expected a stage name in {STAGE_NAMES}, got {layers!r}")
        gap = torch.nanmean(report.kk - report.nk, dim=2)  # (B, L): head means per image
        scores = []
        for b in range(report.num_images):
            try:
                start, end = split_stages(gap[b])
            except CaptumSiftError as exc:
                raise CaptumSiftError(f"cannot find the stages of image {b}: {exc}") from exc
            span = {"retrieval": (0, start), "capture": (start, end + 1), "coach": (end + 1, gap.shape[1])}[layers]
            scores.append(torch.nanmean(theta[b, span[0] : span[1]], dim=0))
        return torch.stack(scores)
    wanted = resolve_layers(layers, max(report.layers) + 1)
    missing = [layer for layer in wanted if layer not in report.layers]
    if missing:
        raise CaptumSiftError(f"expected layers among the analysed ones {report.layers}, got {missing}")
    return torch.nanmean(theta[:, [report.layers.index(layer) for layer in wanted]], dim=1)


def analysis_layers(layers: LayerChoice, depth: int) -> list[int] | None:
    """Blocks ``analyze`` must run for a layer choice (all of them for a stage name)."""
    return None if layers is None or isinstance(layers, str) else resolve_layers(layers, depth)
