"""The model's logits on masked images: the selected patches filled, or their tokens dropped (SPEC §7).

:func:`read_logits` checks what a forward returns; :func:`drop_tokens` removes
patch tokens after the position embedding; :func:`masked_logits` runs either
kind of masking on an adapter.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from .._checks import all_finite
from ..errors import CaptumSiftError
from ..vit.adapter import ViTAdapter, as_vit
from ..vit.inputs import to_model_and_pixels
from .apply import check_selected, mask_images

__all__ = ["check_droppable", "drop_tokens", "masked_logits", "read_logits"]

#: Per model: the names of its relative position biases (empty: tokens can be dropped), found once.
_RELATIVE_BIASES: weakref.WeakKeyDictionary[nn.Module, list[str]] = weakref.WeakKeyDictionary()


def read_logits(output: Any, batch: int, what: str = "the images") -> torch.Tensor:
    """The logits (B, classes) of a model's output, checked: a tensor, or an output object's ``.logits``.

    Tuples, lists and dicts (which part is the logits?) are refused, and so are
    NaN / Inf logits: a prediction from them would count as an answer.
    """
    logits = getattr(output, "logits", None) if not isinstance(output, torch.Tensor) else output
    if not isinstance(logits, torch.Tensor):
        raise CaptumSiftError(
            f"expected the model's forward to return the logits, a (B, classes) tensor (or an output with .logits), "
            f"got a {type(output).__name__}; wrap the model so that its forward returns the logits"
        )
    if logits.dim() != 2 or logits.shape[0] != batch or not logits.is_floating_point():
        raise CaptumSiftError(
            f"expected logits of shape (B, classes) with B = {batch} from the model, got {tuple(logits.shape)} "
            f"{logits.dtype}"
        )
    if not all_finite(logits.detach()):
        raise CaptumSiftError(f"non-finite logits from the model on {what}: check its weights and the input")
    return logits


def _relative_biases(model: nn.Module) -> list[str]:
    """The module, parameter and buffer names of ``model`` that hold a relative position bias (one walk)."""
    names = []
    for prefix, module in model.named_modules():
        own = [name for name, _ in module.named_parameters(recurse=False)]
        own += [name for name, _ in module.named_buffers(recurse=False)]
        names += [prefix] + [f"{prefix}.{name}" if prefix else name for name in own]
    return sorted({n for n in names if "relative_position" in n or "rel_pos" in n})


def check_droppable(vit: ViTAdapter) -> None:
    """Raise for a model whose attention adds a relative position bias over the full token grid.

    The model's modules are walked once; the verdict is kept for the model's lifetime.
    """
    biased = _RELATIVE_BIASES.get(vit.model)
    if biased is None:
        biased = _RELATIVE_BIASES[vit.model] = _relative_biases(vit.model)
    if biased:
        raise CaptumSiftError(
            f"fill='drop' is not supported for {type(vit.model).__name__}: its attention adds a relative position "
            f"bias over the full token grid ({biased[0]}, ...), which does not follow dropped tokens; "
            "use a fill value ('mean', 'blur', a number) instead"
        )


def _pools_class_token(vit: ViTAdapter) -> bool:
    """Whether the head reads the class token alone (so that a forward without patch tokens is defined)."""
    if not vit.class_token:
        return False
    if vit.family == "timm":
        return getattr(vit.model, "global_pool", "token") == "token"
    return not (vit.family == "hf" and str(getattr(vit.model.config, "model_type", "")).startswith("dinov2"))


def drop_tokens(model: nn.Module | ViTAdapter, images: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Logits of a ViT (any family) with the selected patch tokens removed after the position embedding.

    The MAE way of masking: the tokens of the selected patches never enter the
    blocks (prefix tokens are kept). Every image must have the same number of
    selected patches (as :func:`~captum_sift.masking.apply.select_patches` gives). ``images`` are the
    model's input (checked as :func:`~captum_sift.analyze` checks model-space
    images); gradients flow back to them. Refused: models whose blocks take
    position arguments (EVA's rotary embedding) or hold a relative position
    bias (BEiT, timm's relpos ViTs), both tied to the full token grid;
    dropping every patch of a model that pools patch tokens (no class token,
    or timm's ``global_pool="avg"``); NaN / Inf logits.

    Shape:
        - images: (B, C, H, W), the model's input
        - selected: (B, N) bool
        - output: (B, num_classes)
    """
    vit = as_vit(model)
    to_model_and_pixels(vit, images, "model", need_pixels=True)  # 0..255 or un-normalised input is refused
    vit.check_classifier()
    return _drop_tokens(vit, images, selected)


def _drop_tokens(
    vit: ViTAdapter, images: torch.Tensor, selected: torch.Tensor, what: str | None = None
) -> torch.Tensor:
    """:func:`drop_tokens` on an adapter and a checked model input (:func:`masked_logits` calls it per group).

    ``what`` names the images in the non-finite-logits error (default: how many tokens were dropped).
    """
    check_droppable(vit)
    grid = vit.grid(images)
    selected = check_selected(selected)
    n = grid[0] * grid[1]
    if selected.shape != (images.shape[0], n):
        raise CaptumSiftError(
            f"expected selected of shape (B, N) = ({images.shape[0]}, {n}), got {tuple(selected.shape)}"
        )
    if images.shape[0] == 0:
        raise CaptumSiftError(f"expected at least one image, got shape {tuple(images.shape)}")
    per_image = selected.sum(dim=1)
    if bool((per_image != per_image[0]).any()):
        raise CaptumSiftError(f"expected the same number of selected patches in every image, got {per_image.tolist()}")
    dropped = int(per_image[0])
    if dropped == n and not _pools_class_token(vit):
        raise CaptumSiftError(
            f"cannot drop all {n} patch tokens of {type(vit.model).__name__}: its head pools the patch tokens "
            "(it does not classify from a class token alone), so nothing would be left; use a ratio < 1 or a fill value"
        )
    keep = torch.sort((~selected).to(torch.uint8), dim=1, descending=True, stable=True).indices[:, : n - dropped]
    with vit.dropping_tokens(keep):
        output = vit.logits(images)
    return read_logits(output, images.shape[0], what or f"the images with {dropped} of {n} patch tokens dropped")


def masked_logits(
    vit: ViTAdapter,
    model_input: torch.Tensor,
    selected: torch.Tensor,
    fill: float | str | torch.Tensor,
    *,
    what: str | None = None,
) -> torch.Tensor:
    """Logits of the model on ``model_input`` with the ``selected`` patches filled or (``fill="drop"``) dropped.

    Dropping runs the images with the same number of selected patches together
    (the spurious mode may select fewer in some images). The logits are
    checked (:func:`read_logits`): NaN or Inf raise, never count as a prediction; ``what`` names
    the masked images in that error (default: the fill or the number of dropped tokens).
    """
    if not (isinstance(fill, str) and fill == "drop"):
        output = vit.logits(mask_images(model_input, selected, vit.patch_size, fill))
        return read_logits(output, model_input.shape[0], what or f"the masked images (fill={fill!r})")
    per_image = selected.sum(dim=1)
    if per_image.numel() and bool((per_image == per_image[0]).all()):
        return _drop_tokens(vit, model_input, selected, what)  # one group: the caller's tensor (and graph) as it is
    parts = []
    for count in per_image.unique().tolist():
        rows = torch.nonzero(per_image == count).flatten()
        parts.append((rows, _drop_tokens(vit, model_input[rows], selected[rows], what)))
    logits = parts[0][1].new_empty(model_input.shape[0], parts[0][1].shape[1])
    for rows, part in parts:
        logits[rows] = part
    return logits
