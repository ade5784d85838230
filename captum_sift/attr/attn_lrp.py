"""AttnLRP (Achtibat et al. 2024) as a class-specific Captum attribution, on the adapter's weights.

"AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers"
(ICML 2024), the rules lxt implements, written as a gradient × input: every
operation of the network after its stem is rerun here from the model's own
weights (:func:`captum_sift.vit.parts.vit_parts`) with autograd functions
whose backward is the rule, so that the relevance of any tensor ``t`` is
``t ⊙ g_t`` for the modified gradient ``g_t``. Starting from the target logit
(relevance = the logit), the relevance of the tokens entering the first block
is ``h₀ ⊙ g_{h₀}``; a patch's score is its token's relevance summed over the
channels (its patch embedding plus its position embedding).

The rules, each a backward below:

- linear layers and residual sums: the ε-rule,
  ``R_x = x ⊙ Wᵀ(R_z / (z + ε·sign z))`` (:class:`_Epsilon` on the output,
  the rest is the plain gradient); the bias keeps its share;
- LayerNorm: the identity rule on the normalisation, i.e. the denominator
  ``sqrt(var + eps)`` is held constant and the rest (centring, affine map)
  is linear (:class:`_LayerNormRule`);
- element-wise activations (GELU): the identity rule ``R_x = R_y``
  (:class:`_IdentityRule`);
- softmax: AttnLRP's Prop. 3.1, the linearisation at its input,
  ``R_x = x ⊙ (R - s Σ_j R_j)`` without the bias term, which absorbs
  ``Σ R - Σ R_x`` (:class:`_SoftmaxRule`);
- the bilinear products ``Q Kᵀ`` and ``A V``: the uniform rule, half of the
  output's relevance to each factor (:class:`_Half` on both), with ε → 0
  (gradient × input never divides by the product, so none is needed).

With all biases zero and ε → 0 the relevance is conserved except for what
the softmax rule's bias term absorbs (tests/attr/test_attn_lrp.py checks
``Σ R(h₀) + Σ absorbed = logit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from captum.log import log_usage
from torch import nn

from .._checks import check_number
from ..errors import CaptumSiftError
from ..vit.adapter import ViTAdapter
from ..vit.capture import eval_mode
from ..vit.parts import BlockParts, Dense, HeadParts, Norm, vit_parts
from .gradient_rollout import _targets
from .patches import _PatchAttribution

__all__ = ["AttnLRP"]


def _stable(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + ε·sign(z)`` with sign(0) = 1: the ε-rule's denominator."""
    return torch.where(z >= 0, z + eps, z - eps)


class _Epsilon(torch.autograd.Function):
    """Identity forward; backward ``g ⊙ z / (z + ε sign z)``: the ε-rule for the operation that produced ``z``."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.eps = eps
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        magnitude = z.abs()  # z / (z + ε sign z) = |z| / (|z| + ε): four passes over z
        return grad * magnitude.div_(magnitude + ctx.eps), None


class _IdentityRule(torch.autograd.Function):
    """``act(x)`` forward; backward ``g ⊙ act(x) / x``, so that ``x ⊙ g_x = y ⊙ g_y``: the identity rule.

    Only ``x`` is kept; ``act(x)`` is recomputed in the backward (one element-wise pass, a (B, T, 4C) tensor less).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, act: nn.Module, eps: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.act, ctx.eps = act, eps
        return act(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * ctx.act(x) / _stable(x, ctx.eps), None, None


class _Half(torch.autograd.Function):
    """Identity forward; backward ``g / 2``: one factor's half of a product's relevance (the uniform rule)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad / 2


class _SoftmaxRule(torch.autograd.Function):
    """Softmax over the last dimension; backward AttnLRP's rule (Prop. 3.1): with ``R = s ⊙ g`` the output's
    relevance, ``g_x = R - s Σ_j R_j``, so that ``x ⊙ g_x`` is the rule's ``R_x``. That is also softmax's own
    gradient (the rule is its linearisation at ``x``), so :func:`_softmax` uses this class only to keep a ledger:
    ``ledger`` receives per image the relevance the left-out bias term absorbs, ``Σ R - Σ R_x`` (B,).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, ledger: list) -> torch.Tensor:
        s = torch.softmax(x, dim=-1)
        ctx.save_for_backward(x, s)
        ctx.ledger = ledger
        return s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, s = ctx.saved_tensors
        relevance = s * grad  # R
        grad_x = relevance - s * relevance.sum(dim=-1, keepdim=True)
        ctx.ledger.append((relevance.flatten(1).sum(1) - (x * grad_x).flatten(1).sum(1)).detach())
        return grad_x, None


def _softmax(x: torch.Tensor, ledger: list | None) -> torch.Tensor:
    """Softmax with AttnLRP's rule as its backward (autograd's own, which keeps only the output, without a ledger)."""
    return torch.softmax(x, dim=-1) if ledger is None else _SoftmaxRule.apply(x, ledger)


class _LayerNormRule(torch.autograd.Function):
    """LayerNorm forward (``F.layer_norm``); backward with the denominator ``sqrt(var + eps)`` held constant
    (AttnLRP's identity rule on the normalisation): ``g_x = (g_w - mean(g_w)) / σ`` with ``g_w = g ⊙ weight``,
    the gradient of the centring and affine map, which are linear. Keeps only 1/σ (B, T, 1).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, norm: Norm) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)
        inverse = torch.rsqrt(x.var(dim=-1, unbiased=False, keepdim=True) + norm.eps)
        ctx.save_for_backward(inverse)
        ctx.weight = norm.weight
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inverse,) = ctx.saved_tensors
        weighted = grad if ctx.weight is None else grad * ctx.weight
        return (weighted - weighted.mean(dim=-1, keepdim=True)) * inverse, None


def _linear(x: torch.Tensor, dense: Dense, eps: float) -> torch.Tensor:
    return _Epsilon.apply(F.linear(x, dense.weight, dense.bias), eps)


def _layer_norm(x: torch.Tensor, norm: Norm | None) -> torch.Tensor:
    return x if norm is None else _LayerNormRule.apply(x, norm)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, _ = x.shape
    return x.view(batch, tokens, heads, -1).transpose(1, 2)  # (B, h, T, d)


def _block(x: torch.Tensor, part: BlockParts, eps: float, ledger: list | None) -> torch.Tensor:
    """One pre-norm block with the rules; forward values are the block's own."""
    h = _layer_norm(x, part.norm1)
    q, k, v = (_heads(_linear(h, dense, eps), part.heads) for dense in (part.query, part.key, part.value))
    # the uniform rule with ε -> 0 on the two products (the plain gradient halved, as lxt): ε there would keep
    # a (B, h, T, T) tensor per block for a factor ≈ 1, and gradient × input never divides by the product
    logits = _Half.apply(q * part.scale) @ _Half.apply(k).transpose(-2, -1)
    attn = _softmax(logits, ledger)
    mixed = _Half.apply(attn) @ _Half.apply(v)
    out = _linear(mixed.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1), part.proj, eps)
    x = _Epsilon.apply(x + (out if part.ls1 is None else out * part.ls1), eps)
    hidden = _IdentityRule.apply(_linear(_layer_norm(x, part.norm2), part.fc1, eps), part.act, eps)
    out = _linear(hidden, part.fc2, eps)
    return _Epsilon.apply(x + (out if part.ls2 is None else out * part.ls2), eps)


def _head(x: torch.Tensor, head: HeadParts, eps: float) -> torch.Tensor:
    x = _layer_norm(x, head.norm)
    pooled = x[:, 0] if head.pool == "token" else x[:, head.start :].mean(dim=1)
    return _linear(_layer_norm(pooled, head.fc_norm), head.classifier, eps)


def lrp_logits(
    tokens: torch.Tensor, parts: tuple[tuple[BlockParts, ...], HeadParts], eps: float, ledger: list | None = None
) -> torch.Tensor:
    """The class logits (B, classes) from the tokens entering the first block, every operation with its LRP rule."""
    blocks, head = parts
    for part in blocks:
        tokens = _block(tokens, part, eps, ledger)
    return _head(tokens, head, eps)


class AttnLRP(_PatchAttribution):
    """AttnLRP (Achtibat et al. 2024) as a class-specific Captum attribution, for any family.

    The network after its stem is rerun from the model's own weights with
    AttnLRP's rules (ε-rule for linear layers and sums, identity rule for
    LayerNorm's normalisation and GELU, the softmax rule, the uniform rule
    for ``Q Kᵀ`` and ``A V``; see the module docstring); the score of a
    patch is the relevance of its token entering the first block, summed
    over the channels, spread over the patch's pixels. The model is not
    changed: no hook stays, no flag is flipped. Blocks or heads the
    re-implementation does not cover (q/k norms, SwiGLU, attention pooling,
    ...) are refused with :class:`~captum_sift.CaptumSiftError`.

    Args:
        model: a timm, torchvision or Hugging Face ViT classifier, or an adapter.
        epsilon: the ε of the ε-rule (> 0).
        image_space, mean, std: as :class:`~captum_sift.attr.SIFTInterrelation`.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
        >>> AttnLRP(vit).attribute(torch.randn(2, 3, 32, 32), target=1).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        model: nn.Module | ViTAdapter,
        *,
        epsilon: float = 1e-6,
        image_space: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(model, image_space=image_space, mean=mean, std=std)
        self.epsilon = check_number(epsilon, "epsilon", low=0.0, low_open=True)
        vit_parts(self.vit)  # refuse an unsupported model here rather than at the first call

    def token_relevance(self, images: torch.Tensor, target: Any = None, *, _ledger: list | None = None) -> torch.Tensor:
        """Relevance of every token entering the first block (prefix tokens included), (B, T).

        Its sum over the tokens is the target logit up to what the biases, ε
        and the softmax rule absorb.
        """
        batch = self._batch(images)
        parts = vit_parts(self.vit)
        with eval_mode(self.vit.model):
            with torch.no_grad():
                tokens = self.vit.stem(batch.model_input)[0].detach()
            with torch.enable_grad():
                tokens.requires_grad_(True)
                logits = lrp_logits(tokens, parts, self.epsilon, _ledger)
                if not bool(torch.isfinite(logits).all()):
                    raise CaptumSiftError("the model's logits are not finite: check the weights and the input")
                chosen = _targets(target, logits)
                (grad,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), tokens)
        return (tokens.detach() * grad).sum(dim=-1)

    def patch_scores(self, images: torch.Tensor, target: Any = None) -> torch.Tensor:  # type: ignore[override]
        """Relevance of every patch for ``target`` (None: each image's predicted class), (B, N)."""
        return self.token_relevance(images, target)[:, self.vit.num_prefix_tokens :]

    @log_usage()
    def attribute(self, inputs: Any, target: Any = None) -> Any:  # type: ignore[override]
        """Attribution of exactly ``inputs.shape`` (constant within each patch) for ``target``.

        ``target``: an int, a list or (B,) tensor of class indices, or None
        for each image's predicted class.
        """
        images, as_tuple = self._images(inputs)
        return self._spread(self.patch_scores(images, target), images, as_tuple)
