"""Top / Bottom / Random patch masks "as prompts" at inference (paper §5.1, SPEC §7): :class:`MaskAsPrompt`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_image_space
from ..errors import CaptumSiftError
from ..theta.settings import ThetaSettings
from ..vit.adapter import ViTAdapter, as_vit
from ..vit.inputs import Batch
from .apply import check_fill, check_image_ids, check_plan, check_seed, random_selection, select_patches
from .logits import check_droppable, masked_logits
from .scores import scores_and_counts

__all__ = ["MaskAsPrompt"]


class MaskAsPrompt(nn.Module):
    """A drop-in model that masks patches "as prompts" (paper §5.1) before the wrapped ViT sees the images.

    ``forward(images)`` computes θ (SPEC §7 scores) on the images, selects
    the patches of ``mode`` at ``ratio`` (:func:`~captum_sift.masking.apply.select_patches`), fills them
    (:func:`~captum_sift.masking.apply.mask_images`) or drops their tokens (``fill="drop"``), and returns
    the wrapped model's logits. Swap it for the model in any evaluation loop
    (a plain loop, timm's validation script, Lightning's ``test_step``,
    torchmetrics) to evaluate with masking; over the images of a data set in
    order it gives exactly the accuracy of
    :func:`~captum_sift.masking.evaluate.evaluate_masking` for the same plan and seed.

    The random mode uses :func:`~captum_sift.masking.apply.random_selection`,
    the scheme of ``evaluate_masking``: image i's mask depends only on
    (``seed``, i), whatever its batch. The index i is ``image_ids`` when
    ``forward`` is given them; otherwise the images are numbered in the
    order they arrive, from 0 (``images_seen`` counts them; :meth:`reset`
    starts again at 0). Pass ``image_ids`` with a shuffled or sharded loader.

    Gradients flow from the logits back to ``images`` (Captum's gradient
    methods work on the wrapper); the selection itself is not differentiable.

    Args:
        model: a timm, torchvision or Hugging Face ViT classifier, or an adapter.
        ratio: mask ratio r; round(r N) patches per image.
        mode: ``"top"``, ``"bottom"``, ``"random"`` or ``"spurious"``.
        fill: a number in the model's input space, ``"mean"``, ``"blur"``, a
            tensor, or ``"drop"``.
        settings: the score's :class:`~captum_sift.ThetaSettings` (also as
            keyword options).
        image_space: what ``forward`` receives: ``"model"`` (normalised, the
            usual loader output; checked as :func:`~captum_sift.analyze`
            checks it) or ``"pixel"`` (in [0, 1]; normalised here).
        mean, std: the model's input statistics (default: the adapter's).
        threshold: of the spurious mode (see :func:`~captum_sift.masking.apply.select_patches`).
        seed: of the random mode, an int in [0, 2**32 - 1].

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
        >>> prompted = MaskAsPrompt(vit, ratio=0.25, mode="random", image_space="pixel")
        >>> prompted(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3])
        >>> prompted.images_seen  # the next image is image 2 of the random mode
        2
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
        (ratio,), _ = check_plan([ratio], [mode], "mode")
        check_image_space(image_space)
        check_fill(fill)
        if isinstance(fill, str) and fill == "drop":
            check_droppable(vit)
        self.model = vit.model  # a registered sub-module: .eval(), .to(), state_dict() reach it
        self.vit, self.ratio, self.mode, self.fill = vit, ratio, mode, fill
        self.settings = ThetaSettings.resolve(settings, **options)
        self.settings.check_for(vit.depth)
        self.image_space, self.threshold, self.seed = image_space, threshold, check_seed(seed)
        self.images_seen = 0

    def reset(self) -> None:
        """Number the next images from 0 again (the random mode's image indices)."""
        self.images_seen = 0

    def _image_ids(self, images: torch.Tensor, image_ids: object) -> torch.Tensor:
        if image_ids is None:
            return torch.arange(self.images_seen, self.images_seen + images.shape[0])
        return check_image_ids(image_ids, images.shape[0])

    def select(
        self, images: torch.Tensor, keypoint_counts: torch.Tensor | None = None, image_ids: object = None
    ) -> torch.Tensor:
        """The patches :meth:`forward` masks, (B, N) bool (``images_seen`` is not advanced)."""
        return self._select(self._batch(images, keypoint_counts), keypoint_counts, image_ids)

    def _batch(self, images: torch.Tensor, keypoint_counts: torch.Tensor | None) -> Batch:
        """The images checked once: pixels kept where θ needs keypoints counted, or for the model-space guard."""
        counting = self.mode != "random" and keypoint_counts is None
        return Batch.build(self.vit, images, self.image_space, need_pixels=counting or self.image_space == "model")

    def _select(self, batch: Batch, keypoint_counts: torch.Tensor | None, image_ids: object) -> torch.Tensor:
        if self.mode == "random":
            ids = self._image_ids(batch.model_input, image_ids)
            return random_selection(ids, batch.num_patches, self.ratio, self.seed, batch.model_input.device)
        scores, counts = scores_and_counts(self.vit, batch, keypoint_counts, self.settings, self.image_space)
        return select_patches(scores, self.ratio, self.mode, keypoint_counts=counts,
                              min_keypoints=self.settings.min_keypoints, threshold=self.threshold)  # fmt: skip

    def forward(
        self, images: torch.Tensor, keypoint_counts: torch.Tensor | None = None, image_ids: object = None
    ) -> torch.Tensor:
        """Logits of the wrapped model on the masked images (counts counted on the images when None).

        ``image_ids`` (B,): the images' indices in the data set, for the
        random mode; None numbers them on from ``images_seen``.
        """
        # The input checked once (model-space images that cannot be normalised ones are refused) ...
        batch = self._batch(images, keypoint_counts)
        checked = batch.model_input
        if checked.shape[0] == 0:
            raise CaptumSiftError(f"expected at least one image, got shape {tuple(images.shape)}")
        selected = self._select(batch, keypoint_counts, image_ids)
        # ... and the model input built from the caller's tensor, so that its autograd graph is kept.
        model_input = images if self.image_space == "model" or not images.requires_grad else None
        if model_input is None:
            mean, std = self.vit.stats(images)
            model_input = ((images - mean) / std).to(checked.dtype)
        elif self.image_space == "pixel":
            model_input = checked
        logits = masked_logits(self.vit, model_input, selected, self.fill)
        if image_ids is None:
            self.images_seen += images.shape[0]
        return logits

    def extra_repr(self) -> str:
        return (
            f"ratio={self.ratio}, mode={self.mode!r}, fill={self.fill!r}, image_space={self.image_space!r}, "
            f"seed={self.seed}"
        )
