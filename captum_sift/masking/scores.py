"""The per-patch scores that choose the Top / Bottom / spurious patches (SPEC §7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..theta.analysis import patch_thetas
from ..theta.settings import ThetaSettings
from ..vit import Batch, ViTAdapter, as_vit

__all__ = ["patch_scores", "scores_and_counts"]


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
    return scores_and_counts(vit, images, keypoint_counts, theta_settings, image_space)[0]


def scores_and_counts(
    vit: ViTAdapter,
    images: torch.Tensor | Batch,
    keypoint_counts: torch.Tensor | None,
    settings: ThetaSettings,
    image_space: str = "model",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(SPEC §7 scores (B, N), keypoint counts (B, N)) from one analysis; ``images`` may be a checked
    :class:`~captum_sift.vit.Batch`."""
    settings.check_for(vit.depth)
    got = patch_thetas(vit, images, keypoint_counts, settings, image_space)  # type: ignore[arg-type]
    device = images.model_input.device if isinstance(images, Batch) else images.device
    return got.scores(settings.layers).to(device), got.keypoint_counts.to(device)
