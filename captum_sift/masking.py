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

from ._checks import check_image_space
from .analysis import _analyze
from .errors import CaptumSiftError
from .evaluation import MaskingTable, evaluate_masking, mcnemar_exact, random_scores, wilson_interval
from .patches import (
    DEFAULT_MODES,
    MODES,
    _check_2d,
    check_plan,
    mask_images,
    num_masked,
    select_patches,
    spurious_patches,
)
from .settings import ThetaSettings
from .vit import ViTAdapter, as_vit

__all__ = [
    "DEFAULT_MODES",
    "MaskAsPrompt",
    "MODES",
    "spurious_patches",
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
    return scores_and_counts(vit, images, keypoint_counts, theta_settings, image_space)[0]


def scores_and_counts(
    vit: ViTAdapter,
    images: torch.Tensor,
    keypoint_counts: torch.Tensor | None,
    settings: ThetaSettings,
    image_space: str = "model",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(SPEC §7 scores (B, N), keypoint counts (B, N)) from one analysis."""
    settings.check_for(vit.depth)
    got = _analyze(vit, images, keypoint_counts, settings, image_space, None, full=False)  # type: ignore[arg-type]
    scores = got.scores(settings.layers).to(images.device)  # type: ignore[union-attr]
    return scores, got.keypoint_counts.to(images.device)


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


class MaskAsPrompt(nn.Module):
    """A drop-in model that masks patches "as prompts" (paper §5.1) before the wrapped ViT sees the images.

    ``forward(images)`` computes θ (SPEC §7 scores) on the images, selects
    the patches of ``mode`` at ``ratio`` (:func:`select_patches`), fills them
    (:func:`mask_images`) or drops their tokens (``fill="drop"``), and returns
    the wrapped model's logits. Swap it for the model in any evaluation loop
    (a plain loop, timm's validation script, Lightning's ``test_step``,
    torchmetrics) to evaluate with masking; it gives the accuracy of
    :func:`~captum_sift.evaluation.evaluate_masking` for the same plan.

    Args:
        model: a timm, torchvision or Hugging Face ViT classifier, or an adapter.
        ratio: mask ratio r; round(r N) patches per image.
        mode: ``"top"``, ``"bottom"``, ``"random"`` or ``"spurious"``.
        fill: a number in the model's input space, ``"mean"``, ``"blur"``, a
            tensor, or ``"drop"``.
        settings: the score's :class:`~captum_sift.ThetaSettings` (also as
            keyword options).
        image_space: what ``forward`` receives: ``"model"`` (normalised, the
            usual loader output) or ``"pixel"`` (in [0, 1]; normalised here).
        mean, std: the model's input statistics (default: the adapter's).
        threshold: of the spurious mode (see :func:`select_patches`).
        seed: of the random mode (a generator owned by the wrapper).

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
        >>> prompted = MaskAsPrompt(vit, ratio=0.25, mode="random", image_space="pixel")
        >>> prompted(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        model: nn.Module | ViTAdapter,
        ratio: float = 0.1,
        mode: str = "bottom",
        fill: float | str | torch.Tensor = 0.0,
        settings: ThetaSettings | None = None,
        *,
        image_space: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        threshold: float | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__()
        vit = as_vit(model, mean=mean, std=std)
        vit.check_classifier()
        check_plan([ratio], [mode], "mode")
        check_image_space(image_space)
        self.model = vit.model  # a registered sub-module: .eval(), .to(), state_dict() reach it
        self.vit, self.ratio, self.mode, self.fill = vit, float(ratio), mode, fill
        self.settings = ThetaSettings.resolve(settings, **options)
        self.settings.check_for(vit.depth)
        self.image_space, self.threshold = image_space, threshold
        self.generator = torch.Generator().manual_seed(int(seed))

    def select(self, images: torch.Tensor, keypoint_counts: torch.Tensor | None = None) -> torch.Tensor:
        """The patches :meth:`forward` masks, (B, N) bool."""
        grid = self.vit.grid(images)
        if self.mode == "random":
            return select_patches(torch.zeros(images.shape[0], grid[0] * grid[1], device=images.device), self.ratio,
                                  "random", self.generator)  # fmt: skip
        scores, counts = scores_and_counts(self.vit, images, keypoint_counts, self.settings, self.image_space)
        return select_patches(scores, self.ratio, self.mode, keypoint_counts=counts,
                              min_keypoints=self.settings.min_keypoints, threshold=self.threshold)  # fmt: skip

    def forward(self, images: torch.Tensor, keypoint_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the wrapped model on the masked images (counts counted on the images when None)."""
        from .analysis import to_model_and_pixels
        from .evaluation import masked_logits

        selected = self.select(images, keypoint_counts)
        model_input, _ = to_model_and_pixels(self.vit, images, self.image_space, need_pixels=False)
        if self.image_space == "model":
            model_input = images  # keep the caller's tensor (and its autograd graph) where nothing changes
        return masked_logits(self.vit, model_input, selected, self.fill)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, mode={self.mode!r}, fill={self.fill!r}, image_space={self.image_space!r}"
