"""Model -> post-softmax attention of every transformer block, one layer at a time.

Works on stock timm ViTs (``VisionTransformer`` and its relatives: DeiT with a
distillation token, register tokens, EVA, BEiT, ...), whatever their attention
does by default. The stem (patch embedding, prefix tokens, position
embedding) runs through the model's own ``forward_features`` up to the first
block; then the blocks run one by one, each with its attention module set to
the non-fused path for that block only, and the softmax output captured from
its ``attn_drop`` module. Between two yields the model is exactly as it was
given: no hook, no changed flag, no changed train/eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._checks import shape_of
from .errors import CaptumSiftError

__all__ = ["iter_attention", "model_grid", "num_prefix_tokens", "patch_size_of"]


class _StopAtFirstBlock(Exception):
    """Raised by a pre-hook to stop the model's forward at its first block."""


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed") or not hasattr(model, "forward_features"):
        raise CaptumSiftError(
            f"expected a timm Vision Transformer (with .patch_embed, .blocks and .forward_features), "
            f"got {type(model).__name__}"
        )
    blocks = list(blocks)
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if (
            attn is None
            or not hasattr(attn, "fused_attn")
            or not isinstance(getattr(attn, "attn_drop", None), nn.Module)
        ):
            raise CaptumSiftError(
                f"unsupported attention in block {i}: {type(attn).__name__ if attn is not None else 'no .attn'} "
                f"of {type(block).__name__}; expected a timm attention module with .fused_attn and .attn_drop"
            )
    return blocks


def num_prefix_tokens(model: nn.Module) -> int:
    """Number of prefix tokens (CLS, distillation, registers) the model puts before the patches."""
    return int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))


def patch_size_of(model: nn.Module) -> int:
    """The model's (square) patch size P."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise CaptumSiftError(f"expected model.patch_embed.patch_size, got a {type(model).__name__} without it")
    patch = tuple(patch) if isinstance(patch, (tuple, list)) else (int(patch), int(patch))
    if patch[0] != patch[1]:
        raise CaptumSiftError(f"expected square patches, got patch_size={patch}")
    return int(patch[0])


def model_grid(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """Patch grid (Gh, Gw) of ``images`` (B, C, H, W) for ``model``."""
    patch = patch_size_of(model)
    height, width = images.shape[-2:]
    if height % patch or width % patch:
        raise CaptumSiftError(
            f"expected an image size the model accepts: H and W multiples of its patch size {patch}, "
            f"got H={height}, W={width}"
        )
    return height // patch, width // patch


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside; each module's own flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def _unfused_capture(block: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Run ``block`` non-fused and append its post-softmax attention to ``store``."""
    attn = block.attn
    old_fused = attn.fused_attn
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: store.append(out))
    attn.fused_attn = False
    try:
        yield
    finally:
        attn.fused_attn = old_fused
        handle.remove()


def _stem(model: nn.Module, images: torch.Tensor, first_block: nn.Module) -> tuple[tuple, dict[str, Any]]:
    """Inputs (args, kwargs) the model's forward passes to its first block."""
    captured: dict[str, Any] = {}

    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["args"], captured["kwargs"] = args, kwargs
        raise _StopAtFirstBlock

    handle = first_block.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model.forward_features(images)
    except _StopAtFirstBlock:
        pass
    except (AssertionError, RuntimeError, ValueError) as exc:
        if isinstance(exc, CaptumSiftError):
            raise
        raise CaptumSiftError(f"the model does not accept images of shape {tuple(images.shape)}: {exc}") from exc
    finally:
        handle.remove()
    if "args" not in captured:
        raise CaptumSiftError(f"{type(model).__name__}.forward_features never reached its first block")
    return captured["args"], captured["kwargs"]


def iter_attention(model: nn.Module, images: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer_index, attn)`` for every transformer block, one layer at a time.

    ``attn`` is the post-softmax attention of the block, prefix tokens
    included, computed in eval mode without gradients. Only one layer's
    attention is alive at a time unless the caller keeps it. Stopping early
    (``break``) skips the remaining blocks.

    Args:
        model: a timm Vision Transformer.
        images: the model's input, already normalised as the model expects.

    Shape:
        - images: (B, C, H, W)
        - attn: (B, heads, T, T), T = ``model.num_prefix_tokens`` + N

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
        >>> [(i, tuple(a.shape)) for i, a in iter_attention(model, torch.rand(2, 3, 32, 32))]
        [(0, (2, 3, 5, 5)), (1, (2, 3, 5, 5))]
    """
    blocks = _blocks(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    if not images.is_floating_point() or not bool(torch.isfinite(images).all()):
        raise CaptumSiftError("expected finite floating-point images")
    grid = model_grid(model, images)
    expected_tokens = num_prefix_tokens(model) + grid[0] * grid[1]
    with _eval_mode(model), torch.no_grad():
        args, kwargs = _stem(model, images, blocks[0])
    x, rest = args[0], args[1:]
    for index, block in enumerate(blocks):
        store: list[torch.Tensor] = []
        with _eval_mode(model), torch.no_grad(), _unfused_capture(block, store):
            x = block(x, *rest, **kwargs)
        if len(store) != 1 or store[0].shape[-1] != expected_tokens:
            got = [tuple(a.shape) for a in store]
            raise CaptumSiftError(
                f"expected one attention map of {expected_tokens} tokens from block {index} "
                f"({type(block.attn).__name__}), got {got}"
            )
        attn = store.pop()
        yield index, attn
        del attn
