"""Top / Bottom / Random patch masks "as prompts" at inference (paper §5.1, SPEC §7).

The scores (:func:`patch_scores`) and token dropping (:func:`drop_tokens`);
the grid primitives live in :mod:`captum_sift.patches` and the accuracy
evaluation in :mod:`captum_sift.evaluation` (both re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .analysis import analyze, patch_scores_from_report
from .errors import CaptumSiftError
from .evaluation import MaskingTable, evaluate_masking, mcnemar_exact, random_scores, wilson_interval
from .patches import MODES, _check_2d, check_plan, mask_images, num_masked, select_patches
from .settings import ThetaSettings
from .vit import ViTAdapter, as_vit

__all__ = [
    "MODES",
    "MaskingTable",
    "check_plan",
    "drop_tokens",
    "evaluate_masking",
    "mask_images",
    "mcnemar_exact",
    "num_masked",
    "patch_scores",
    "random_scores",
    "select_patches",
    "wilson_interval",
]


def patch_scores(
    model: nn.Module | ViTAdapter,
    images: torch.Tensor,
    keypoint_counts: torch.Tensor | None = None,
    settings: ThetaSettings | None = None,
    *,
    image_space: str = "model",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> torch.Tensor:
    """Per-patch score of SPEC §7: θ_i averaged over heads and the chosen layers -> (B, N).

    ``settings`` / ``options`` as :func:`~captum_sift.analyze`; ``layers``: None
    (all, default), layer indices, or a stage name (found per image), as
    :class:`~captum_sift.attr.SIFTInterrelation`.
    """
    vit = as_vit(model, mean=mean, std=std)
    theta_settings = ThetaSettings.resolve(settings, **options)
    theta_settings.check_for(vit.depth)
    report = analyze(vit, images, keypoint_counts, theta_settings, image_space=image_space)  # type: ignore[arg-type]
    return patch_scores_from_report(report, theta_settings.layers).to(images.device)


def drop_tokens(model: nn.Module | ViTAdapter, images: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Logits of a ViT (any family) with the selected patch tokens removed after the position embedding.

    The MAE way of masking: the tokens of the selected patches never enter the
    blocks (prefix tokens are kept). Every image must have the same number of
    selected patches (as :func:`select_patches` gives). Models whose blocks
    take position arguments (EVA's rotary embedding) are refused.

    Shape:
        - images: (B, C, H, W), the model's input
        - selected: (B, N) bool
        - output: (B, num_classes)
    """
    vit = as_vit(model)
    grid = vit.grid(images)
    selected = _check_2d("selected", selected)
    n = grid[0] * grid[1]
    if selected.shape != (images.shape[0], n):
        raise CaptumSiftError(
            f"expected selected of shape (B, N) = ({images.shape[0]}, {n}), got {tuple(selected.shape)}"
        )
    per_image = selected.sum(dim=1)
    if bool((per_image != per_image[0]).any()):
        raise CaptumSiftError(f"expected the same number of selected patches in every image, got {per_image.tolist()}")
    keep = torch.sort((~selected).to(torch.uint8), dim=1, descending=True, stable=True).indices[
        :, : n - int(per_image[0])
    ]
    with vit.dropping_tokens(keep):
        return vit.logits(images)
