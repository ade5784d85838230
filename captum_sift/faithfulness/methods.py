"""The attribution methods by name: θ, the attention baselines, the class-specific transformer methods
(gradient rollout, AttnLRP), Captum's, Grad-CAM and a random floor.

:func:`explain` runs one method on any model family and gives a pixel
attribution (B, C, H, W); :func:`patch_attribution` sums it over each patch.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_classes, check_patch_size, shape_of
from ..attr import AttentionRollout, AttnLRP, GradientRollout, RawAttention, SIFTInterrelation
from ..attr.patches import patch_feature_mask, patch_scores_to_pixels
from ..errors import CaptumSiftError
from ..keypoints import count_keypoints
from ..vit import ViTAdapter, as_vit, eval_mode

__all__ = ["DEFAULT_METHODS", "METHODS", "explain", "patch_attribution"]

#: Methods :func:`explain` knows; ``gradcam`` needs the ``gradcam`` extra (pytorch-grad-cam).
METHODS = ("theta", "rollout", "raw_attention", "gradient_rollout", "attnlrp", "saliency", "integrated_gradients",
           "feature_ablation", "gradcam", "random")  # fmt: skip
#: Every method but the two slowest (feature ablation: a forward per patch; Grad-CAM: an extra package).
DEFAULT_METHODS = ("theta", "rollout", "raw_attention", "gradient_rollout", "attnlrp", "saliency",
                   "integrated_gradients", "random")  # fmt: skip
#: The methods that explain one class: their targets are checked against the model's outputs.
_TARGETED = ("gradient_rollout", "attnlrp", "saliency", "integrated_gradients", "feature_ablation", "gradcam")


class _Logits(nn.Module):
    """The adapter's logits as a plain module (what Captum and Quantus call)."""

    def __init__(self, vit: ViTAdapter) -> None:
        super().__init__()
        self.vit = vit
        self.net = vit.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.logits(x)


def explain(
    method: str,
    model: nn.Module | ViTAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    ig_steps: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Attribution (B, C, H, W) of ``method`` for model-space ``images`` and class ``targets`` (B,).

    ``theta``: :class:`~captum_sift.attr.SIFTInterrelation`; ``rollout`` /
    ``raw_attention``: the attention baselines; ``gradient_rollout`` /
    ``attnlrp``: :class:`~captum_sift.attr.GradientRollout` (Chefer et al.
    2021b) and :class:`~captum_sift.attr.AttnLRP` (Achtibat et al. 2024)
    for ``targets``; ``saliency``,
    ``integrated_gradients`` (``ig_steps``, baseline 0 = the mean colour),
    ``feature_ablation`` (over the patches): Captum's; ``gradcam``:
    pytorch-grad-cam's GradCAM on the last block's first norm, tokens
    reshaped to the grid; ``random``: uniform noise per patch (a floor).
    """
    return explain_with(method, as_vit(model), images, targets, ig_steps=ig_steps, seed=seed)


def explain_with(
    method: str,
    vit: ViTAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    ig_steps: int = 16,
    seed: int = 0,
    pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`explain` on an adapter (what :func:`~captum_sift.faithfulness.compare` calls for every batch).

    ``pixels``: the same images in [0, 1], when the caller holds them: θ counts its keypoints on them
    (inside the call, so its cost stays in the method's time) instead of undoing the normalisation.
    """
    if method not in METHODS:
        raise CaptumSiftError(f"expected a method among {METHODS}, got {method!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    images = images.detach()
    if method in _TARGETED:
        targets = check_classes(targets, images.shape[0], "targets")
        targets = check_classes(targets, images.shape[0], "targets", high=_num_classes(vit, images))
    if method == "theta":
        explainer = SIFTInterrelation(vit)
        counts = (
            None
            if pixels is None
            else count_keypoints(pixels, vit.patch_size, backend=explainer.settings.keypoint_backend)
        )
        return explainer.attribute(images, keypoint_counts=counts)
    if method == "rollout":
        return AttentionRollout(vit).attribute(images)
    if method == "raw_attention":
        return RawAttention(vit).attribute(images)
    if method == "gradient_rollout":
        return GradientRollout(vit).attribute(images, target=targets.to(images.device)).detach()
    if method == "attnlrp":
        return AttnLRP(vit).attribute(images, target=targets.to(images.device)).detach()
    if method == "random":
        grid = vit.grid(images)
        g = torch.Generator().manual_seed(seed)
        scores = torch.rand(images.shape[0], grid[0] * grid[1], generator=g).to(images.device)
        return patch_scores_to_pixels(scores, images.shape, vit.patch_size)
    forward = _Logits(vit)
    targets = targets.to(images.device)
    with eval_mode(vit.model):
        if method == "saliency":
            from captum.attr import Saliency

            return Saliency(forward).attribute(images.clone().requires_grad_(True), target=targets).detach()
        if method == "integrated_gradients":
            from captum.attr import IntegratedGradients

            return IntegratedGradients(forward).attribute(images, target=targets, n_steps=ig_steps).detach()
        if method == "feature_ablation":
            from captum.attr import FeatureAblation

            mask = patch_feature_mask(images.shape[2], images.shape[3], vit.patch_size, images.device)
            return FeatureAblation(forward).attribute(images, target=targets, feature_mask=mask,
                                                      perturbations_per_eval=16).detach()  # fmt: skip
        return _gradcam(vit, forward, images, targets)


def _num_classes(vit: ViTAdapter, images: torch.Tensor) -> int:
    """The model's number of outputs: read off its head where the family says it, else one forward of one image."""
    model = vit.model
    known = {
        "timm": getattr(model, "num_classes", None),
        "hf": getattr(getattr(model, "config", None), "num_labels", None),
        "torchvision": getattr(getattr(getattr(model, "heads", None), "head", None), "out_features", None),
    }.get(vit.family)
    if isinstance(known, int) and known > 0:
        return known
    vit.check_classifier()
    with torch.no_grad(), eval_mode(model):
        return int(vit.logits(images[:1]).shape[1])


def _gradcam(vit: ViTAdapter, forward: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise CaptumSiftError(
            "method 'gradcam' needs pytorch-grad-cam: pip install grad-cam "
            "(from a clone of captum_sift: pip install -c constraints.txt '.[gradcam]')"
        ) from exc

    norms = [m for m in vit.blocks[-1].modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise CaptumSiftError(f"no LayerNorm in the last block of {type(vit.model).__name__} for Grad-CAM")
    grid = vit.grid(images)
    prefix = vit.num_prefix_tokens

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens[0] if isinstance(tokens, (tuple, list)) else tokens
        patches = tokens[:, prefix:, :]
        return patches.reshape(tokens.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)

    with GradCAM(model=forward, target_layers=[norms[0]], reshape_transform=reshape) as cam:
        heat = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])  # (B, H, W)
    heat = torch.as_tensor(heat, dtype=images.dtype, device=images.device)
    scores = torch.nn.functional.avg_pool2d(heat.unsqueeze(1), vit.patch_size).flatten(1)
    return patch_scores_to_pixels(scores, images.shape, vit.patch_size)


def patch_attribution(attributions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch relevance (B, N): the attribution summed over each patch's pixels and channels."""
    if not isinstance(attributions, torch.Tensor) or attributions.dim() != 4:
        raise CaptumSiftError(f"expected attributions of shape (B, C, H, W), got {shape_of(attributions)}")
    patch_size = check_patch_size(patch_size, attributions.shape[2], attributions.shape[3])
    pooled = torch.nn.functional.avg_pool2d(attributions.sum(dim=1, keepdim=True), patch_size)
    return pooled.flatten(1) * patch_size * patch_size
