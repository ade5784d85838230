"""One adapter per Vision Transformer: timm, torchvision and Hugging Face, built once.

Everything the package needs from a ViT — its blocks, prefix tokens, patch
size, input normalisation, the stem up to the first block, the post-softmax
attention of one block and the class logits — is read once by :func:`as_vit`
into a frozen :class:`ViTAdapter` (what each family says:
:mod:`captum_sift.vit.families`). Every public entry point accepts a model of
any of the three families or an adapter, and gives the same numbers for the
same network (tests convert one set of weights into the three layouts).

The protocol, for a ViT that fits none of the families: build a
:class:`ViTAdapter` yourself. It needs the blocks (the modules that take and
return the token sequence), the patch size, the number of prefix tokens, the
input statistics, and ``capture``: a function ``capture(block, store)`` that
returns a context manager under which one call of ``block`` appends its
post-softmax attention ``(B, heads, T, T)`` to the list ``store``, restoring
whatever it changed on exit, also when the block raises: the last block
:meth:`ViTAdapter.iter_attention` runs is stopped by an exception that
``store.append`` raises, since nothing after its attention is needed, and
``store.append`` may measure the map on the spot (the analysis computes θ
there, inside the block's forward, while the map is in cache). The
model's own forward (``forward_stem``, default ``model(images)``) must call
the first block with the tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import as_scalar
from ..errors import CaptumSiftError
from .capture import capturing, dropping_tokens, run_stem, stream_attention
from .families import adapter_fields, call_model, head_classes, unwrap
from .inputs import Batch

__all__ = ["ViTAdapter", "as_vit", "iter_attention"]

Capture = Callable[[nn.Module, list], AbstractContextManager]


@dataclass(frozen=True, eq=False)
class ViTAdapter:
    """What captum_sift needs from one ViT, read once (see the module docstring for the protocol).

    Attributes:
        model: the wrapped network.
        family: ``"timm"``, ``"torchvision"``, ``"hf"`` or a name of your own.
        blocks: the transformer blocks, in order.
        num_prefix_tokens: tokens before the patches (CLS, distillation, registers).
        patch_size: the (square) patch side P.
        in_chans: input channels.
        num_heads: attention heads per block.
        mean, std: the input normalisation, per channel (pixels in [0, 1] ->
            model input = (pixels - mean) / std); finite, std > 0; one value
            is used for every channel.
        capture: ``capture(block, store)`` -> a context manager, see above.
        forward_stem: runs the model far enough to call ``blocks[0]``.
        forward_logits: the model's class logits from its input.
        name: a description for reports.
        img_size: the input size the model was built for, if it has one.
        class_token: whether the first prefix token is a class token (what
            rollout and raw attention read); False for models that pool.
    """

    model: nn.Module
    family: str
    blocks: tuple[nn.Module, ...]
    num_prefix_tokens: int
    patch_size: int
    in_chans: int
    num_heads: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    capture: Capture
    forward_stem: Callable[[nn.Module, torch.Tensor], Any] = call_model
    forward_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    name: str = ""
    img_size: int | None = None
    class_token: bool = True

    def __post_init__(self) -> None:
        if not self.blocks:
            raise CaptumSiftError(f"expected a ViT with at least one block, got none in {type(self.model).__name__}")
        object.__setattr__(self, "mean", _statistics(self.mean, "mean", self.in_chans))
        object.__setattr__(self, "std", _statistics(self.std, "std", self.in_chans))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's first floating-point parameter (float32 for a model without one)."""
        for param in self.model.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.float32

    def with_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> ViTAdapter:
        """The same adapter with other input statistics (None keeps the current ones).

        ``mean`` and ``std`` may be sequences, numpy arrays or tensors; one
        value is used for every channel. See :func:`as_vit`.
        """
        if mean is None and std is None:
            return self
        mean = self.mean if mean is None else _statistics(mean, "mean", self.in_chans)
        std = self.std if std is None else _statistics(std, "std", self.in_chans)
        return dataclasses.replace(self, mean=mean, std=std)

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """Patch grid (Gh, Gw) of ``images`` (B, C, H, W)."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise CaptumSiftError(
                f"expected an image size the model accepts: H and W multiples of its patch size {self.patch_size}, "
                f"got H={height}, W={width}"
            )
        return height // self.patch_size, width // self.patch_size

    def stats(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, C, 1, 1) tensors on the images' device and dtype."""
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(shape)
        return mean, std

    @property
    def num_classes(self) -> int | None:
        """The number of classes the model's head is built for, where its family says it (timm's
        ``num_classes``, Hugging Face's ``config.num_labels``, torchvision's ``heads.head.out_features``);
        None for a model without a classifier or of a family that does not say (one forward tells)."""
        if self.forward_logits is None:
            return None
        return head_classes(self.model, self.family)

    def check_classifier(self) -> None:
        """Raise unless the model has a classification head with at least one class (what :meth:`logits` needs)."""
        if self.forward_logits is None:
            raise CaptumSiftError(
                f"expected a classifier (a model with a classification head), got {type(self.model).__name__}"
            )
        if self.num_classes == 0:
            raise CaptumSiftError(
                f"expected a classifier, got {type(self.model).__name__} without a classification head (0 classes: "
                "its forward returns features, not logits); build it with num_classes > 0"
            )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) of model-space ``images``."""
        self.check_classifier()
        return self.forward_logits(self.model, images)  # type: ignore[misc]

    def stem(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
        """(tokens, other args, kwargs) the model's forward passes to its first block, see :func:`run_stem`."""
        return run_stem(self, images)

    def iter_attention(
        self,
        images: torch.Tensor | Batch,
        last: int | None = None,
        *,
        unchecked: Collection[int] = (),
        consume: Callable[[int, torch.Tensor], Any] | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(layer, attn)`` per block up to ``last``, one block at a time, see :func:`stream_attention`."""
        return stream_attention(self, images, last, unchecked=unchecked, consume=consume)

    def capturing(
        self, images: torch.Tensor | Batch, consume: Callable[[int, torch.Tensor], Any]
    ) -> AbstractContextManager[list[Any]]:
        """Every block's map handed to ``consume`` during one whole forward, see :func:`capturing`."""
        return capturing(self, images, consume)

    def dropping_tokens(self, keep: torch.Tensor) -> AbstractContextManager[None]:
        """Inside, the model's forward keeps only the patch tokens ``keep`` (B, n_keep), see :func:`dropping_tokens`."""
        return dropping_tokens(self, keep)


def _statistics(value: object, name: str, in_chans: int) -> tuple[float, ...]:
    """Input statistics as one finite float per channel (std > 0): a single value is used for every channel.

    Sequences, numpy arrays and tensors are accepted; another number of
    values than 1 or ``in_chans``, NaN, Inf and (for std) values <= 0 are refused.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().flatten().tolist()
    elif hasattr(value, "__array__") and hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    numeric = isinstance(value, Sequence) and not isinstance(value, str)
    if numeric:
        value = [as_scalar(v) for v in value]  # type: ignore[union-attr]  # numpy and 0-d tensor numbers
    numeric = numeric and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)  # type: ignore[union-attr]
    if not numeric or len(value) not in (1, in_chans):  # type: ignore[arg-type]
        raise CaptumSiftError(f"expected {name} to be 1 or {in_chans} numbers (one per input channel), got {value!r}")
    values = tuple(float(v) for v in value) * (in_chans if len(value) == 1 else 1)  # type: ignore[arg-type,union-attr]
    if not all(math.isfinite(v) for v in values) or (name == "std" and not all(v > 0 for v in values)):
        bound = "finite numbers > 0" if name == "std" else "finite numbers"
        raise CaptumSiftError(f"expected {name} to be {bound}, got {list(values)}")
    return values


def as_vit(
    model: nn.Module | ViTAdapter,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_processor: Any = None,
) -> ViTAdapter:
    """The adapter of a timm, torchvision or Hugging Face ViT (an adapter is returned as is).

    Args:
        model: a timm ``VisionTransformer`` or relative (DeiT, registers, EVA,
            BEiT, ...), a torchvision ``VisionTransformer``, a transformers
            ``ViTModel`` / ``ViTForImageClassification``, ``DeiTModel`` /
            ``DeiTForImageClassification(WithTeacher)``, ``Dinov2Model``,
            ``Dinov2WithRegistersModel`` (sdpa attention is fine), or an adapter.
        mean, std: the input normalisation; default: timm's pretrained config,
            ImageNet's statistics for torchvision (those of all its ViT
            weights), the ``image_processor``'s for Hugging Face, else the
            statistics of the model type's stock processor (0.5 for ViT,
            ImageNet's for DeiT and DINOv2). A sequence, numpy array or
            tensor of finite numbers (std > 0): one per input channel, or
            one for every channel; anything else is refused.
        image_processor: a transformers image processor (its image_mean/std).

    A model wrapped by ``torch.compile``, ``nn.DataParallel`` or
    ``DistributedDataParallel`` is unwrapped (the hooks go on the network).

    Example:
        >>> import torchvision
        >>> vit = as_vit(torchvision.models.VisionTransformer(32, 16, 2, 2, 16, 32))
        >>> vit.family, vit.depth, vit.num_prefix_tokens, vit.patch_size, vit.mean
        ('torchvision', 2, 1, 16, (0.485, 0.456, 0.406))
    """
    if isinstance(model, ViTAdapter):
        return model.with_normalization(mean, std)
    if not isinstance(model, nn.Module):
        raise CaptumSiftError(f"expected a ViT (torch.nn.Module) or a ViTAdapter, got {type(model).__name__}")
    return ViTAdapter(**adapter_fields(unwrap(model), image_processor)).with_normalization(mean, std)


def iter_attention(
    model: nn.Module | ViTAdapter, images: torch.Tensor, last: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer_index, attn)`` for every transformer block up to ``last``, one layer at a time.

    ``attn`` is the post-softmax attention of the block, prefix tokens
    included, computed in eval mode without gradients. Only one layer's
    attention is alive at a time unless the caller keeps it. Stopping early
    (``break``) skips the remaining blocks. Non-finite attention raises
    :class:`~captum_sift.CaptumSiftError` naming the block. Between two
    yields the model is exactly as it was given (see
    :mod:`captum_sift.vit.capture`).

    The forward of block ``last`` stops as soon as its attention is
    captured (its attention-times-values, projection and MLP feed no
    attention that is yielded), and no later block runs: for a 12-block
    ViT this saves about a twelfth of a forward.

    Args:
        model: a timm, torchvision or Hugging Face ViT, or a :class:`ViTAdapter`.
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
