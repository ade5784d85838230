"""Accuracy under Top / Bottom / Random masking, with 95 % intervals and paired tests (SPEC §7)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_classes, check_int, shape_of
from ..errors import CaptumSiftError
from ..theta.settings import ThetaSettings
from ..vit import ViTAdapter, as_vit, eval_mode
from ..vit.inputs import Batch
from .apply import DEFAULT_MODES, check_fill, check_plan, check_seed, random_scores, select_patches
from .logits import check_droppable, masked_logits, read_logits
from .scores import scores_and_counts
from .table import MaskingTable

__all__ = ["check_labels", "evaluate_batch", "evaluate_masking"]


def _batches(
    images_or_loader: torch.Tensor | Iterable, labels: torch.Tensor | None, batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, labels, global image indices) per batch."""
    batch_size = check_int(batch_size, "batch_size", low=1)
    if isinstance(images_or_loader, torch.Tensor):
        if labels is None or not isinstance(labels, torch.Tensor) or labels.shape != (images_or_loader.shape[0],):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else labels
            raise CaptumSiftError(f"expected labels of shape ({images_or_loader.shape[0]},), got {got}")
        for start in range(0, images_or_loader.shape[0], batch_size):
            stop = min(start + batch_size, images_or_loader.shape[0])
            yield images_or_loader[start:stop], labels[start:stop], torch.arange(start, stop)
    else:
        if labels is not None:
            raise CaptumSiftError("expected labels=None with a loader (it yields (images, labels) pairs)")
        seen = 0
        try:
            iterator = iter(images_or_loader)
        except TypeError:
            raise CaptumSiftError(
                f"expected a (B, C, H, W) tensor or an iterable of (images, labels) batches, "
                f"got {type(images_or_loader).__name__}"
            ) from None
        for i, batch in enumerate(iterator):
            ok = isinstance(batch, (tuple, list)) and len(batch) >= 2
            images, batch_labels = (batch[0], batch[1]) if ok else (None, None)
            if (
                not isinstance(images, torch.Tensor)
                or images.dim() != 4
                or not isinstance(batch_labels, torch.Tensor)
                or batch_labels.shape != (images.shape[0],)
            ):
                got = [shape_of(b) for b in batch] if isinstance(batch, (tuple, list)) else shape_of(batch)
                raise CaptumSiftError(
                    f"expected batch {i} of the loader to be (images (B, C, H, W), labels (B,)), got {got}"
                )
            yield images, batch_labels, torch.arange(seen, seen + images.shape[0])
            seen += images.shape[0]


def check_labels(labels: object, batch: int, outputs: int | None = None) -> torch.Tensor:
    """Labels (B,): integer class indices >= 0, below the model's number of outputs when it is given."""
    return check_classes(labels, batch, "labels", outputs)


def evaluate_batch(
    table: MaskingTable,
    vit: ViTAdapter,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    ratios: Sequence[float],
    modes: Sequence[str],
    fill: float | str | torch.Tensor,
    seed: int,
    settings: ThetaSettings,
    image_space: str = "model",
) -> None:
    """Add one batch to ``table`` (the body of :func:`evaluate_masking`; the model in eval mode)."""
    vit.check_classifier()
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise CaptumSiftError(f"expected a batch of at least one image (B, C, H, W), got {shape_of(images)}")
    check_labels(labels, images.shape[0])  # before any work; below the model's outputs once they are known
    # One check of the batch: model-space input that no normalised image gives is refused, and the pixels
    # are kept for the keypoints when a ranked mode needs θ (the random mode needs no analysis).
    ranked = bool(set(modes) - {"random"})
    batch = Batch.build(vit, images, image_space, need_pixels=ranked or image_space == "model")
    scores, counts = scores_and_counts(vit, batch, None, settings, image_space) if ranked else (None, None)
    model_input, grid = batch.model_input, batch.grid
    # the draws of random_selection, once for all ratios
    noise = random_scores(indices, grid[0] * grid[1], seed).to(images.device) if "random" in modes else None
    with torch.no_grad():
        base_logits = read_logits(vit.logits(model_input), images.shape[0], "the unmasked images")
        check_labels(labels, images.shape[0], base_logits.shape[1])
        base_ok = base_logits.argmax(dim=1).cpu() == labels.cpu()
        # Every cell is computed before the table changes: an error leaves the table as it was.
        masked_ok = {}
        for mode in modes:
            for ratio in ratios:
                if mode == "random":
                    selected = select_patches(noise, ratio, "top")  # = random_selection(indices, N, ratio, seed)
                else:
                    selected = select_patches(scores, ratio, mode, keypoint_counts=counts,
                                              min_keypoints=settings.min_keypoints)  # fmt: skip
                try:
                    logits = masked_logits(vit, model_input, selected, fill)
                except CaptumSiftError as exc:
                    raise CaptumSiftError(f"mode {mode!r}, ratio {ratio}: {exc}") from exc
                masked_ok[(mode, ratio)] = logits.argmax(dim=1).cpu() == labels.cpu()
    table.baseline_correct += int(base_ok.sum())
    table.total += int(base_ok.numel())
    for (mode, ratio), ok in masked_ok.items():
        table.add(mode, ratio, ok, base_ok)


def evaluate_masking(
    model: nn.Module | ViTAdapter,
    images_or_loader: torch.Tensor | Iterable,
    labels: torch.Tensor | None = None,
    ratios: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4),
    modes: Sequence[str] = DEFAULT_MODES,
    fill: float | str | torch.Tensor = 0.0,
    settings: ThetaSettings | None = None,
    *,
    image_space: str = "model",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool | None = None,
    **options: Any,
) -> MaskingTable:
    """Accuracy of the model with Top / Bottom / Random patches masked ("mask as prompt", §5.1).

    For every batch: the unmasked prediction, the SPEC §7 scores, then for
    every mode x ratio the prediction on the masked images (``fill`` as in
    :func:`~captum_sift.masking.apply.mask_images`, or ``"drop"`` to remove the
    tokens with :func:`~captum_sift.masking.logits.drop_tokens`). The same images are
    scored masked and unmasked, so the table gives, besides accuracy with a
    95 % Wilson interval, the exact McNemar test of each cell against the
    baseline. The model runs in eval mode without gradients (its flags
    restored after).

    Args:
        model: a timm, torchvision or Hugging Face ViT classifier, or an adapter.
        images_or_loader: a (B, C, H, W) tensor (with ``labels``), or an
            iterable of ``(images, labels)`` batches (``labels=None``).
        labels: (B,) integer class indices for a tensor input.
        ratios: mask ratios r in [0, 1]; round(r N) patches per image.
        modes: among ``"top"``, ``"bottom"``, ``"random"``, ``"spurious"``
            (the lowest-θ Key patches, paper §5.1; fewer than round(r N)
            where an image has fewer Key patches).
        fill: see :func:`~captum_sift.masking.apply.mask_images`, or ``"drop"``
            (refused for models whose blocks take position arguments or
            hold a relative position bias, and for dropping every patch of
            a model without a class token; see
            :func:`~captum_sift.masking.logits.drop_tokens`).
        settings: the score's :class:`~captum_sift.ThetaSettings`; its fields
            may also be given as keyword ``options`` (gamma, layers, ...).
        image_space: ``"model"`` (default; images that cannot have been
            normalised with the model's statistics are refused) or
            ``"pixel"`` (inputs in [0, 1], normalised here; fill values are
            still in the model's space).
        mean, std: the model's input statistics (default: the adapter's).
        batch_size: for a tensor input.
        seed: of the random mode, an int in [0, 2**32 - 1]: image i (its
            index in the tensor or loader) gets :func:`~captum_sift.masking.apply.random_selection` for
            (seed, i), whatever its batch or process; the same masks as
            :class:`~captum_sift.masking.prompt.MaskAsPrompt` with this seed.
        progress: tqdm bar (None: only on a terminal).

    Returns:
        A :class:`~captum_sift.masking.table.MaskingTable`.

    The model's forward must return the logits (a (B, classes) tensor, or an
    output object with ``.logits`` as Hugging Face's); a model without a
    classification head, NaN or Inf logits (unmasked or masked), labels
    that are not integer class indices of the model's outputs, and no images
    at all raise a :class:`~captum_sift.errors.CaptumSiftError`.
    """
    from tqdm.auto import tqdm

    ratios, modes = check_plan(ratios, modes)
    check_fill(fill)
    seed = check_seed(seed)
    vit = as_vit(model, mean=mean, std=std)
    theta_settings = ThetaSettings.resolve(settings, **options)
    theta_settings.check_for(vit.depth)
    vit.check_classifier()  # before any work
    if isinstance(fill, str) and fill == "drop":
        check_droppable(vit)
    table = MaskingTable(
        settings={"fill": str(fill), **theta_settings.to_dict(), "layers": str(theta_settings.layers), "seed": seed}
    )
    with eval_mode(vit.model):
        bar = tqdm(_batches(images_or_loader, labels, batch_size), desc="mask-eval", unit="batch",
                   disable=None if progress is None else not progress)  # fmt: skip
        for images, batch_labels, indices in bar:
            evaluate_batch(table, vit, images, batch_labels, indices, ratios=ratios, modes=modes, fill=fill,
                           seed=seed, settings=theta_settings, image_space=image_space)  # fmt: skip
    if table.total == 0:
        raise CaptumSiftError("expected at least one image to evaluate, got none (an empty tensor or loader)")
    return table
