"""Attention-based baselines as Captum attributions: attention rollout and raw attention.

Both read the post-softmax attention the same way θ does (any model family,
:func:`~captum_sift.vit.iter_attention`, one layer alive at a time) and
return a per-patch score spread over the patch's pixels, exactly
``inputs.shape``, like :class:`~captum_sift.attr.SIFTInterrelation`. They do
not depend on the class: ``target`` is accepted and ignored.

Layer and head indices are checked against the model (``[-depth, depth)``,
``[-heads, heads)``), negative ones counting from the end as in Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .._checks import as_scalar, check_index
from ..errors import CaptumSiftError
from ..vit.adapter import ViTAdapter
from .patches import _PatchAttribution

__all__ = ["AttentionRollout", "RawAttention"]

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, heads, T, T) -> (B, T, T): the mean, max or min over heads."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise CaptumSiftError(f"expected head_fusion in {HEAD_FUSIONS}, got {head_fusion!r}")


def rollout_step(fused: torch.Tensor, discard_ratio: float = 0.0, keep_first: bool = True) -> torch.Tensor:
    """One layer of rollout (Abnar & Zuidema 2020): drop the weakest links, 0.5 A + 0.5 I, rows renormalised.

    ``discard_ratio`` of each image's (T x T) entries with the lowest weight
    are set to 0 (never the first column, the class token's, with
    ``keep_first``), as common practice does; then the residual is added as
    0.5 A + 0.5 I and every row is renormalised to sum to 1.
    """
    batch, tokens, _ = fused.shape
    a = fused.clone()
    if discard_ratio > 0:
        flat = a.view(batch, -1)
        k = int(flat.shape[1] * discard_ratio)
        if k:
            order = flat.argsort(dim=1, stable=True)
            if keep_first:  # column 0 of every row is the class token's: kept
                order = order[(order % tokens != 0)].view(batch, -1)
            flat.scatter_(1, order[:, :k], 0.0)
    eye = torch.eye(tokens, dtype=a.dtype, device=a.device)
    a = 0.5 * a + 0.5 * eye
    return a / a.sum(dim=-1, keepdim=True)


def _read_patches(matrix: torch.Tensor, prefix: int, class_token: bool) -> torch.Tensor:
    """(B, T, T) -> (B, N): the class token's row over the patches, else the mean of the patch rows."""
    if class_token:
        return matrix[:, 0, prefix:]
    return matrix[:, prefix:, prefix:].mean(dim=1)


class AttentionRollout(_PatchAttribution):
    """Attention rollout (Abnar & Zuidema 2020) as a Captum attribution, for any model family.

    The product over the blocks from ``start_layer`` on of 0.5 A + 0.5 I (A: the heads fused by mean, max
    or min, the weakest ``discard_ratio`` of links dropped, rows
    renormalised), streamed: one layer's attention and the (B, T, T) product
    are alive at a time. The score of a patch is the class token's row of
    the product restricted to the patches — or, for a model without a class
    token (``class_token=False``, registers or not), the mean over the patch
    rows.

    Args:
        model: a timm, torchvision or Hugging Face ViT, or an adapter.
        start_layer: the first block taken into the product (earlier blocks
            count as the identity; default 0, every block); negative counts
            from the end, as for :class:`~captum_sift.attr.GradientRollout`.
        head_fusion: ``"mean"`` (default), ``"max"`` or ``"min"``.
        discard_ratio: share of the lowest links dropped per layer, in [0, 1).
        image_space, mean, std: as :class:`~captum_sift.attr.SIFTInterrelation`.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
        >>> AttentionRollout(vit).attribute(torch.rand(2, 3, 32, 32) * 2 - 1).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        model: nn.Module | ViTAdapter,
        *,
        start_layer: int = 0,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        image_space: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(model, image_space=image_space, mean=mean, std=std)
        if head_fusion not in HEAD_FUSIONS:
            raise CaptumSiftError(f"expected head_fusion in {HEAD_FUSIONS}, got {head_fusion!r}")
        ratio = as_scalar(discard_ratio)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise CaptumSiftError(f"expected discard_ratio in [0, 1), got {discard_ratio!r}")
        self.head_fusion, self.discard_ratio = head_fusion, float(ratio)
        self.start_layer = check_index(start_layer, "start_layer", self.vit.depth, "blocks")

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Rollout score of every patch, (B, N)."""
        *_, last = self._rollouts(images)
        return last

    def patch_scores_per_layer(self, images: torch.Tensor) -> torch.Tensor:
        """The rollout after every block from ``start_layer`` on, (B, depth - start_layer, N), in one forward.

        Entry k is the product over blocks ``start_layer`` to ``start_layer + k``
        read as :meth:`patch_scores` reads it; the last entry is
        :meth:`patch_scores`. ``images`` as ``attribute`` takes them.
        """
        return torch.stack(list(self._rollouts(images)), dim=1)

    def _rollouts(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """The patch scores (B, N) of the product after each block from ``start_layer`` on."""
        batch = self._batch(images)
        prefix, cls = self.vit.num_prefix_tokens, self.vit.class_token
        joint: torch.Tensor | None = None

        def fuse(index: int, attn: torch.Tensor) -> torch.Tensor | None:  # inside the block: the map is in cache
            return None if index < self.start_layer else fuse_heads(attn.float(), self.head_fusion)

        for _, fused in self.vit.iter_attention(batch, consume=fuse):
            if fused is None:  # a block before start_layer: the identity
                continue
            step = rollout_step(fused, self.discard_ratio, keep_first=cls)
            joint = step if joint is None else step @ joint
            del fused, step
            yield _read_patches(joint, prefix, cls)


class RawAttention(_PatchAttribution):
    """One layer's class-token attention (the head mean, or one head) over the patches, as a Captum attribution.

    For a model without a class token, the mean over the patch rows. Blocks
    after ``layer`` are not run.

    Args:
        model: a timm, torchvision or Hugging Face ViT, or an adapter.
        layer: the block (negative counts from the end; default the last).
        head: None (default: the mean over heads) or one head's index
            (negative counts from the end). One int only: the mean over a
            subset of heads is the mean of their single-head attributions
            (the class-token row is linear in the map), and per-head maps of
            every head at once are :func:`~captum_sift.theta.patch_theta_maps`'s
            business for θ.
        image_space, mean, std: as :class:`~captum_sift.attr.SIFTInterrelation`.
    """

    def __init__(
        self,
        model: nn.Module | ViTAdapter,
        *,
        layer: int = -1,
        head: int | None = None,
        image_space: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(model, image_space=image_space, mean=mean, std=std)
        self.layer = check_index(layer, "layer", self.vit.depth, "blocks")
        self.head = None if head is None else check_index(head, "head", self.vit.num_heads, "heads")

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class-token attention (head mean, or head ``head``) of every patch at ``layer``, (B, N)."""
        batch = self._batch(images)
        prefix = self.vit.num_prefix_tokens
        for index, attn in self.vit.iter_attention(batch, last=self.layer):
            if index == self.layer:
                heads = attn.float().mean(dim=1) if self.head is None else attn[:, self.head].float()
                return _read_patches(heads, prefix, self.vit.class_token)
        raise CaptumSiftError(f"the model never reached block {self.layer}")  # pragma: no cover
