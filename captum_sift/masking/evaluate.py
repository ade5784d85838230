"""Accuracy under Top / Bottom / Random masking, with 95 % intervals and paired tests (SPEC §7)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import all_finite, as_int, shape_of
from ..errors import CaptumSiftError
from ..theta.settings import ThetaSettings
from ..vit import ViTAdapter, as_vit, eval_mode
from .apply import DEFAULT_MODES, MODES, check_fill, check_plan, mask_images, select_patches

__all__ = ["MaskingTable", "evaluate_masking", "mcnemar_exact", "random_scores", "random_selection", "wilson_interval"]

_Z95 = 1.959963984540054
#: The largest seed of the random mode (image i draws from a torch.Generator seeded with seed * 1_000_003 + i, 64 bits).
MAX_SEED = 2**32 - 1


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if as_int(correct) is None or as_int(total) is None or not 0 <= correct <= total:
        raise CaptumSiftError(f"expected ints 0 <= correct <= total, got correct={correct!r}, total={total!r}")
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    denom = 1 + _Z95**2 / total
    centre = (p + _Z95**2 / (2 * total)) / denom
    half = _Z95 * math.sqrt(p * (1 - p) / total + _Z95**2 / (4 * total**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (binomial, p = 1/2)."""
    if as_int(worse) is None or as_int(better) is None or worse < 0 or better < 0:
        raise CaptumSiftError(f"expected counts >= 0 of discordant pairs, got worse={worse!r}, better={better!r}")
    n = worse + better
    if n == 0:
        return 1.0
    k = min(worse, better)
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)
    ]
    top = max(log_terms)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(t - top) for t in log_terms))


@dataclass
class MaskingTable:
    """Accuracy per mode x ratio, the unmasked baseline, 95 % intervals and paired tests."""

    baseline_correct: int = 0
    total: int = 0
    cells: dict[tuple[str, float], dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, mode: str, ratio: float, masked_ok: torch.Tensor, base_ok: torch.Tensor) -> None:
        cell = self.cells.setdefault((mode, ratio), {"correct": 0, "total": 0, "worse": 0, "better": 0})
        cell["correct"] += int(masked_ok.sum())
        cell["total"] += int(masked_ok.numel())
        cell["worse"] += int((base_ok & ~masked_ok).sum())
        cell["better"] += int((~base_ok & masked_ok).sum())

    @property
    def baseline(self) -> dict[str, float]:
        low, high = wilson_interval(self.baseline_correct, self.total)
        return {"accuracy": self.baseline_correct / max(self.total, 1), "ci_low": low, "ci_high": high, "n": self.total}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per mode x ratio (baseline first, mode "none", ratio 0)."""
        base = self.baseline
        out = [{"mode": "none", "ratio": 0.0, **base, "delta": 0.0, "worse": 0, "better": 0, "p_value": 1.0}]
        for (mode, ratio), cell in self.cells.items():
            low, high = wilson_interval(cell["correct"], cell["total"])
            accuracy = cell["correct"] / cell["total"]
            out.append({
                "mode": mode, "ratio": ratio, "accuracy": accuracy, "ci_low": low, "ci_high": high,
                "n": cell["total"], "delta": accuracy - base["accuracy"], "worse": cell["worse"],
                "better": cell["better"], "p_value": mcnemar_exact(cell["worse"], cell["better"]),
            })  # fmt: skip
        return out

    def accuracy(self, mode: str, ratio: float) -> float:
        cell = self.cells[(mode, ratio)]
        return cell["correct"] / cell["total"]

    def state(self) -> dict[str, Any]:
        """JSON-ready counts (partial results of a long run)."""
        return {
            "baseline_correct": self.baseline_correct, "total": self.total,
            "cells": [[m, r, c] for (m, r), c in self.cells.items()],
        }  # fmt: skip

    def load_state(self, state: dict[str, Any], num_cells: int | None = None) -> None:
        """Counts from :meth:`state` (replacing the current ones), checked for shape and ranges."""
        fields = {"correct", "total", "worse", "better"}
        base, total, cells = state["baseline_correct"], state["total"], state["cells"]
        if as_int(base) is None or as_int(total) is None or not 0 <= base <= total:
            raise CaptumSiftError(f"expected 0 <= baseline_correct <= total, got {base!r} and {total!r}")
        loaded = {}
        for mode, ratio, cell in cells:
            if mode not in MODES or not isinstance(cell, dict) or set(cell) != fields:
                raise CaptumSiftError(
                    f"expected a cell of a mode in {MODES} with counts {sorted(fields)}, got {cell!r}"
                )
            counts = {k: as_int(v) for k, v in cell.items()}
            if any(v is None or v < 0 for v in counts.values()) or counts["total"] != total:
                raise CaptumSiftError(f"expected counts >= 0 over {total} images in cell {mode} {ratio}, got {cell}")
            if counts["correct"] > total or counts["worse"] + counts["better"] > total:
                raise CaptumSiftError(f"expected counts of at most {total} images in cell {mode} {ratio}, got {cell}")
            loaded[(mode, float(ratio))] = counts
        if num_cells is not None and total > 0 and len(loaded) != num_cells:
            raise CaptumSiftError(f"expected {num_cells} cells, got {len(loaded)}")
        self.baseline_correct, self.total, self.cells = int(base), int(total), loaded

    def all_reduce(self, modes: Sequence[str], ratios: Sequence[float], device: torch.device | str = "cpu") -> None:
        """Sum the counts over torch.distributed ranks, in place (every rank calls it with the same plan)."""
        from .._dist import all_reduce_sum

        keys = [(m, float(r)) for m in modes for r in ratios]
        fields = ("correct", "total", "worse", "better")
        flat = [self.baseline_correct, self.total]
        flat += [self.cells.get(k, dict.fromkeys(fields, 0))[f] for k in keys for f in fields]
        summed = all_reduce_sum(torch.tensor(flat, dtype=torch.long), torch.device(device)).tolist()
        self.baseline_correct, self.total = summed[0], summed[1]
        for i, key in enumerate(keys):
            self.cells[key] = dict(zip(fields, summed[2 + 4 * i : 6 + 4 * i], strict=True))

    def save_csv(self, path: str | Path) -> None:
        write_rows_csv(path, self.rows())

    def __str__(self) -> str:
        lines = [f"{'mode':>7s} {'ratio':>6s} {'acc':>7s} {'95% CI':>17s} {'delta':>7s} {'p':>8s}"]
        for r in self.rows():
            lines.append(
                f"{r['mode']:>7s} {r['ratio']:6.2f} {r['accuracy']:7.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] "
                f"{r['delta']:+7.3f} {r['p_value']:8.2g}"
            )
        return "\n".join(lines)


def write_rows_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of a table (dicts with the same keys, in order) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _batches(
    images_or_loader: torch.Tensor | Iterable, labels: torch.Tensor | None, batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, labels, global image indices) per batch."""
    if as_int(batch_size) is None or batch_size < 1:
        raise CaptumSiftError(f"expected batch_size to be an int >= 1, got {batch_size!r}")
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


def check_seed(seed: object) -> int:
    """The random mode's seed: an int in [0, 2**32 - 1] (numpy and 0-d tensor ints included)."""
    value = as_int(seed)
    if value is None or not 0 <= value <= MAX_SEED:
        raise CaptumSiftError(f"expected seed to be an int in [0, {MAX_SEED}], got {seed!r}")
    return value


def check_image_ids(image_ids: object, batch: int) -> torch.Tensor:
    """Image indices (B,) as a CPU long tensor: ints >= 0, one per image."""
    ids = torch.as_tensor(image_ids) if isinstance(image_ids, (list, tuple, range)) else image_ids
    if (
        not isinstance(ids, torch.Tensor)
        or ids.shape != (batch,)
        or ids.dtype == torch.bool
        or ids.is_floating_point()
        or ids.is_complex()
        or (batch and int(ids.min()) < 0)
    ):
        got = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else repr(image_ids)
        raise CaptumSiftError(f"expected image_ids: {batch} ints >= 0, one per image (B,) = ({batch},), got {got}")
    return ids.cpu().long()


def random_scores(indices: torch.Tensor, num_patches: int, seed: int) -> torch.Tensor:
    """Per-image random scores (B, N) that depend only on (seed, image index).

    The random mode masks the top of these, so an image gets the same random
    mask whatever batch or process it is in (same numbers under torchrun).
    """
    seed = check_seed(seed)
    rows = [
        torch.rand(num_patches, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
        for i in indices.tolist()
    ]
    return torch.stack(rows) if rows else torch.zeros(0, num_patches)


def random_selection(
    indices: torch.Tensor, num_patches: int, ratio: float, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The random mode's mask (B, N) bool: image i masks the top round(ratio N) of its :func:`random_scores`.

    The one random scheme of :func:`evaluate_masking` and
    :class:`~captum_sift.masking.prompt.MaskAsPrompt`: an image's mask depends only
    on (seed, its index), not on the batch it is in.
    """
    return select_patches(random_scores(indices, num_patches, seed).to(device), ratio, "top")


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


def check_labels(labels: torch.Tensor, outputs: int | None = None) -> None:
    """Labels: integer class indices, in [0, outputs) when the model's number of outputs is given."""
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise CaptumSiftError(f"expected integer class indices as labels, got dtype {labels.dtype}")
    if outputs is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= outputs):
        raise CaptumSiftError(
            f"expected labels that are class indices in [0, {outputs}) of the model's {outputs} outputs, "
            f"got labels in [{int(labels.min())}, {int(labels.max())}]"
        )


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
    from ..vit.inputs import to_model_and_pixels
    from .prompt import scores_and_counts

    vit.check_classifier()
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise CaptumSiftError(f"expected a batch of at least one image (B, C, H, W), got {shape_of(images)}")
    check_labels(labels)  # the dtype here, before any work; the range once the model's outputs are known
    # θ needs the analysis and the keypoints: only when a ranked mode asks for it. The analysis checks
    # that model-space input can be normalised images; a random-only plan checks it here (accuracy needs it too).
    ranked = bool(set(modes) - {"random"})
    scores, counts = scores_and_counts(vit, images, None, settings, image_space) if ranked else (None, None)
    check = image_space == "model" and not ranked
    model_input, _ = to_model_and_pixels(vit, images, image_space, need_pixels=check)
    grid = vit.grid(images)
    # the draws of random_selection, once for all ratios
    noise = random_scores(indices, grid[0] * grid[1], seed).to(images.device) if "random" in modes else None
    with torch.no_grad():
        base_logits = read_logits(vit.logits(model_input), images.shape[0], "the unmasked images")
        check_labels(labels, base_logits.shape[1])
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
    from .prompt import _drop_tokens

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
    tokens with :func:`~captum_sift.masking.prompt.drop_tokens`). The same images are
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
            :func:`~captum_sift.masking.prompt.drop_tokens`).
        settings: the score's :class:`~captum_sift.ThetaSettings`; its fields
            may also be given as keyword ``options`` (gamma, layers, ...).
        image_space: ``"model"`` (default; images that cannot have been
            normalised with the model's statistics are refused) or
            ``"pixel"`` (inputs in [0, 1], normalised here; fill values are
            still in the model's space).
        mean, std: the model's input statistics (default: the adapter's).
        batch_size: for a tensor input.
        seed: of the random mode, an int in [0, 2**32 - 1]: image i (its
            index in the tensor or loader) gets :func:`random_selection` for
            (seed, i), whatever its batch or process; the same masks as
            :class:`~captum_sift.masking.prompt.MaskAsPrompt` with this seed.
        progress: tqdm bar (None: only on a terminal).

    Returns:
        A :class:`MaskingTable`.

    The model's forward must return the logits (a (B, classes) tensor, or an
    output object with ``.logits`` as Hugging Face's); a model without a
    classification head, NaN or Inf logits (unmasked or masked), labels
    that are not integer class indices of the model's outputs, and no images
    at all raise a :class:`~captum_sift.errors.CaptumSiftError`.
    """
    from tqdm.auto import tqdm

    from .prompt import check_droppable

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
