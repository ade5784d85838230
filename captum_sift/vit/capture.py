"""Adapter -> post-softmax attention of every transformer block, streamed one block at a time.

The stem (patch embedding, prefix tokens, position embedding) runs through
the model's own forward up to the first block (:func:`run_stem`); then the
blocks run one by one (:func:`stream_attention`), each with its attention
switched to an explicit path for that block only (the adapter's ``capture``:
timm's ``fused_attn``, torchvision's ``need_weights``, transformers'
``attn_implementation``) and the softmax output captured. Between two yields
the model is exactly as it was given: no hook, no changed flag, no changed
train/eval mode. :func:`capturing` hands every block's map over during one
whole forward of the model (with gradients), :func:`dropping_tokens` keeps
only some patch tokens entering the first block.

Everything here takes an adapter (:class:`~captum_sift.vit.adapter.ViTAdapter`)
and reads its ``model``, ``blocks``, ``capture``, ``forward_stem``,
``num_prefix_tokens``, ``in_chans`` and ``grid``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._checks import all_finite, as_int, shape_of
from ..errors import CaptumSiftError
from .inputs import Batch

if TYPE_CHECKING:
    from .adapter import ViTAdapter

__all__ = ["capturing", "dropping_tokens", "eval_mode", "non_finite_attention", "run_stem", "stream_attention"]


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

    A model already in eval mode is left alone: ``model.eval()`` sets a flag
    on every module through ``nn.Module.__setattr__`` (~4 ms for a ViT-S, a
    tenth of its one-image forward on a CPU).
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


def run_stem(vit: ViTAdapter, images: torch.Tensor) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
    """(tokens, other args, kwargs) the model's forward passes to its first block for model input ``images``."""
    captured: dict[str, Any] = {}

    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["args"], captured["kwargs"] = args, kwargs
        raise _StopAtFirstBlock

    handle = vit.blocks[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        vit.forward_stem(vit.model, images)
    except _StopAtFirstBlock:
        pass
    except CaptumSiftError:
        raise
    except (AssertionError, RuntimeError, ValueError, TypeError) as exc:
        raise CaptumSiftError(f"the model does not accept images of shape {tuple(images.shape)}: {exc}") from exc
    finally:
        handle.remove()
    if "args" not in captured:
        raise CaptumSiftError(f"{type(vit.model).__name__}'s forward never reached its first block")
    return _split_tokens(captured["args"], captured["kwargs"])


def _checked_input(vit: ViTAdapter, images: torch.Tensor | Batch) -> tuple[torch.Tensor, tuple[int, int]]:
    """(model input, patch grid): a :class:`Batch` as built (checked once), a tensor checked here."""
    if isinstance(images, Batch):
        return images.model_input, images.grid
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    if not images.is_floating_point() or not all_finite(images):
        raise CaptumSiftError("expected finite floating-point images")
    if images.shape[1] != vit.in_chans:
        raise CaptumSiftError(f"expected {vit.in_chans}-channel images for this model, got shape {tuple(images.shape)}")
    return images.detach(), vit.grid(images)


def stream_attention(
    vit: ViTAdapter,
    images: torch.Tensor | Batch,
    last: int | None = None,
    *,
    unchecked: Collection[int] = (),
    consume: Callable[[int, torch.Tensor], Any] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(layer, attn)`` for every block up to ``last``, one block at a time, in eval mode without gradients.

    ``attn`` is the block's post-softmax attention (B, heads, T, T), prefix
    tokens included; the forward of block ``last`` stops as soon as its
    attention is captured and no later block runs. Non-finite maps raise
    naming the block, except for the blocks in ``unchecked`` (their caller
    checks them). ``consume(index, attn)``, when given, is called on every
    block's map inside the block's forward (while the map is in cache) and
    what it returns is yielded in place of the map. ``images`` is model input
    (checked for shape, finiteness and channels here) or a :class:`Batch`
    (checked when it was built).
    """
    index = vit.depth - 1 if last is None else as_int(last)
    if index is None or not -vit.depth <= index < vit.depth:
        raise CaptumSiftError(f"expected last in [-{vit.depth}, {vit.depth}) (a block of this model), got {last!r}")
    last = index % vit.depth
    images, grid = _checked_input(vit, images)
    expected_tokens = vit.num_prefix_tokens + grid[0] * grid[1]
    with eval_mode(vit.model), torch.no_grad():
        x, rest, kwargs = run_stem(vit, images)
    if x.shape[1] != expected_tokens:
        raise CaptumSiftError(
            f"expected {expected_tokens} tokens ({vit.num_prefix_tokens} prefix + {grid[0]}x{grid[1]} patches) "
            f"entering the first block, got {x.shape[1]}"
        )
    for index, block in enumerate(vit.blocks[: last + 1]):
        # The last block stops once its attention is captured: its output (attention times values,
        # MLP) feeds no attention we yield. A capture restores what it changed on any exit.
        store = _AttentionStore(
            index, expected_tokens, stop=index == last, check_finite=index not in unchecked, consume=consume
        )
        try:
            with eval_mode(block), torch.no_grad(), vit.capture(block, store):
                out = block(x, *rest, **kwargs)
            x = out[0] if isinstance(out, (tuple, list)) else out
        except _StopAfterAttention:
            pass
        yield index, store.result(block)


@contextmanager
def capturing(
    vit: ViTAdapter, images: torch.Tensor | Batch, consume: Callable[[int, torch.Tensor], Any]
) -> Iterator[list[Any]]:
    """Inside, every block's forward hands its post-softmax map (B, heads, T, T) to ``consume(index, attn)``.

    ``images`` are the model input the forward will see, or its
    :class:`Batch` (for the number of tokens T). For a whole forward of the
    model (its logits, with gradients): the list yielded holds what
    ``consume`` returned, one entry per block in block order, once the
    forward is over; non-finite maps raise naming the block, and so does a
    block that handed over no map. Each block runs non-fused (eager) only
    while this is open; every hook and flag is restored on any exit.
    """
    grid = images.grid if isinstance(images, Batch) else vit.grid(images)
    tokens = vit.num_prefix_tokens + grid[0] * grid[1]
    results: list[Any] = [None] * vit.depth
    stores: list[_AttentionStore] = []

    def keep(index: int, attn: torch.Tensor) -> Any:
        results[index] = consume(index, attn)
        return None

    with ExitStack() as stack:
        for index, block in enumerate(vit.blocks):
            store = _AttentionStore(index, tokens, stop=False, check_finite=True, consume=keep)
            stores.append(store)
            stack.enter_context(vit.capture(block, store))
        yield results
    for store, block in zip(stores, vit.blocks, strict=True):
        store.result(block)


@contextmanager
def dropping_tokens(vit: ViTAdapter, keep: torch.Tensor) -> Iterator[None]:
    """Inside, the model's forward keeps only the patch tokens ``keep`` (B, n_keep) entering block 0."""
    prefix = vit.num_prefix_tokens

    def drop(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x, args, kwargs = _split_tokens(args, kwargs)
        extra = [a for a in args if isinstance(a, torch.Tensor)] + [
            v for v in kwargs.values() if isinstance(v, torch.Tensor)
        ]
        if extra:
            raise CaptumSiftError(
                f"drop_tokens supports blocks called with tokens only; {type(vit.model).__name__} passes "
                f"{len(extra)} more tensor(s) to its blocks (e.g. rotary position embeddings or a mask)"
            )
        patches = x[:, prefix:].gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return (torch.cat([x[:, :prefix], patches], dim=1), *args), kwargs

    handle = vit.blocks[0].register_forward_pre_hook(drop, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
