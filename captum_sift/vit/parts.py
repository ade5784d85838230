"""A ViT classifier's computation after its stem as plain weights, read from the model's own modules.

:func:`vit_parts` reads, for timm's ``Block``, torchvision's ``EncoderBlock``
and Hugging Face's ``ViTLayer`` / ``DeiTLayer``, what each block computes —
pre-norm self-attention and MLP with residuals (``x + ls1·proj(attn(norm1(x)))``,
``x + ls2·fc2(act(fc1(norm2(x))))``) — and the head (final norm, pooling,
classifier), so that a function can run the same network with its own
operations (an LRP backward, for instance). The weights are the model's
parameters, detached, read at each call: nothing of the model is changed.

A block or head with anything else (q/k norms, gated attention, SwiGLU,
attention pooling, distillation heads, a pre-logits layer) is refused with
:class:`~captum_sift.CaptumSiftError` rather than computed wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CaptumSiftError
from .adapter import ViTAdapter

__all__ = ["BlockParts", "Dense", "HeadParts", "Norm", "vit_parts"]

#: Element-wise activations a block's MLP may use (by class name: torch's and transformers').
ELEMENTWISE = ("GELU", "GELUActivation", "ReLU", "SiLU", "SiLUActivation", "QuickGELUActivation", "Tanh")


@dataclass(frozen=True)
class Dense:
    """A linear map ``x Wᵀ + b``; ``bias`` may be None."""

    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass(frozen=True)
class Norm:
    """A LayerNorm over the last dimension: ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm transformer block: attention with ``heads`` heads, logits ``(q·scale) kᵀ``, then the MLP."""

    norm1: Norm
    query: Dense
    key: Dense
    value: Dense
    heads: int
    scale: float
    proj: Dense
    ls1: torch.Tensor | None
    norm2: Norm
    fc1: Dense
    act: nn.Module
    fc2: Dense
    ls2: torch.Tensor | None


@dataclass(frozen=True)
class HeadParts:
    """After the blocks: ``norm``, pooling (``"token"``: the first token; ``"avg"``: the mean of the tokens
    from ``start`` on), ``fc_norm``, the classifier."""

    norm: Norm | None
    pool: str
    start: int
    fc_norm: Norm | None
    classifier: Dense


def _dense(module: object, where: str) -> Dense:
    if not isinstance(module, nn.Linear):
        raise CaptumSiftError(f"expected {where} to be an nn.Linear, got {type(module).__name__}")
    return Dense(module.weight.detach(), None if module.bias is None else module.bias.detach())


def _norm(module: object, where: str, optional: bool = False) -> Norm | None:
    if optional and (module is None or isinstance(module, nn.Identity)):
        return None
    if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
        kind = type(module).__name__
        raise CaptumSiftError(f"unsupported {where}: expected an nn.LayerNorm over the channels, got {kind}")
    weight = None if module.weight is None else module.weight.detach()
    return Norm(weight, None if module.bias is None else module.bias.detach(), float(module.eps))


def _act(module: object, where: str) -> nn.Module:
    if not isinstance(module, nn.Module) or type(module).__name__ not in ELEMENTWISE:
        raise CaptumSiftError(f"unsupported {where}: expected an element-wise activation {ELEMENTWISE}, got {module!r}")
    return module


def _identity(module: object, where: str) -> None:
    if module is not None and not isinstance(module, nn.Identity):
        raise CaptumSiftError(f"unsupported {where}: {type(module).__name__} (only nn.Identity here is computed)")


def _split(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[Dense, Dense, Dense]:
    """A fused (3E, E) in-projection -> query, key, value."""
    weights = weight.detach().chunk(3)
    biases = (None, None, None) if bias is None else bias.detach().chunk(3)
    return tuple(Dense(w, b) for w, b in zip(weights, biases, strict=True))  # type: ignore[return-value]


def _layer_scale(module: object, where: str) -> torch.Tensor | None:
    if module is None or isinstance(module, nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if type(module).__name__ != "LayerScale" or not isinstance(gamma, torch.Tensor):
        kind = type(module).__name__
        raise CaptumSiftError(f"unsupported {where}: expected timm's LayerScale or nn.Identity, got {kind}")
    return gamma.detach()


def _timm_block(block: nn.Module, i: int) -> BlockParts:
    where = f"block {i} ({type(block).__name__})"
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if type(block).__name__ != "Block" or type(attn).__name__ != "Attention" or type(mlp).__name__ != "Mlp":
        raise CaptumSiftError(
            f"unsupported {where}: expected timm's vision_transformer Block with Attention and Mlp, got "
            f"{type(block).__name__} with {type(attn).__name__} and {type(mlp).__name__}"
        )
    for name in ("q_norm", "k_norm", "norm"):
        _identity(getattr(attn, name, None), f"attn.{name} of {where}")
    if getattr(attn, "gate", None) is not None:
        raise CaptumSiftError(f"unsupported gated attention (attn.gate) in {where}")
    _identity(getattr(mlp, "norm", None), f"mlp.norm of {where}")
    qkv = _dense(attn.qkv, f"attn.qkv of {where}")
    return BlockParts(
        _norm(block.norm1, f"norm1 of {where}"), *_split(qkv.weight, qkv.bias), int(attn.num_heads),  # type: ignore[arg-type]
        float(attn.scale), _dense(attn.proj, f"attn.proj of {where}"), _layer_scale(block.ls1, f"ls1 of {where}"),
        _norm(block.norm2, f"norm2 of {where}"), _dense(mlp.fc1, f"mlp.fc1 of {where}"),  # type: ignore[arg-type]
        _act(mlp.act, f"mlp.act of {where}"), _dense(mlp.fc2, f"mlp.fc2 of {where}"),
        _layer_scale(block.ls2, f"ls2 of {where}"),
    )  # fmt: skip


def _timm_head(model: nn.Module) -> HeadParts:
    if getattr(model, "attn_pool", None) is not None or getattr(model, "head_dist", None) is not None:
        raise CaptumSiftError(f"unsupported head of {type(model).__name__}: attention pooling or a distillation head")
    pool = getattr(model, "global_pool", None)
    if pool not in ("token", "avg") or getattr(model, "pool_include_prefix", False):
        raise CaptumSiftError(f"unsupported global_pool {pool!r} of {type(model).__name__}: expected 'token' or 'avg'")
    return HeadParts(
        _norm(model.norm, "final norm", optional=True),
        pool,
        int(model.num_prefix_tokens),  # type: ignore[arg-type]
        _norm(getattr(model, "fc_norm", None), "fc_norm", optional=True),
        _dense(model.head, "the classifier head"),
    )


def _torchvision_block(block: nn.Module, i: int) -> BlockParts:
    where = f"block {i} ({type(block).__name__})"
    mha = block.self_attention
    if (
        not mha._qkv_same_embed_dim
        or mha.bias_k is not None
        or mha.add_zero_attn
        or not mha.batch_first
        or not isinstance(mha.out_proj, nn.Linear)
    ):
        raise CaptumSiftError(f"unsupported nn.MultiheadAttention in {where}: expected one in-projection, batch_first")
    layers = [m for m in block.mlp if not isinstance(m, nn.Dropout)]
    if len(layers) != 3:
        raise CaptumSiftError(f"unsupported MLP in {where}: expected Linear, activation, Linear, got {layers}")
    head_dim = mha.embed_dim // mha.num_heads
    return BlockParts(
        _norm(block.ln_1, f"ln_1 of {where}"), *_split(mha.in_proj_weight, mha.in_proj_bias), int(mha.num_heads),  # type: ignore[arg-type]
        head_dim**-0.5, _dense(mha.out_proj, f"out_proj of {where}"), None, _norm(block.ln_2, f"ln_2 of {where}"),  # type: ignore[arg-type]
        _dense(layers[0], f"mlp[0] of {where}"), _act(layers[1], f"the mlp activation of {where}"),
        _dense(layers[2], f"the second mlp linear of {where}"), None,
    )  # fmt: skip


def _torchvision_head(model: nn.Module) -> HeadParts:
    heads = model.heads
    names = [name for name, _ in heads.named_children()]
    if names != ["head"]:
        raise CaptumSiftError(f"unsupported torchvision heads {names}: expected only 'head' (no pre_logits layer)")
    return HeadParts(_norm(model.encoder.ln, "encoder.ln"), "token", 1, None, _dense(heads.head, "heads.head"))


def _hf_block(block: nn.Module, i: int) -> BlockParts:
    where = f"layer {i} ({type(block).__name__})"
    attn, mlp = getattr(block, "attention", None), getattr(block, "mlp", None)
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    if not all(hasattr(attn, n) for n in names) or not all(hasattr(mlp, n) for n in ("fc1", "activation_fn", "fc2")):
        raise CaptumSiftError(
            f"unsupported Hugging Face {where}: expected ViTLayer's attention.q_proj/k_proj/v_proj/o_proj and "
            "mlp.fc1/activation_fn/fc2"
        )
    for name in ("layer_scale1", "layer_scale2", "drop_path"):
        _identity(getattr(block, name, None), f"{name} of {where}")
    return BlockParts(
        _norm(block.layernorm_before, f"layernorm_before of {where}"), _dense(attn.q_proj, f"q_proj of {where}"),
        _dense(attn.k_proj, f"k_proj of {where}"), _dense(attn.v_proj, f"v_proj of {where}"),
        int(attn.num_attention_heads), float(attn.scaling), _dense(attn.o_proj, f"o_proj of {where}"), None,
        _norm(block.layernorm_after, f"layernorm_after of {where}"), _dense(mlp.fc1, f"mlp.fc1 of {where}"),  # type: ignore[arg-type]
        _act(mlp.activation_fn, f"mlp.activation_fn of {where}"), _dense(mlp.fc2, f"mlp.fc2 of {where}"), None,
    )  # fmt: skip


_HF_CLASSIFIERS = ("ViTForImageClassification", "DeiTForImageClassification")


def _hf_head(model: nn.Module) -> HeadParts:
    if type(model).__name__ not in _HF_CLASSIFIERS:
        raise CaptumSiftError(f"unsupported Hugging Face classifier {type(model).__name__}: expected {_HF_CLASSIFIERS}")
    base = model.base_model
    return HeadParts(_norm(base.layernorm, "layernorm"), "token", 1, None, _dense(model.classifier, "classifier"))


_READERS = {"timm": (_timm_block, _timm_head), "torchvision": (_torchvision_block, _torchvision_head),
            "hf": (_hf_block, _hf_head)}  # fmt: skip


def vit_parts(vit: ViTAdapter) -> tuple[tuple[BlockParts, ...], HeadParts]:
    """The blocks and head of the adapter's classifier as plain weights (see the module docstring).

    Example:
        >>> import timm
        >>> from captum_sift.vit import as_vit
        >>> blocks, head = vit_parts(as_vit(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2)))
        >>> len(blocks), blocks[0].heads, head.pool, tuple(head.classifier.weight.shape)
        (2, 3, 'token', (1000, 192))
    """
    vit.check_classifier()
    if vit.family not in _READERS:
        raise CaptumSiftError(f"expected a timm, torchvision or Hugging Face ViT, got family {vit.family!r}")
    read_block, read_head = _READERS[vit.family]
    return tuple(read_block(block, i) for i, block in enumerate(vit.blocks)), read_head(vit.model)
