"""Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021b) as a class-specific Captum attribution.

"Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", eq. 5-6 for self-attention: with Ā_l the head
mean of (∇A_l ⊙ A_l)⁺ — A_l block l's post-softmax attention and ∇A_l the
gradient of the target logit with respect to it — the relevance is
R = (I + Ā_L) ⋯ (I + Ā_1), built block by block as R ← R + Ā_l R; the score
of a patch is the class token's row of R (for a model without a class token,
the mean of the patch rows).

Only that row is needed, so the product is taken from the left during the
backward pass: r ← r + r Ā_l as the gradient of each block's attention output
arrives (last block first). The model runs as it is (fused attention stays
fused): a hook keeps each block's attention input, which autograd keeps anyway
for the q/k/v projection, and in the backward, with g the gradient at the
heads' output A·V (the attention output's gradient times the output
projection's weight), block l's A = softmax(q kᵀ · scale) and ∇A = g vᵀ are
recomputed from it and the block's weights (:func:`~captum_sift.vit.parts.vit_parts`),
folded in and dropped: one image's (h, T, T) maps of one block are alive at a time.
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
from ..vit.parts import BlockParts, vit_parts
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

    One forward and one backward of the model as it is (fused attention
    stays fused); in the backward each block's map and its gradient are
    recomputed from the block's attention input and the gradient at its
    attention output, folded into the row and dropped, so memory is that of
    a forward and backward.

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
        """Relevance of every patch for ``target`` (None: each image's predicted class), (B, N).

        Blocks :func:`~captum_sift.vit.parts.vit_parts` models (timm's ``Block``, torchvision's
        ``EncoderBlock``, Hugging Face's ``ViTLayer``) recompute each map in the backward from fused
        attention; any other block the adapter captures (EVA, BEiT, q/k norms, ...) runs with eager
        attention and its captured map (memory: every block's map until the backward).
        """
        batch = self._batch(images)
        try:
            parts, _ = vit_parts(self.vit)
        except CaptumSiftError:
            return self._captured_scores(batch, target)
        row = _Row(self.vit)

        def fold(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> None:
            row.fold(index, _weighted_map(parts[index], q, k, v, grad).float())

        hooks = _AttentionHooks(self.vit, parts, self.start_layer, fold)
        with eval_mode(self.vit.model), torch.enable_grad(), hooks as first:
            logits = self.vit.logits(batch.model_input)
            self._backward(logits, target, first)
        return row.result(self.start_layer)

    def _captured_scores(self, batch: Any, target: Any) -> torch.Tensor:
        """The same from the adapter's capture: eager attention per block, each map's gradient by a tensor hook."""
        row = _Row(self.vit)
        first: list[torch.Tensor] = []

        def hook(index: int, attn: torch.Tensor) -> None:
            if index < self.start_layer:
                return
            # torchvision hands over a view of the map its product used: the gradient arrives at the base
            base = attn._base
            carrier = base if base is not None and base.numel() == attn.numel() else attn
            if not carrier.requires_grad:
                raise CaptumSiftError(f"the attention of block {index} carries no gradient")
            carrier.register_hook(
                lambda grad: row.fold(
                    index, (grad.reshape(attn.shape) * attn.detach()).clamp(min=0).mean(dim=1).float()
                )
            )
            if index == self.start_layer:
                first.append(carrier)

        with eval_mode(self.vit.model), torch.enable_grad():
            with self.vit.capturing(batch, hook):
                logits = self.vit.logits(batch.model_input)
            self._backward(logits, target, first)
        return row.result(self.start_layer)

    def _backward(self, logits: torch.Tensor, target: Any, first: list[torch.Tensor]) -> None:
        if not bool(torch.isfinite(logits).all()):
            raise CaptumSiftError("the model's logits are not finite: check the weights and the input")
        chosen = _targets(target, logits)
        if not first:
            raise CaptumSiftError(f"the attention of block {self.start_layer} carries no gradient")
        # the gradient with respect to block start_layer's tensor only: every later block lies on the way,
        # the parameters do not (their .grad is left alone)
        torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), first)

    @log_usage()
    def attribute(self, inputs: Any, target: Any = None) -> Any:  # type: ignore[override]
        """Attribution of exactly ``inputs.shape`` (constant within each patch) for ``target``.

        ``target``: an int, a list or (B,) tensor of class indices, or None
        for each image's predicted class.
        """
        images, as_tuple = self._images(inputs)
        return self._spread(self.patch_scores(images, target), images, as_tuple)


class _Row:
    """The read row r of R, folded r ← r (I + Ā_l) as each block's Ā_l arrives, last block first (checked)."""

    def __init__(self, vit: ViTAdapter) -> None:
        self.prefix, self.class_token = vit.num_prefix_tokens, vit.class_token
        self.depth = vit.depth
        self.done: list[int] = []
        self.row = torch.zeros(0)

    def fold(self, index: int, cam: torch.Tensor) -> None:
        if self.done and index != self.done[-1] - 1:  # autograd's order, checked rather than assumed
            raise CaptumSiftError(f"gradients reached block {index} after block {self.done[-1]}")
        if not self.done:
            self.row = _start_row(cam, self.prefix, self.class_token)
        self.row = self.row + torch.bmm(self.row.unsqueeze(1), cam).squeeze(1)  # r (I + Ā_l)
        self.done.append(index)

    def result(self, start: int) -> torch.Tensor:
        expected = list(range(self.depth - 1, start - 1, -1))
        if self.done != expected:
            raise CaptumSiftError(f"expected gradients at blocks {expected} in that order, got {self.done}")
        return self.row[:, self.prefix :]


def _start_row(like: torch.Tensor, prefix: int, class_token: bool) -> torch.Tensor:
    """(B, T) row of the identity that is read: the class token's, else the mean of the patch rows."""
    batch, tokens, _ = like.shape
    row = torch.zeros(batch, tokens, dtype=like.dtype, device=like.device)
    if class_token:
        row[:, 0] = 1.0
    else:
        row[:, prefix:] = 1.0 / (tokens - prefix)
    return row


#: Per family: the attention module of a block, the modules whose outputs are its q, k, v (one fused module or
#: three), and the module whose input is the heads' output A·V (empty: torchvision's nn.MultiheadAttention, whose
#: projections are not modules: q, k, v are recomputed from its input, the gradient at A·V from its output's).
_SITES = {
    "timm": ("attn", ("qkv",), "proj"),
    "hf": ("attention", ("q_proj", "k_proj", "v_proj"), "o_proj"),
    "torchvision": ("self_attention", (), ""),
}


def _weighted_map(
    part: BlockParts, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """E_h[(∇A ⊙ A)⁺] (B, T, T) of one block from its q, k, v and the gradient at A·V, each (B, T, h·d).

    One image at a time, in place: a single image's (h, T, T) maps are alive at once.
    """
    tokens = q.shape[1]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(tokens, part.heads, -1).transpose(0, 1)  # (h, T, d)

    def one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax((heads(q) * part.scale) @ heads(k).transpose(-2, -1), dim=-1)
        grad_attn = heads(grad) @ heads(v).transpose(-2, -1)  # ∇A = g vᵀ
        return grad_attn.mul_(attn).clamp_(min=0).mean(dim=0)

    return torch.stack([one(*rows) for rows in zip(q, k, v, grad, strict=True)])


class _AttentionHooks:
    """Hooks on every block's attention from ``start`` on: its q, k, v (or its input) are kept, and
    ``fold(index, q, k, v, grad)`` is called with the gradient at A·V during the backward; every hook is
    removed on exit. Entered, it gives the list that receives block ``start``'s tensor whose gradient ends the
    backward.
    """

    def __init__(self, vit: ViTAdapter, parts: tuple[BlockParts, ...], start: int, fold: Any) -> None:
        self.vit, self.parts, self.start, self.fold = vit, parts, start, fold
        self.handles: list[Any] = []
        self.first: list[torch.Tensor] = []

    def __enter__(self) -> list[torch.Tensor]:
        name, qkv, out = _SITES[self.vit.family]
        try:
            for index, block in enumerate(self.vit.blocks[self.start :], start=self.start):
                attention, kept = getattr(block, name), {}
                if qkv:
                    for site in qkv:
                        self.handles.append(getattr(attention, site).register_forward_hook(self._keep(site, kept)))
                    self.handles.append(getattr(attention, out).register_forward_pre_hook(self._watch(index, kept)))
                else:
                    self.handles.append(attention.register_forward_pre_hook(self._input(index, kept), with_kwargs=True))
                    self.handles.append(attention.register_forward_hook(self._output(index, kept)))
        except BaseException:
            self.__exit__()
            raise
        return self.first

    def __exit__(self, *_exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @staticmethod
    def _keep(site: str, kept: dict[str, torch.Tensor]) -> Any:
        def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            kept[site] = out.detach()  # the same storage the attention's backward keeps

        return hook

    def _grad_hook(self, index: int, tensor: torch.Tensor, kept: dict[str, torch.Tensor], project: bool) -> None:
        if not tensor.requires_grad:
            raise CaptumSiftError(f"the attention of block {index} carries no gradient")
        part = self.parts[index]

        def fold(grad: torch.Tensor) -> None:
            if project:  # the gradient at the output projection's output -> at its input A·V
                grad = grad @ part.proj.weight
            if "x" in kept:
                x = kept.pop("x")
                q, k, v = (nn.functional.linear(x, d.weight, d.bias) for d in (part.query, part.key, part.value))
            elif "qkv" in kept:
                q, k, v = kept.pop("qkv").chunk(3, dim=-1)
            else:
                q, k, v = (kept.pop(site) for site in ("q_proj", "k_proj", "v_proj"))
            self.fold(index, q, k, v, grad)  # what was kept is let go, as autograd lets go of the block's

        tensor.register_hook(fold)
        if index == self.start:
            self.first.append(tensor)

    def _watch(self, index: int, kept: dict[str, torch.Tensor]) -> Any:
        def hook(_module: nn.Module, args: tuple) -> None:
            self._grad_hook(index, args[0], kept, project=False)

        return hook

    def _input(self, index: int, kept: dict[str, torch.Tensor]) -> Any:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("query")
            others = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, torch.Tensor) and a is not x]
            if not isinstance(x, torch.Tensor) or others:
                raise CaptumSiftError(
                    f"expected the attention of block {index} to be self-attention over its tokens without a mask, "
                    f"got {len(others)} more tensor argument(s)"
                )
            kept["x"] = x.detach()

        return hook

    def _output(self, index: int, kept: dict[str, torch.Tensor]) -> Any:
        def hook(_module: nn.Module, _args: tuple, out: Any) -> None:
            self._grad_hook(index, out[0] if isinstance(out, (tuple, list)) else out, kept, project=True)

        return hook
