"""The patch grid as Captum sees it: per-patch scores spread over pixels, and the feature mask."""

from __future__ import annotations

import torch

from .._checks import check_int, check_patch_size
from ..errors import CaptumSiftError

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
