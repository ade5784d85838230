"""The patch grid as Captum sees it: per-patch scores spread over pixels, the feature mask, and the
base class of the per-patch attributions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import nn

from .._checks import check_image_space, check_int, check_patch_size, shape_of
from ..errors import CaptumSiftError
from ..vit.adapter import ViTAdapter, as_vit
from ..vit.inputs import Batch

__all__ = ["patch_feature_mask", "patch_scores_to_pixels"]


def patch_scores_to_pixels(scores: torch.Tensor, shape: torch.Size | tuple[int, ...], patch_size: int) -> torch.Tensor:
    """Spread per-patch scores (B, N) over each patch's pixels and all channels -> ``shape`` (B, C, H, W).

    Example:
        >>> patch_scores_to_pixels(torch.tensor([[1.0, 2.0]]), (1, 1, 2, 4), 2)
        tensor([[[[1., 1., 2., 2.],
                  [1., 1., 2., 2.]]]])
    """
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 4:
        raise CaptumSiftError(f"expected shape (B, C, H, W) of 4 ints, got {shape!r}")
    batch, channels, height, width = (check_int(v, "every entry of shape", low=0) for v in shape)
    patch_size = check_patch_size(patch_size, height, width)
    if not isinstance(scores, torch.Tensor):
        raise CaptumSiftError(f"expected scores to be a tensor (B, N), got {type(scores).__name__}")
    grid_h, grid_w = height // patch_size, width // patch_size
    if scores.shape != (batch, grid_h * grid_w):
        raise CaptumSiftError(
            f"expected scores of shape (B, N) = ({batch}, {grid_h * grid_w}), got {tuple(scores.shape)}"
        )
    grid = scores.view(batch, 1, grid_h, grid_w)
    pixels = grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return pixels.expand(batch, channels, height, width).contiguous()


def patch_feature_mask(height: int, width: int, patch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Patch index of every pixel, row-major, as a (1, 1, H, W) long tensor (Captum's ``feature_mask``)."""
    height, width = check_int(height, "height", low=1), check_int(width, "width", low=1)
    patch_size = check_patch_size(patch_size, height, width)
    ids = torch.arange((height // patch_size) * (width // patch_size), device=device).view(
        1, 1, height // patch_size, width // patch_size
    )
    return ids.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


class _PatchAttribution(Attribution):
    """What the per-patch attributions share: the adapter, input checks and spreading scores over pixels."""

    def __init__(
        self,
        model: nn.Module | ViTAdapter,
        *,
        image_space: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.vit = as_vit(model, mean=mean, std=std)
        check_image_space(image_space)
        self._model_forward = self.vit.logits if self.vit.forward_logits is not None else self.vit.model
        # Captum's forward_func takes what attribute() takes: in pixel space it normalises first (infidelity
        # calls it on perturbed inputs).
        super().__init__(self._model_forward if image_space == "model" else self._pixel_forward)
        self.model = self.vit.model
        self.image_space = image_space

    def _pixel_forward(self, pixels: torch.Tensor, *args: Any) -> Any:
        """The model's output for pixel-space inputs (normalised here, gradients kept)."""
        mean, std = self.vit.stats(pixels)
        return self._model_forward(((pixels - mean) / std).to(self.vit.dtype), *args)

    def has_convergence_delta(self) -> bool:
        return False

    def _images(self, inputs: Any) -> tuple[torch.Tensor, bool]:
        as_tuple = isinstance(inputs, tuple)
        if as_tuple:
            if len(inputs) != 1:
                raise CaptumSiftError(f"expected one input tensor, got a tuple of {len(inputs)}")
            (inputs,) = inputs
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise CaptumSiftError(f"expected inputs of shape (B, C, H, W), got {shape_of(inputs)}")
        return inputs, as_tuple

    def _spread(self, scores: torch.Tensor, images: torch.Tensor, as_tuple: bool) -> Any:
        out = patch_scores_to_pixels(scores.to(images.device, images.dtype), images.shape, self.vit.patch_size)
        return (out,) if as_tuple else out

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @log_usage()
    def attribute(self, inputs: Any, target: Any = None) -> Any:  # type: ignore[override]
        """Attribution of exactly ``inputs.shape`` (constant within each patch); ``target`` is ignored."""
        images, as_tuple = self._images(inputs)
        return self._spread(self.patch_scores(images), images, as_tuple)

    def feature_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """Patch index of every pixel (1, 1, H, W).

        Captum's FeatureAblation, ShapleyValueSampling, Lime and KernelShap take
        it as ``feature_mask``, to perturb the same patches the method scores.
        """
        images, _ = self._images(inputs)
        self.vit.grid(images)
        return patch_feature_mask(images.shape[2], images.shape[3], self.vit.patch_size, images.device)

    def _batch(self, images: torch.Tensor) -> Batch:
        """``images`` checked once, as model input (no pixels)."""
        return Batch.build(self.vit, images, self.image_space, need_pixels=False)
