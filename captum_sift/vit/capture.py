"""Model -> post-softmax attention of every transformer block, one layer at a time.

Works on timm ViTs (``VisionTransformer`` and its relatives: DeiT with a
distillation token, register tokens, EVA, BEiT, ...), torchvision's
``VisionTransformer`` and Hugging Face ViT / DeiT / DINOv2 models, through
their adapter (:func:`captum_sift.vit.adapter.as_vit`). The stem (patch embedding,
prefix tokens, position embedding) runs through the model's own forward up
to the first block; then the blocks run one by one, each with its attention
switched to an explicit path for that block only (timm's ``fused_attn``,
torchvision's ``need_weights``, transformers' ``attn_implementation``) and
the softmax output captured. Between two yields the model is exactly as it
was given: no hook, no changed flag, no changed train/eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .adapter import ViTAdapter, as_vit

__all__ = ["iter_attention", "model_grid", "num_prefix_tokens", "patch_size_of"]


def num_prefix_tokens(model: nn.Module | ViTAdapter) -> int:
    """Number of prefix tokens (CLS, distillation, registers) the model puts before the patches."""
    return as_vit(model).num_prefix_tokens


def patch_size_of(model: nn.Module | ViTAdapter) -> int:
    """The model's (square) patch size P."""
    return as_vit(model).patch_size


def model_grid(model: nn.Module | ViTAdapter, images: torch.Tensor) -> tuple[int, int]:
    """Patch grid (Gh, Gw) of ``images`` (B, C, H, W) for ``model``."""
    return as_vit(model).grid(images)


def iter_attention(
    model: nn.Module | ViTAdapter, images: torch.Tensor, last: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer_index, attn)`` for every transformer block up to ``last``, one layer at a time.

    ``attn`` is the post-softmax attention of the block, prefix tokens
    included, computed in eval mode without gradients. Only one layer's
    attention is alive at a time unless the caller keeps it. Stopping early
    (``break``) skips the remaining blocks. Non-finite attention raises
    :class:`~captum_sift.CaptumSiftError` naming the block.

    The forward of block ``last`` stops as soon as its attention is
    captured (its attention-times-values, projection and MLP feed no
    attention that is yielded), and no later block runs: for a 12-block
    ViT this saves about a twelfth of a forward.

    Args:
        model: a timm, torchvision or Hugging Face ViT, or a
            :class:`~captum_sift.vit.adapter.ViTAdapter`.
        images: the model's input, already normalised as the model expects.
        last: the last block to read (default: the model's last block;
            negative counts from the end).

    Shape:
        - images: (B, C, H, W)
        - attn: (B, heads, T, T), T = prefix tokens + N

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
        >>> [(i, tuple(a.shape)) for i, a in iter_attention(model, torch.rand(2, 3, 32, 32))]
        [(0, (2, 3, 5, 5)), (1, (2, 3, 5, 5))]
    """
    return as_vit(model).iter_attention(images, last)
