"""Top / Bottom / Random patch masks "as prompts" at inference (paper §5.1, SPEC §7)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import shape_of
from .analysis import LayerChoice, _split_spaces, analysis_layers, analyze, patch_scores_from_report
from .attention import _blocks, _eval_mode, model_grid, num_prefix_tokens, patch_size_of
from .attr.sift_interrelation import patch_scores_to_pixels
from .errors import CaptumSiftError

__all__ = [
    "MaskingTable",
    "drop_tokens",
    "evaluate_masking",
    "mask_images",
    "num_masked",
    "patch_scores",
    "select_patches",
]

MODES = ("top", "bottom", "random")


def patch_scores(
    model: nn.Module,
    images: torch.Tensor,
    keypoint_counts: torch.Tensor | None = None,
    *,
    layers: LayerChoice = None,
    gamma: float = 1.0,
    weighted: bool = True,
    min_keypoints: int = 1,
    image_space: str = "model",
    keypoint_backend: str = "kornia",
) -> torch.Tensor:
    """Per-patch score of SPEC §7: θ_i averaged over heads and the chosen layers -> (B, N).

    ``layers``: None (all, default), layer indices, or a stage name (found per
    image), as :class:`~captum_sift.attr.SIFTInterrelation`.
    """
    report = analyze(
        model,
        images,
        keypoint_counts,
        gamma=gamma,
        weighted=weighted,
        min_keypoints=min_keypoints,
        layers=analysis_layers(layers, len(_blocks(model))),
        image_space=image_space,  # type: ignore[arg-type]
        keypoint_backend=keypoint_backend,
    )
    return patch_scores_from_report(report, layers).to(images.device)


def num_masked(ratio: float, num_patches: int) -> int:
    """round(ratio * N), halves rounded up (SPEC §7)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise CaptumSiftError(f"expected ratio in [0, 1], got {ratio!r}")
    return min(num_patches, math.floor(ratio * num_patches + 0.5))


def check_plan(ratios: Sequence[float], modes: Sequence[str], name: str = "modes") -> tuple[list[float], list[str]]:
    """Ratios as floats in [0, 1] and modes among :data:`MODES`, before any work is done."""
    for ratio in ratios:
        num_masked(ratio, 1)  # validates the range
    for mode in modes:
        if mode not in MODES:
            raise CaptumSiftError(f"expected {name} among {MODES}, got {mode!r}")
    return [float(r) for r in ratios], list(modes)


def _check_2d(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        raise CaptumSiftError(f"expected {name} of shape (B, N), got {shape_of(value)}")
    return value


def select_patches(
    scores: torch.Tensor, ratio: float, mode: str = "top", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Patches to mask: exactly round(ratio * N) per image (SPEC §7).

    ``"top"`` takes the highest scores, ``"bottom"`` the lowest, ties broken by
    patch index (lower first), so the result is deterministic; ``"random"``
    ignores the scores and draws from ``generator``.

    Shape:
        - scores: (B, N)
        - output: (B, N) bool

    Example:
        >>> s = torch.tensor([[0.2, 0.9, 0.5, 0.9]])
        >>> select_patches(s, 0.5, "top")
        tensor([[False,  True, False,  True]])
        >>> select_patches(s, 0.25, "bottom")
        tensor([[ True, False, False, False]])
    """
    scores = _check_2d("scores", scores)
    if mode not in MODES:
        raise CaptumSiftError(f"expected mode in {MODES}, got {mode!r}")
    batch, n = scores.shape
    k = num_masked(ratio, n)
    if mode == "random":
        noise = torch.rand(batch, n, generator=generator, device=generator.device if generator else "cpu")
        order = noise.to(scores.device).argsort(dim=1)
    else:
        if bool(torch.isnan(scores).any()):
            raise CaptumSiftError(
                "expected scores without NaN to rank patches, got NaN (gamma > 1 can leave S_i empty)"
            )
        order = torch.sort(scores, dim=1, descending=(mode == "top"), stable=True).indices
    selected = torch.zeros(batch, n, dtype=torch.bool, device=scores.device)
    return selected.scatter_(1, order[:, :k], True)


def _fill_values(images: torch.Tensor, fill: float | str | torch.Tensor, patch_size: int) -> torch.Tensor:
    """What masked pixels become, broadcastable to ``images``."""
    if isinstance(fill, str):
        if fill == "mean":
            return images.mean(dim=(2, 3), keepdim=True)
        if fill == "blur":
            import kornia

            sigma = float(patch_size)
            size = 2 * math.ceil(2 * sigma) + 1
            size = min(size, 2 * (min(images.shape[2:]) // 2) - 1)  # reflect padding needs size < 2 * side
            return kornia.filters.gaussian_blur2d(images, (size, size), (sigma, sigma), border_type="reflect")
        raise CaptumSiftError(f"expected fill to be a number, 'mean', 'blur', 'drop' or a tensor, got {fill!r}")
    if isinstance(fill, torch.Tensor):
        c, h, w = images.shape[1:]
        allowed = [(c,), (c, 1, 1), (c, h, w), (1, c, h, w), tuple(images.shape), (1, c, 1, 1)]
        if tuple(fill.shape) not in allowed:
            raise CaptumSiftError(
                f"expected a fill tensor of shape (C,), (C, 1, 1), (C, H, W) or (B, C, H, W) = "
                f"{tuple(images.shape)}, got {tuple(fill.shape)}"
            )
        fill = fill.to(images.device, images.dtype)
        return fill.view(1, c, 1, 1) if fill.dim() == 1 else fill
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
        raise CaptumSiftError(f"expected a finite number, 'mean', 'blur' or a tensor as fill, got {fill!r}")
    return torch.full((1, 1, 1, 1), float(fill), device=images.device, dtype=images.dtype)


def mask_images(
    images: torch.Tensor, selected: torch.Tensor, patch_size: int, fill: float | str | torch.Tensor = 0.0
) -> torch.Tensor:
    """Fill the selected patches of every image; other pixels are bit-identical to ``images``.

    Args:
        images: the batch, in the model's input space.
        selected: patches to mask, from :func:`select_patches`.
        patch_size: P.
        fill: a number in the model's input space (default 0.0: after timm's
            normalisation, the data set's mean colour), ``"mean"`` (each
            image's mean colour), ``"blur"`` (a Gaussian blur with sigma = P of
            the image, shown in the patch) or a tensor (C,), (C, H, W) or
            (B, C, H, W).

    Shape:
        - images: (B, C, H, W)
        - selected: (B, N), N = (H / P) (W / P)
        - output: (B, C, H, W)
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise CaptumSiftError(f"expected float images of shape (B, C, H, W), got {shape_of(images)}")
    selected = _check_2d("selected", selected)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise CaptumSiftError(f"expected patch_size to be an int >= 1, got {patch_size!r}")
    b, _, h, w = images.shape
    if h % patch_size or w % patch_size or selected.shape != (b, (h // patch_size) * (w // patch_size)):
        raise CaptumSiftError(
            f"expected selected of shape (B, N) = ({b}, {(h // patch_size) * (w // patch_size)}) for images "
            f"{tuple(images.shape)} and patch_size={patch_size} (H, W multiples of P), got {tuple(selected.shape)}"
        )
    pixel_mask = patch_scores_to_pixels(selected.to(torch.uint8), (b, 1, h, w), patch_size).bool()
    return torch.where(pixel_mask, _fill_values(images, fill, patch_size), images)


def drop_tokens(model: nn.Module, images: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Logits of a timm ViT with the selected patch tokens removed after the position embedding.

    The MAE way of masking: the tokens of the selected patches never enter the
    blocks (prefix tokens are kept). Every image must have the same number of
    selected patches (as :func:`select_patches` gives). Models whose blocks
    take position arguments (EVA's rotary embedding) are refused.

    Shape:
        - images: (B, C, H, W), the model's input
        - selected: (B, N) bool
        - output: (B, num_classes)
    """
    blocks = _blocks(model)
    grid = model_grid(model, images)
    selected = _check_2d("selected", selected)
    n = grid[0] * grid[1]
    if selected.shape != (images.shape[0], n):
        raise CaptumSiftError(
            f"expected selected of shape (B, N) = ({images.shape[0]}, {n}), got {tuple(selected.shape)}"
        )
    per_image = selected.sum(dim=1)
    if bool((per_image != per_image[0]).any()):
        raise CaptumSiftError(f"expected the same number of selected patches in every image, got {per_image.tolist()}")
    keep = torch.sort((~selected).to(torch.uint8), dim=1, descending=True, stable=True).indices[
        :, : n - int(per_image[0])
    ]
    prefix = num_prefix_tokens(model)

    def drop(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs or len(args) != 1:
            raise CaptumSiftError(
                f"drop_tokens supports blocks called with tokens only; {type(model).__name__} passes "
                f"{sorted(kwargs) or len(args) - 1} more (e.g. rotary position embeddings)"
            )
        x = args[0]  # (B, T, D)
        patches = x[:, prefix:].gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return (torch.cat([x[:, :prefix], patches], dim=1),), kwargs

    handle = blocks[0].register_forward_pre_hook(drop, with_kwargs=True)
    try:
        return model(images)
    finally:
        handle.remove()


# -- evaluation ------------------------------------------------------------------
_Z95 = 1.959963984540054


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    denom = 1 + _Z95**2 / total
    centre = (p + _Z95**2 / (2 * total)) / denom
    half = _Z95 * math.sqrt(p * (1 - p) / total + _Z95**2 / (4 * total**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (binomial, p = 1/2)."""
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

    def save_csv(self, path: str | Path) -> None:
        rows = self.rows()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def __str__(self) -> str:
        lines = [f"{'mode':>7s} {'ratio':>6s} {'acc':>7s} {'95% CI':>17s} {'delta':>7s} {'p':>8s}"]
        for r in self.rows():
            lines.append(
                f"{r['mode']:>7s} {r['ratio']:6.2f} {r['accuracy']:7.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] "
                f"{r['delta']:+7.3f} {r['p_value']:8.2g}"
            )
        return "\n".join(lines)


def _batches(
    images_or_loader: torch.Tensor | Iterable, labels: torch.Tensor | None, batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, labels, global image indices) per batch."""
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
        for batch in images_or_loader:
            images = batch[0]
            yield images, batch[1], torch.arange(seen, seen + images.shape[0])
            seen += images.shape[0]


def random_scores(indices: torch.Tensor, num_patches: int, seed: int) -> torch.Tensor:
    """Per-image random scores (B, N) that depend only on (seed, image index).

    The random mode masks the top of these, so an image gets the same random
    mask whatever batch or process it is in (same numbers under torchrun).
    """
    rows = [
        torch.rand(num_patches, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
        for i in indices.tolist()
    ]
    return torch.stack(rows) if rows else torch.zeros(0, num_patches)


def evaluate_batch(
    table: MaskingTable,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    ratios: Sequence[float],
    modes: Sequence[str],
    fill: float | str | torch.Tensor,
    seed: int,
    score_kwargs: dict[str, Any],
) -> None:
    """Add one batch to ``table`` (the body of :func:`evaluate_masking`; the model in eval mode)."""
    image_space = score_kwargs.get("image_space", "model")
    # θ needs the analysis and the keypoints: only when a ranked mode asks for it.
    scores = patch_scores(model, images, **score_kwargs) if set(modes) - {"random"} else None
    model_input, _ = _split_spaces(model, images, image_space)
    grid = model_grid(model, images)
    noise = random_scores(indices, grid[0] * grid[1], seed).to(images.device) if "random" in modes else None
    patch = patch_size_of(model)
    with torch.no_grad():
        base_ok = model(model_input).argmax(dim=1).cpu() == labels.cpu()
        table.baseline_correct += int(base_ok.sum())
        table.total += int(base_ok.numel())
        for mode in modes:
            for ratio in ratios:
                selected = (
                    select_patches(noise, ratio, "top") if mode == "random" else select_patches(scores, ratio, mode)
                )
                if isinstance(fill, str) and fill == "drop":
                    logits = drop_tokens(model, model_input, selected)
                else:
                    logits = model(mask_images(model_input, selected, patch, fill))
                table.add(mode, ratio, logits.argmax(dim=1).cpu() == labels.cpu(), base_ok)


def evaluate_masking(
    model: nn.Module,
    images_or_loader: torch.Tensor | Iterable,
    labels: torch.Tensor | None = None,
    ratios: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4),
    modes: Sequence[str] = MODES,
    fill: float | str | torch.Tensor = 0.0,
    *,
    layers: LayerChoice = None,
    gamma: float = 1.0,
    weighted: bool = True,
    min_keypoints: int = 1,
    image_space: str = "model",
    keypoint_backend: str = "kornia",
    batch_size: int = 32,
    seed: int = 0,
    progress: bool | None = None,
) -> MaskingTable:
    """Accuracy of the model with Top / Bottom / Random patches masked ("mask as prompt", §5.1).

    For every batch: the unmasked prediction, the SPEC §7 scores, then for
    every mode x ratio the prediction on the masked images (``fill`` as in
    :func:`mask_images`, or ``"drop"`` to remove the tokens with
    :func:`drop_tokens`). The same images are scored masked and unmasked, so
    the table gives, besides accuracy with a 95 % Wilson interval, the exact
    McNemar test of each cell against the baseline. The model runs in eval
    mode without gradients (its flags restored after).

    Args:
        model: a timm ViT classifier.
        images_or_loader: a (B, C, H, W) tensor (with ``labels``), or an
            iterable of ``(images, labels)`` batches (``labels=None``).
        labels: (B,) class indices for a tensor input.
        ratios: mask ratios r in [0, 1]; round(r N) patches per image.
        modes: among ``"top"``, ``"bottom"``, ``"random"``.
        fill: see :func:`mask_images`, or ``"drop"``.
        layers, gamma, weighted, min_keypoints, keypoint_backend: the score (SPEC §7).
        image_space: ``"model"`` (default) or ``"pixel"`` (inputs in [0, 1],
            normalised here; fill values are still in the model's space).
        batch_size: for a tensor input.
        seed: of the random mode: image i gets the top of
            :func:`random_scores` for (seed, i), whatever its batch or process.
        progress: tqdm bar (None: only on a terminal).

    Returns:
        A :class:`MaskingTable`.
    """
    from tqdm.auto import tqdm

    ratios, modes = check_plan(ratios, modes)
    _blocks(model)
    table = MaskingTable(settings={"fill": str(fill), "layers": str(layers), "gamma": gamma, "seed": seed})
    score_kwargs = {
        "layers": layers, "gamma": gamma, "weighted": weighted, "min_keypoints": min_keypoints,
        "image_space": image_space, "keypoint_backend": keypoint_backend,
    }  # fmt: skip
    with _eval_mode(model):
        bar = tqdm(_batches(images_or_loader, labels, batch_size), desc="mask-eval", unit="batch",
                   disable=None if progress is None else not progress)  # fmt: skip
        for images, batch_labels, indices in bar:
            evaluate_batch(table, model, images, batch_labels, indices, ratios=ratios, modes=modes, fill=fill,
                           seed=seed, score_kwargs=score_kwargs)  # fmt: skip
    return table
