"""One adapter per Vision Transformer: timm, torchvision and Hugging Face, built once.

Everything the package needs from a ViT — its blocks, prefix tokens, patch
size, input normalisation, the stem up to the first block, the post-softmax
attention of one block and the class logits — is read once by :func:`as_vit`
into a frozen :class:`ViTAdapter`. Every public entry point accepts a model of
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
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import all_finite, as_int, as_scalar, shape_of
from ..errors import CaptumSiftError

__all__ = ["FAMILIES", "IMAGENET_MEAN", "IMAGENET_STD", "ViTAdapter", "as_vit", "eval_mode"]

FAMILIES = ("timm", "torchvision", "Hugging Face transformers")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)

Capture = Callable[[nn.Module, list], AbstractContextManager]


def non_finite_attention(index: int) -> CaptumSiftError:
    """The error for a block whose attention holds NaN or Inf."""
    return CaptumSiftError(f"non-finite attention in block {index}: check the weights and the input")


class _StopAtFirstBlock(Exception):
    """Raised by a pre-hook to stop the model's forward at its first block."""


class _StopAfterAttention(Exception):
    """Raised when the last wanted block has handed over its attention: the rest of its forward is not needed."""


class _AttentionStore(list):
    """The list a capture appends to, for one block.

    The first map appended that has the shape of an attention map over
    ``tokens`` is checked for NaN/Inf (``check_finite``) and handed to
    ``consume``, when given, at once: inside the block's forward, while the
    map is still in cache; the store keeps what ``consume`` returns in its
    place. With ``stop`` set, the block's forward ends at the append.
    """

    def __init__(
        self, index: int, tokens: int, *, stop: bool, check_finite: bool, consume: Callable | None = None
    ) -> None:
        super().__init__()
        self.index, self.tokens, self.stop, self.check_finite, self.consume = index, tokens, stop, check_finite, consume
        self.shapes: list[Any] = []  # of everything appended, for the error message
        self.valid = False  # the first append was a map of the right shape

    def append(self, attn: Any) -> None:
        self.shapes.append(tuple(attn.shape) if isinstance(attn, torch.Tensor) else attn)
        is_map = isinstance(attn, torch.Tensor) and attn.dim() == 4 and attn.shape[-1] == self.tokens
        if is_map and len(self.shapes) == 1:
            if self.check_finite and not all_finite(attn):
                raise non_finite_attention(self.index)
            if self.consume is not None:
                attn = self.consume(self.index, attn)
            self.valid = True
        super().append(attn)
        if self.stop:
            raise _StopAfterAttention

    def result(self, block: nn.Module) -> Any:
        """The block's map (or what ``consume`` made of it); an error unless exactly one valid map came."""
        if len(self.shapes) != 1 or not self.valid:
            raise CaptumSiftError(
                f"expected one attention map of {self.tokens} tokens from block {self.index} "
                f"({type(block).__name__}), got {self.shapes}"
            )
        return self.pop()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside; each module's own flag restored after.

    A model already in eval mode is left alone (``model.eval()`` sets a flag
    on every module through ``nn.Module.__setattr__``: ~4 ms for a ViT-S, a
    tenth of its one-image forward on a CPU, paid per block by the streamed
    analysis before it entered only the running block).
    """
    modes = [(m, m.training) for m in model.modules()]
    if any(mode for _, mode in modes):
        model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            if module.training != mode:
                module.training = mode


def _call_model(model: nn.Module, images: torch.Tensor) -> Any:
    return model(images)


_TOKEN_KEYS = ("hidden_states", "x", "input")  # how blocks name their token argument when it is passed by keyword


def _split_tokens(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
    """(tokens, other positional args, other kwargs) of a call to a block."""
    if args:
        return args[0], args[1:], dict(kwargs)
    kwargs = dict(kwargs)
    for key in _TOKEN_KEYS:
        if key in kwargs:
            return kwargs.pop(key), (), kwargs
    raise CaptumSiftError(f"cannot find the tokens among the first block's arguments {sorted(kwargs)}")


def _per_channel(
    mean: Sequence[float], std: Sequence[float], in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Statistics with one value per input channel: 3-channel ones averaged for a model of other channels."""
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    return (float(sum(mean) / len(mean)),) * in_chans, (float(sum(std) / len(std)),) * in_chans


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
    forward_stem: Callable[[nn.Module, torch.Tensor], Any] = _call_model
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

    def check_classifier(self) -> None:
        """Raise unless the model has a classification head with at least one class (what :meth:`logits` needs)."""
        if self.forward_logits is None:
            raise CaptumSiftError(
                f"expected a classifier (a model with a classification head), got {type(self.model).__name__}"
            )
        if self.family == "timm":
            classes = getattr(self.model, "num_classes", None)
        elif self.family == "hf":
            classes = getattr(getattr(self.model, "config", None), "num_labels", None)
        else:
            classes = None
        if classes is not None and as_int(classes) == 0:
            raise CaptumSiftError(
                f"expected a classifier, got {type(self.model).__name__} without a classification head (0 classes: "
                "its forward returns features, not logits); build it with num_classes > 0"
            )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) of model-space ``images``."""
        self.check_classifier()
        return self.forward_logits(self.model, images)  # type: ignore[misc]

    def stem(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
        """(tokens, other args, kwargs) the model's forward passes to its first block."""
        captured: dict[str, Any] = {}

        def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopAtFirstBlock

        handle = self.blocks[0].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.forward_stem(self.model, images)
        except _StopAtFirstBlock:
            pass
        except CaptumSiftError:
            raise
        except (AssertionError, RuntimeError, ValueError, TypeError) as exc:
            raise CaptumSiftError(f"the model does not accept images of shape {tuple(images.shape)}: {exc}") from exc
        finally:
            handle.remove()
        if "args" not in captured:
            raise CaptumSiftError(f"{type(self.model).__name__}'s forward never reached its first block")
        return _split_tokens(captured["args"], captured["kwargs"])

    def iter_attention(self, images: torch.Tensor, last: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(layer, attn)`` per block up to ``last``; see :func:`captum_sift.vit.capture.iter_attention`."""
        return self._iter_attention(images, last)

    def _iter_attention(
        self,
        images: torch.Tensor,
        last: int | None,
        unchecked: Collection[int] = (),
        consume: Callable[[int, torch.Tensor], Any] | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """:meth:`iter_attention`, leaving the finiteness check of the maps of blocks ``unchecked`` to the caller.

        ``consume(index, attn)``, when given, is called on every block's map
        inside the block's forward (while the map is in cache) and what it
        returns is yielded in place of the map.
        """
        index = self.depth - 1 if last is None else as_int(last)
        if index is None or not -self.depth <= index < self.depth:
            raise CaptumSiftError(
                f"expected last in [-{self.depth}, {self.depth}) (a block of this model), got {last!r}"
            )
        last = index % self.depth
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
        if not images.is_floating_point() or not all_finite(images):
            raise CaptumSiftError("expected finite floating-point images")
        if images.shape[1] != self.in_chans:
            raise CaptumSiftError(
                f"expected {self.in_chans}-channel images for this model, got shape {tuple(images.shape)}"
            )
        grid = self.grid(images)
        expected_tokens = self.num_prefix_tokens + grid[0] * grid[1]
        images = images.detach()
        with eval_mode(self.model), torch.no_grad():
            x, rest, kwargs = self.stem(images)
        if x.shape[1] != expected_tokens:
            raise CaptumSiftError(
                f"expected {expected_tokens} tokens ({self.num_prefix_tokens} prefix + {grid[0]}x{grid[1]} patches) "
                f"entering the first block, got {x.shape[1]}"
            )
        for index, block in enumerate(self.blocks[: last + 1]):
            # The last block stops once its attention is captured: its output (attention times values,
            # MLP) feeds no attention we yield. A capture restores what it changed on any exit.
            store = _AttentionStore(
                index, expected_tokens, stop=index == last, check_finite=index not in unchecked, consume=consume
            )
            try:
                with eval_mode(block), torch.no_grad(), self.capture(block, store):
                    out = block(x, *rest, **kwargs)
                x = out[0] if isinstance(out, (tuple, list)) else out
            except _StopAfterAttention:
                pass
            yield index, store.result(block)

    @contextmanager
    def capturing(self, images: torch.Tensor, consume: Callable[[int, torch.Tensor], Any]) -> Iterator[list[Any]]:
        """Inside, every block's forward hands its post-softmax map (B, heads, T, T) to ``consume(index, attn)``.

        ``images`` are the model input the forward will see (for the number of tokens T).
        For a whole forward of the model (its logits, with gradients): the list
        yielded holds what ``consume`` returned, one entry per block in block
        order, once the forward is over; non-finite maps raise naming the
        block, and so does a block that handed over no map. Each block runs
        non-fused (eager) only while this is open; every hook and flag is
        restored on any exit.
        """
        grid = self.grid(images)
        tokens = self.num_prefix_tokens + grid[0] * grid[1]
        results: list[Any] = [None] * self.depth
        stores: list[_AttentionStore] = []

        def keep(index: int, attn: torch.Tensor) -> Any:
            results[index] = consume(index, attn)
            return None

        with ExitStack() as stack:
            for index, block in enumerate(self.blocks):
                store = _AttentionStore(index, tokens, stop=False, check_finite=True, consume=keep)
                stores.append(store)
                stack.enter_context(self.capture(block, store))
            yield results
        for store, block in zip(stores, self.blocks, strict=True):
            store.result(block)

    @contextmanager
    def dropping_tokens(self, keep: torch.Tensor) -> Iterator[None]:
        """Inside, the model's forward keeps only the patch tokens ``keep`` (B, n_keep) entering block 0."""
        prefix = self.num_prefix_tokens

        def drop(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x, args, kwargs = _split_tokens(args, kwargs)
            extra = [a for a in args if isinstance(a, torch.Tensor)] + [
                v for v in kwargs.values() if isinstance(v, torch.Tensor)
            ]
            if extra:
                raise CaptumSiftError(
                    f"drop_tokens supports blocks called with tokens only; {type(self.model).__name__} passes "
                    f"{len(extra)} more tensor(s) to its blocks (e.g. rotary position embeddings or a mask)"
                )
            patches = x[:, prefix:].gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            return (torch.cat([x[:, :prefix], patches], dim=1), *args), kwargs

        handle = self.blocks[0].register_forward_pre_hook(drop, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def _square_patch(patch: object) -> int:
    """The side of a square patch given as an int or a (h, w) pair."""
    pair = tuple(patch) if isinstance(patch, (tuple, list)) else (int(patch), int(patch))  # type: ignore[call-overload]
    if pair[0] != pair[1]:
        raise CaptumSiftError(f"expected square patches, got patch_size={pair}")
    return int(pair[0])


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


def _timm_adapter(model: nn.Module) -> ViTAdapter:
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
    return ViTAdapter(
        model=model, family="timm", blocks=blocks, num_prefix_tokens=prefix, patch_size=patch,
        in_chans=in_chans, num_heads=int(blocks[0].attn.num_heads), mean=mean, std=std, capture=_timm_capture,
        forward_stem=_timm_stem, forward_logits=_call_model if hasattr(model, "forward_head") else None,
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


def _torchvision_adapter(model: nn.Module) -> ViTAdapter:
    blocks = tuple(model.encoder.layers)
    for i, block in enumerate(blocks):
        if not isinstance(getattr(block, "self_attention", None), nn.MultiheadAttention):
            raise CaptumSiftError(f"expected block {i} of the torchvision ViT to have an nn.MultiheadAttention")
    return ViTAdapter(
        model=model, family="torchvision", blocks=blocks, num_prefix_tokens=1, patch_size=int(model.patch_size),
        in_chans=int(model.conv_proj.in_channels), num_heads=int(blocks[0].self_attention.num_heads),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, capture=_torchvision_capture, forward_logits=_call_model,
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


def _hf_adapter(model: nn.Module, image_processor: Any = None) -> ViTAdapter:
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
    return ViTAdapter(
        model=model, family="hf", blocks=tuple(layers), num_prefix_tokens=prefix, patch_size=patch,
        in_chans=in_chans, num_heads=int(config.num_attention_heads), mean=tuple(mean), std=tuple(std),
        capture=_hf_eager, forward_stem=_hf_stem, forward_logits=_hf_logits if is_classifier else None,
        name=f"transformers {type(model).__name__}", img_size=int(size) if size else None,
        class_token=getattr(embeddings, "cls_token", None) is not None,
    )  # fmt: skip


# -- dispatch ------------------------------------------------------------------------
def _family(model: nn.Module) -> str | None:
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


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside torch.compile's, DataParallel's or DistributedDataParallel's wrapper."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


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
    model = _unwrap(model)
    family = _family(model)
    if family == "hf":
        adapter = _hf_adapter(model, image_processor)
    elif family == "torchvision":
        adapter = _torchvision_adapter(model)
    elif family == "timm":
        adapter = _timm_adapter(model)
    else:
        raise CaptumSiftError(
            f"expected a Vision Transformer from timm, torchvision or Hugging Face transformers "
            f"(or a captum_sift.vit.adapter.ViTAdapter), got {type(model).__name__} from {type(model).__module__}"
        )
    return adapter.with_normalization(mean, std)
