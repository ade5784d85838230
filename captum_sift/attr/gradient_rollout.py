"""Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021b) as a class-specific Captum attribution.

"Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", eq. 5-6 for self-attention: with Ā_l the head
mean of (∇A_l ⊙ A_l)⁺ — A_l block l's post-softmax attention and ∇A_l the
gradient of the target logit with respect to it — the relevance is
R = (I + Ā_L) ⋯ (I + Ā_1), built block by block as R ← R + Ā_l R; the score
of a patch is the class token's row of R (for a model without a class token,
the mean of the patch rows).

Only that row is needed, so the product is taken from the left during the
backward pass: r ← r + r Ā_l as the gradient of each block's map arrives
(last block first). No map is kept beyond what autograd keeps anyway, and one
block's (B, T, T) product is alive at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.log import log_usage
from torch import nn

from .._checks import as_int, check_classes, check_index
from ..errors import CaptumSiftError
from ..vit.adapter import ViTAdapter
from ..vit.capture import eval_mode
from .patches import _PatchAttribution

__all__ = ["GradientRollout"]


def _targets(target: Any, logits: torch.Tensor) -> torch.Tensor:
    """Captum's target forms (an int, a list of ints, a (B,) integer tensor) -> (B,) classes; None: the predictions."""
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    single = as_int(target)
    if single is not None:
        target = torch.full((batch,), single, dtype=torch.long)
    elif isinstance(target, (list, tuple)):
        items = [as_int(t) for t in target]
        if any(t is None for t in items):
            raise CaptumSiftError(f"expected target to be class indices (ints), got {target!r}")
        target = torch.tensor(items, dtype=torch.long)
    elif not isinstance(target, torch.Tensor):
        raise CaptumSiftError(
            f"expected target to be a class index (an int), a list of them or a (B,) tensor, got {target!r}"
        )
    return check_classes(target, batch, "target", high=classes).to(logits.device, torch.long)


class GradientRollout(_PatchAttribution):
    """Class-specific gradient-weighted rollout (Chefer et al. 2021b) as a Captum attribution, for any family.

    R ← R + E_h[(∇A ⊙ A)⁺] R block by block from R = I, ∇A the gradient of
    the target class's logit with respect to the block's post-softmax
    attention A; the score of a patch is the class token's row of R over the
    patches (the mean of the patch rows for a model without a class token).
    Unlike :class:`AttentionRollout` the map depends on ``target``.

    One forward and one backward: each block runs with eager (non-fused)
    attention during that forward only, and its map's gradient is folded
    into the row as it arrives, so memory is that of a forward and backward.

    Args:
        model: a timm, torchvision or Hugging Face ViT classifier, or an adapter.
        start_layer: the first block taken into the product (earlier blocks
            count as the identity); negative counts from the end.
        image_space, mean, std: as :class:`~captum_sift.attr.SIFTInterrelation`.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
        >>> GradientRollout(vit).attribute(torch.rand(2, 3, 32, 32), target=1).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        model: nn.Module | ViTAdapter,
        *,
        start_layer: int = 0,
        image_space: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(model, image_space=image_space, mean=mean, std=std)
        self.vit.check_classifier()
        self.start_layer = check_index(start_layer, "start_layer", self.vit.depth, "blocks")

    def patch_scores(self, images: torch.Tensor, target: Any = None) -> torch.Tensor:  # type: ignore[override]
        """Relevance of every patch for ``target`` (None: each image's predicted class), (B, N)."""
        batch = self._batch(images)
        prefix, cls = self.vit.num_prefix_tokens, self.vit.class_token
        done: list[int] = []
        first: list[torch.Tensor] = []  # block start_layer's map: the backward goes as far as it, no further
        row = torch.zeros(0)

        def fold(index: int, attn: torch.Tensor, grad: torch.Tensor) -> None:
            nonlocal row
            if done and index != done[-1] - 1:  # autograd's order, checked rather than assumed
                raise CaptumSiftError(f"gradients reached block {index} after block {done[-1]}")
            cam = (grad.reshape(attn.shape) * attn).clamp(min=0).mean(dim=1).float()  # Ā_l (B, T, T)
            if not done:
                row = _start_row(cam, prefix, cls)
            row = row + torch.bmm(row.unsqueeze(1), cam).squeeze(1)  # r (I + Ā_l)
            done.append(index)

        def hook(index: int, attn: torch.Tensor) -> None:
            if index < self.start_layer:
                return
            # torchvision hands over a view of the map its product used: the gradient arrives at the base
            base = attn._base
            carrier = base if base is not None and base.numel() == attn.numel() else attn
            if not carrier.requires_grad:
                raise CaptumSiftError(f"the attention of block {index} carries no gradient")
            carrier.register_hook(lambda grad: fold(index, attn.detach(), grad))
            if index == self.start_layer:
                first.append(carrier)

        with eval_mode(self.vit.model), torch.enable_grad():
            with self.vit.capturing(batch, hook):
                logits = self.vit.logits(batch.model_input)
            if not bool(torch.isfinite(logits).all()):
                raise CaptumSiftError("the model's logits are not finite: check the weights and the input")
            chosen = _targets(target, logits)
            # the gradient with respect to the first map only: every later map lies on the way, the
            # parameters do not (their .grad is left alone)
            torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), first)
        expected = list(range(self.vit.depth - 1, self.start_layer - 1, -1))
        if done != expected:
            raise CaptumSiftError(f"expected gradients at blocks {expected} in that order, got {done}")
        return row[:, prefix:]

    @log_usage()
    def attribute(self, inputs: Any, target: Any = None) -> Any:  # type: ignore[override]
        """Attribution of exactly ``inputs.shape`` (constant within each patch) for ``target``.

        ``target``: an int, a list or (B,) tensor of class indices, or None
        for each image's predicted class.
        """
        images, as_tuple = self._images(inputs)
        return self._spread(self.patch_scores(images, target), images, as_tuple)


def _start_row(like: torch.Tensor, prefix: int, class_token: bool) -> torch.Tensor:
    """(B, T) row of the identity that is read: the class token's, else the mean of the patch rows."""
    batch, tokens, _ = like.shape
    row = torch.zeros(batch, tokens, dtype=like.dtype, device=like.device)
    if class_token:
        row[:, 0] = 1.0
    else:
        row[:, prefix:] = 1.0 / (tokens - prefix)
    return row
