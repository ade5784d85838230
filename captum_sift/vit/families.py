"""What timm, torchvision and Hugging Face ViTs say about themselves, as the fields of an adapter.

Per family: which model it is (:func:`family_of`), where its blocks and
attention modules are, how many prefix tokens it puts before the patches,
its patch size, channels, heads and input statistics, its classifier
(:func:`head_classes`) and how one block is switched to an explicit,
capturable attention for one call (timm's ``fused_attn``, torchvision's
``need_weights``, transformers' ``attn_implementation``).
:func:`adapter_fields` gathers them for :func:`~captum_sift.vit.adapter.as_vit`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._checks import as_int
from ..errors import CaptumSiftError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "adapter_fields", "call_model", "family_of", "head_classes", "unwrap"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)


def call_model(model: nn.Module, images: torch.Tensor) -> Any:
    """The model's own forward on its input."""
    return model(images)


def _per_channel(
    mean: Sequence[float], std: Sequence[float], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Statistics with one value per input channel: 3-channel ones averaged for a model of other channels."""
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    return (float(sum(mean) / len(mean)),) * in_chans, (float(sum(std) / len(std)),) * in_chans


def _square_patch(patch: object) -> int:
    """The side of a square patch given as an int or a (h, w) pair."""
    pair = tuple(patch) if isinstance(patch, (tuple, list)) else (int(patch), int(patch))  # type: ignore[call-overload]
    if pair[0] != pair[1]:
        raise CaptumSiftError(f"expected square patches, got patch_size={pair}")
    return int(pair[0])


# -- timm ----------------------------------------------------------------------------
@contextmanager
def _timm_capture(block: nn.Module, store: list) -> Iterator[None]:
    """Run a timm block non-fused and append its post-softmax attention (``attn_drop``'s input)."""
    attn = block.attn
    old_fused = attn.fused_attn
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: store.append(out))
    attn.fused_attn = False
    try:
        yield
    finally:
        attn.fused_attn = old_fused
        handle.remove()


def _timm_stem(model: nn.Module, images: torch.Tensor) -> Any:
    return model.forward_features(images)


def _is_timm(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("patch_embed", "blocks", "forward_features"))


def _timm_fields(model: nn.Module) -> dict[str, Any]:
    blocks = tuple(model.blocks)
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        drop = getattr(attn, "attn_drop", None)
        if attn is None or not hasattr(attn, "fused_attn") or not isinstance(drop, nn.Module):
            raise CaptumSiftError(
                f"unsupported attention in block {i}: {type(attn).__name__ if attn is not None else 'no .attn'} "
                f"of {type(block).__name__}; expected a timm attention module with .fused_attn and .attn_drop"
            )
    patch = getattr(model.patch_embed, "patch_size", None)
    if patch is None:
        raise CaptumSiftError(f"expected model.patch_embed.patch_size, got a {type(model).__name__} without it")
    patch = _square_patch(patch)
    prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    proj = getattr(model.patch_embed, "proj", None)
    in_chans = int(getattr(proj, "in_channels", 0) or getattr(model.patch_embed, "in_chans", 3))
    config = getattr(model, "pretrained_cfg", None) or {}
    # timm keeps 3-channel statistics for models built with in_chans=1
    mean, std = _per_channel(config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD), in_chans)
    size = config.get("input_size")
    img_size = getattr(model.patch_embed, "img_size", None)
    img_size = int(img_size[-1]) if isinstance(img_size, (tuple, list)) else (int(size[-1]) if size else None)
    return dict(
        model=model, family="timm", blocks=blocks, num_prefix_tokens=prefix, patch_size=patch,
        in_chans=in_chans, num_heads=int(blocks[0].attn.num_heads), mean=mean, std=std, capture=_timm_capture,
        forward_stem=_timm_stem, forward_logits=call_model if hasattr(model, "forward_head") else None,
        name=str(config.get("architecture", type(model).__name__)), img_size=img_size,
        class_token=getattr(model, "cls_token", None) is not None,
    )  # fmt: skip


# -- torchvision ---------------------------------------------------------------------
@contextmanager
def _torchvision_capture(block: nn.Module, store: list) -> Iterator[None]:
    """Ask the block's nn.MultiheadAttention for its per-head weights (the block asks for none)."""
    mha = block.self_attention

    def ask(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep(_m: nn.Module, _args: tuple, _kwargs: dict, out: tuple) -> None:
        store.append(out[1])

    handles = [mha.register_forward_pre_hook(ask, with_kwargs=True), mha.register_forward_hook(keep, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _torchvision_fields(model: nn.Module) -> dict[str, Any]:
    blocks = tuple(model.encoder.layers)
    for i, block in enumerate(blocks):
        if not isinstance(getattr(block, "self_attention", None), nn.MultiheadAttention):
            raise CaptumSiftError(f"expected block {i} of the torchvision ViT to have an nn.MultiheadAttention")
    return dict(
        model=model, family="torchvision", blocks=blocks, num_prefix_tokens=1, patch_size=int(model.patch_size),
        in_chans=int(model.conv_proj.in_channels), num_heads=int(blocks[0].self_attention.num_heads),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, capture=_torchvision_capture, forward_logits=call_model,
        name=f"torchvision {type(model).__name__}", img_size=int(model.image_size),
    )  # fmt: skip


# -- Hugging Face transformers -------------------------------------------------------
def _hf_configs(module: nn.Module) -> list[Any]:
    """The distinct config objects the modules of ``module`` read their attention implementation from."""
    seen: dict[int, Any] = {}
    for m in module.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


@contextmanager
def _hf_eager(block: nn.Module, store: list) -> Iterator[None]:
    """Run a transformers layer with eager attention for this call only and keep its attention weights."""
    attention = block.attention
    configs = _hf_configs(block)
    old = [c._attn_implementation for c in configs]

    def keep(_m: nn.Module, _args: tuple, out: Any) -> None:
        weights = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
        if isinstance(weights, torch.Tensor):
            store.append(weights)

    handle = attention.register_forward_hook(keep)
    for config in configs:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for config, value in zip(configs, old, strict=True):
            config._attn_implementation = value
        handle.remove()


def _hf_stem(model: nn.Module, images: torch.Tensor) -> Any:
    return model(pixel_values=images)


def _hf_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=images).logits


_HF_MEAN = {"vit": _HALF, "deit": IMAGENET_MEAN, "dinov2": IMAGENET_MEAN, "dinov2_with_registers": IMAGENET_MEAN}


def _hf_fields(model: nn.Module, image_processor: Any = None) -> dict[str, Any]:
    config = model.config
    model_type = getattr(config, "model_type", "")
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(block, "attention") for block in layers):
        raise CaptumSiftError(
            f"unsupported Hugging Face model {type(model).__name__} ({model_type!r}): expected a ViT-like model "
            "whose layers have an .attention module (ViT, DeiT, DINOv2, DINOv2 with registers)"
        )
    embeddings = getattr(base, "embeddings", None)
    prefix = int(getattr(embeddings, "cls_token", None) is not None)
    prefix += int(getattr(embeddings, "distillation_token", None) is not None)
    registers = getattr(embeddings, "register_tokens", None)
    prefix += int(registers.shape[1]) if isinstance(registers, torch.Tensor) else 0
    patch = _square_patch(config.patch_size)
    in_chans = int(getattr(config, "num_channels", 3))
    if image_processor is not None and getattr(image_processor, "image_mean", None) is not None:
        mean, std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
    else:
        mean = _HF_MEAN.get(model_type, IMAGENET_MEAN)
        std = _HALF if mean == _HALF else IMAGENET_STD
    mean, std = _per_channel(mean, std, in_chans)
    size = getattr(config, "image_size", None)
    size = size[-1] if isinstance(size, (tuple, list)) else size
    is_classifier = type(model).__name__.endswith(("ForImageClassification", "ForImageClassificationWithTeacher"))
    return dict(
        model=model, family="hf", blocks=tuple(layers), num_prefix_tokens=prefix, patch_size=patch,
        in_chans=in_chans, num_heads=int(config.num_attention_heads), mean=tuple(mean), std=tuple(std),
        capture=_hf_eager, forward_stem=_hf_stem, forward_logits=_hf_logits if is_classifier else None,
        name=f"transformers {type(model).__name__}", img_size=int(size) if size else None,
        class_token=getattr(embeddings, "cls_token", None) is not None,
    )  # fmt: skip


# -- dispatch ------------------------------------------------------------------------
def family_of(model: nn.Module) -> str | None:
    """``"hf"``, ``"torchvision"`` or ``"timm"``; None for a model of none of the three families."""
    module = type(model).__module__
    if module.startswith("transformers.") and hasattr(model, "config"):
        return "hf"
    try:
        from torchvision.models import VisionTransformer as TorchvisionViT
    except ImportError:  # pragma: no cover - torchvision is a dependency
        TorchvisionViT = ()  # noqa: N806
    if isinstance(model, TorchvisionViT):
        return "torchvision"
    if _is_timm(model):
        return "timm"
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside torch.compile's, DataParallel's or DistributedDataParallel's wrapper."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def adapter_fields(model: nn.Module, image_processor: Any = None) -> dict[str, Any]:
    """The :class:`~captum_sift.vit.adapter.ViTAdapter` fields of an (unwrapped) timm, torchvision or HF ViT."""
    family = family_of(model)
    if family == "hf":
        return _hf_fields(model, image_processor)
    if family == "torchvision":
        return _torchvision_fields(model)
    if family == "timm":
        return _timm_fields(model)
    raise CaptumSiftError(
        f"expected a Vision Transformer from timm, torchvision or Hugging Face transformers "
        f"(or a captum_sift.vit.adapter.ViTAdapter), got {type(model).__name__} from {type(model).__module__}"
    )


def head_classes(model: nn.Module, family: str) -> int | None:
    """The number of classes the model's head is built for, where its family says it; else None.

    timm: ``model.num_classes``; Hugging Face: ``config.num_labels``;
    torchvision: ``heads.head.out_features``. 0 for a timm model built
    without a head.
    """
    if family == "timm":
        classes = getattr(model, "num_classes", None)
    elif family == "hf":
        classes = getattr(getattr(model, "config", None), "num_labels", None)
    elif family == "torchvision":
        classes = getattr(getattr(getattr(model, "heads", None), "head", None), "out_features", None)
    else:
        classes = None
    return None if classes is None else as_int(classes)
