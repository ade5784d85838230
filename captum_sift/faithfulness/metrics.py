"""Faithfulness metrics of an attribution: patch deletion / insertion and Quantus's faithfulness metrics.

:func:`deletion_insertion` masks the most relevant patches first (MoRF) and
reads the target class's probability; the Quantus metrics
(``FaithfulnessCorrelation``, ``EfficientMPRT``: does the attribution change
when the weights are randomised?) need the ``metrics`` extra. Localisation
against ground truth: :mod:`~captum_sift.faithfulness.localisation`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
from torch import nn

from .._checks import all_finite, check_classes, check_int, shape_of
from ..errors import CaptumSiftError
from ..masking import masked_logits
from ..vit import ViTAdapter, as_vit, eval_mode
from .methods import _Logits, explain_with

__all__ = ["deletion_insertion", "deletion_insertion_curves"]


def deletion_insertion(
    vit: ViTAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    *,
    steps: int = 8,
    fill: float | str = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-level deletion and insertion AUC per image (B,), most relevant patches first (MoRF).

    Deletion: the softmax probability of the target class as the top 0, N/s,
    ..., N patches (by ``scores``, ties by index) are masked (``fill`` as
    :func:`~captum_sift.masking.apply.mask_images`, or ``"drop"``); insertion: as
    they are revealed on the fully masked image. The AUC is the trapezoid
    mean over the s + 1 points (lower deletion and higher insertion = more
    faithful). ``scores`` (B, N) must be finite, ``targets`` (B,) classes of
    the model and ``steps`` an int >= 1; non-finite logits are an error
    naming the masking step, never a probability.
    """
    measured = measure_deletion_insertion(as_vit(vit), images, targets, scores, steps=steps, fill=fill)
    return measured.deletion_auc, measured.insertion_auc


def deletion_insertion_curves(
    vit: ViTAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    *,
    steps: int = 8,
    fill: float | str = 0.0,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(numbers of patches masked, deletion probabilities (B, K), insertion probabilities (B, K))."""
    return _curves(as_vit(vit), images, targets, scores, steps=steps, fill=fill)


class DeletionInsertion(NamedTuple):
    """The curves of :func:`deletion_insertion_curves` at the shares of patches masked, and their AUCs (B,)."""

    shares: list[float]
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor


def measure_deletion_insertion(
    vit: ViTAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    *,
    steps: int = 8,
    fill: float | str = 0.0,
) -> DeletionInsertion:
    """:func:`deletion_insertion` on an adapter, with its curves (what :func:`compare` keeps of each batch)."""
    points, deletion, insertion = _curves(vit, images, targets, scores, steps=steps, fill=fill)
    x = torch.tensor(points, dtype=torch.float64) / scores.shape[1]
    return DeletionInsertion(x.tolist(), deletion, insertion, _auc(x, deletion), _auc(x, insertion))


def _curves(
    vit: ViTAdapter, images: torch.Tensor, targets: torch.Tensor, scores: torch.Tensor, *, steps: int, fill: float | str
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    steps = check_int(steps, "steps", low=1)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    batch = images.shape[0]
    grid = vit.grid(images)
    n = grid[0] * grid[1]
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (batch, n):
        raise CaptumSiftError(f"expected scores of shape ({batch}, {n}) (one per patch of the {grid[0]} x {grid[1]} "
                              f"grid), got {shape_of(scores)}")  # fmt: skip
    if scores.is_complex() or not all_finite(scores.detach().double()):
        bad = int((~torch.isfinite(scores)).sum()) if not scores.is_complex() else scores.numel()
        raise CaptumSiftError(f"expected finite real scores, got {bad} NaN, Inf or complex values of {scores.numel()}")
    targets = check_classes(targets, batch, "targets")
    order = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices
    points = sorted({round(n * i / steps) for i in range(steps + 1)})
    deletion, insertion = [], []
    with torch.no_grad(), eval_mode(vit.model):
        for k in points:
            top = torch.zeros(batch, n, dtype=torch.bool, device=images.device)
            top.scatter_(1, order[:, :k].to(images.device), True)
            masked, revealed = (
                f"the images with the top {k} of {n} patches masked",
                f"the images with the top {k} of {n} patches revealed",
            )
            deletion.append(_prob(vit, images, top, fill, targets, masked + " (deletion)"))
            insertion.append(_prob(vit, images, ~top, fill, targets, revealed + " (insertion)"))
    return points, torch.stack(deletion, 1), torch.stack(insertion, 1)


def _prob(
    vit: ViTAdapter, images: torch.Tensor, selected: torch.Tensor, fill: float | str, targets: torch.Tensor, what: str
) -> torch.Tensor:
    """Softmax probability of each image's target class with the ``selected`` patches masked."""
    if isinstance(fill, str) and fill == "drop" and bool(selected.all()):
        selected = selected.clone()
        selected[:, 0] = False  # dropping every token leaves nothing to classify: keep one
    logits = masked_logits(vit, images, selected, fill, what=what)
    if targets.numel() and int(targets.max()) >= logits.shape[1]:
        raise CaptumSiftError(f"expected targets in [0, {logits.shape[1]}) (the model's classes), "
                              f"got {int(targets.max())}")  # fmt: skip
    return logits.softmax(dim=1).gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1).double().cpu()


def _auc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((y[:, 1:] + y[:, :-1]) / 2 * (x[1:] - x[:-1])).sum(dim=1)


def quantus_scores(
    vit: ViTAdapter, method: str, x: torch.Tensor, y: torch.Tensor, attributions: torch.Tensor, ig_steps: int
) -> dict[str, list[float]]:
    """Quantus's FaithfulnessCorrelation and EfficientMPRT of ``method`` on one batch (numpy in, lists out).

    Quantus draws its random subsets from numpy's global generator: it is
    seeded with 0 for the call and restored after, so the same batch gives
    the same values every run.
    """
    quantus = _quantus()
    import numpy as np

    wrapped = _Logits(vit).eval()
    n = math.prod(vit.grid(x))
    xs, ys, a = x.detach().cpu().numpy(), y.cpu().numpy(), attributions.detach().cpu().numpy()

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> Any:
        # Quantus passes a copy of ``wrapped`` (EfficientMPRT's has randomised weights)
        net = model.vit if isinstance(model, _Logits) else as_vit(model, mean=vit.mean, std=vit.std)
        t = torch.as_tensor(inputs, dtype=torch.float32)
        return explain_with(method, net, t, torch.as_tensor(targets), ig_steps=ig_steps).detach().cpu().numpy()

    numpy_state = np.random.get_state()
    np.random.seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            faith = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=max(1, n // 4) * vit.patch_size**2,
                                                    perturb_baseline="black", return_aggregate=False,
                                                    disable_warnings=True)  # fmt: skip
            fc = faith(model=wrapped, x_batch=xs, y_batch=ys, a_batch=a, device=str(x.device), channel_first=True)
            mprt = quantus.EfficientMPRT(disable_warnings=True)
            emprt = mprt(model=wrapped, x_batch=xs, y_batch=ys, a_batch=a, explain_func=explain_func,
                         device=str(x.device), channel_first=True)  # fmt: skip
    finally:
        np.random.set_state(numpy_state)
    return {"faithfulness_correlation": [float(v) for v in fc], "mprt_complexity_change": [float(v) for v in emprt]}


def _quantus() -> Any:
    """The quantus module, else an error saying how to install it."""
    try:
        import quantus
    except ImportError as exc:
        raise CaptumSiftError(
            "Quantus metrics need quantus: pip install quantus (from a clone of captum_sift: "
            "pip install -c constraints.txt '.[metrics]')"
        ) from exc
    return quantus
