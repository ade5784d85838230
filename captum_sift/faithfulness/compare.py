"""Is θ a faithful explanation? Attribution methods side by side on standard metrics.

:func:`explain` runs one method by name on any model family; :func:`compare`
runs several on (model, images, labels) and returns one table: patch-level
deletion and insertion AUC (most relevant patches first; fill or token
drop), Quantus's ``FaithfulnessCorrelation`` and ``EfficientMPRT`` (does
the attribution change when the weights are randomised?), the rank of a
known true patch and the pointing game where one is given, and the cost of
each method in seconds per image and in plain forwards (each method timed
between two plain forwards of the same batch, in interleaved rounds; medians
over the rounds).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._checks import all_finite, check_classes, check_int, shape_of
from ..errors import CaptumSiftError
from ..masking import Z95, masked_logits, read_logits
from ..vit import ViTAdapter, as_vit, eval_mode

__all__ = [
    "METHODS",
    "ComparisonTable",
    "compare",
    "deletion_insertion",
    "deletion_insertion_curves",
    "explain",
    "patch_attribution",
]

#: Methods :func:`explain` knows; ``gradcam`` needs the ``gradcam`` extra (pytorch-grad-cam).
METHODS = ("theta", "rollout", "raw_attention", "saliency", "integrated_gradients", "feature_ablation", "gradcam",
           "random")  # fmt: skip
DEFAULT_METHODS = ("theta", "rollout", "raw_attention", "saliency", "integrated_gradients", "random")
#: Which way each metric of a :class:`ComparisonTable` is better.
BETTER = {"deletion_auc": "lower", "insertion_auc": "higher", "faithfulness_correlation": "higher",
          "mprt_complexity_change": "higher", "true_patch_rank": "lower", "pointing_game": "higher",
          "seconds_per_image": "lower", "forwards_per_image": "lower"}  # fmt: skip


class _Logits(nn.Module):
    """The adapter's logits as a plain module (what Captum and Quantus call)."""

    def __init__(self, vit: ViTAdapter) -> None:
        super().__init__()
        self.vit = vit
        self.net = vit.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.logits(x)


def explain(
    method: str,
    model: nn.Module | ViTAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    ig_steps: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Attribution (B, C, H, W) of ``method`` for model-space ``images`` and class ``targets`` (B,).

    ``theta``: :class:`~captum_sift.attr.SIFTInterrelation`; ``rollout`` /
    ``raw_attention``: the attention baselines; ``saliency``,
    ``integrated_gradients`` (``ig_steps``, baseline 0 = the mean colour),
    ``feature_ablation`` (over the patches): Captum's; ``gradcam``:
    pytorch-grad-cam's GradCAM on the last block's first norm, tokens
    reshaped to the grid; ``random``: uniform noise per patch (a floor).
    """
    from ..attr import AttentionRollout, RawAttention, SIFTInterrelation
    from ..attr.patches import patch_feature_mask, patch_scores_to_pixels

    vit = as_vit(model)
    if method not in METHODS:
        raise CaptumSiftError(f"expected a method among {METHODS}, got {method!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        from .._checks import shape_of

        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    images = images.detach()
    if method in _TARGETED:
        targets = _check_targets(vit, images, targets)
    if method == "theta":
        return SIFTInterrelation(vit).attribute(images)
    if method == "rollout":
        return AttentionRollout(vit).attribute(images)
    if method == "raw_attention":
        return RawAttention(vit).attribute(images)
    if method == "random":
        grid = vit.grid(images)
        g = torch.Generator().manual_seed(seed)
        scores = torch.rand(images.shape[0], grid[0] * grid[1], generator=g).to(images.device)
        return patch_scores_to_pixels(scores, images.shape, vit.patch_size)
    forward = _Logits(vit)
    targets = targets.to(images.device)
    with eval_mode(vit.model):
        if method == "saliency":
            from captum.attr import Saliency

            return Saliency(forward).attribute(images.clone().requires_grad_(True), target=targets).detach()
        if method == "integrated_gradients":
            from captum.attr import IntegratedGradients

            return IntegratedGradients(forward).attribute(images, target=targets, n_steps=ig_steps).detach()
        if method == "feature_ablation":
            from captum.attr import FeatureAblation

            mask = patch_feature_mask(images.shape[2], images.shape[3], vit.patch_size, images.device)
            return FeatureAblation(forward).attribute(images, target=targets, feature_mask=mask,
                                                      perturbations_per_eval=16).detach()  # fmt: skip
        return _gradcam(vit, forward, images, targets)


#: The methods that explain one class: their targets are checked against the model's outputs.
_TARGETED = ("saliency", "integrated_gradients", "feature_ablation", "gradcam")


def _check_targets(vit: ViTAdapter, images: torch.Tensor, targets: object) -> torch.Tensor:
    """``targets`` as (B,) class indices in [0, classes) of the model's outputs (one forward of one image)."""
    batch = images.shape[0]
    if not isinstance(targets, torch.Tensor) or targets.shape != (batch,) or targets.is_floating_point() \
            or targets.dtype == torch.bool or targets.is_complex():  # fmt: skip
        shown = f"shape {tuple(targets.shape)}, {targets.dtype}" if isinstance(targets, torch.Tensor) else repr(targets)
        raise CaptumSiftError(f"expected targets of shape ({batch},) holding class indices (ints), got {shown}")
    classes = _num_classes(vit, images)
    if batch and (int(targets.min()) < 0 or int(targets.max()) >= classes):
        raise CaptumSiftError(
            f"expected targets that are class indices in [0, {classes}) of the model's {classes} outputs, "
            f"got targets in [{int(targets.min())}, {int(targets.max())}]"
        )
    return targets


def _num_classes(vit: ViTAdapter, images: torch.Tensor) -> int:
    """The model's number of outputs: read off its head where the family says it, else one forward of one image."""
    model = vit.model
    known = {
        "timm": getattr(model, "num_classes", None),
        "hf": getattr(getattr(model, "config", None), "num_labels", None),
        "torchvision": getattr(getattr(getattr(model, "heads", None), "head", None), "out_features", None),
    }.get(vit.family)
    if isinstance(known, int) and known > 0:
        return known
    vit.check_classifier()
    with torch.no_grad(), eval_mode(model):
        return int(vit.logits(images[:1]).shape[1])


def _gradcam(vit: ViTAdapter, forward: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise CaptumSiftError(
            "method 'gradcam' needs pytorch-grad-cam: pip install grad-cam "
            "(from a clone of captum_sift: pip install -c constraints.txt '.[gradcam]')"
        ) from exc
    from ..attr.patches import patch_scores_to_pixels

    norms = [m for m in vit.blocks[-1].modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise CaptumSiftError(f"no LayerNorm in the last block of {type(vit.model).__name__} for Grad-CAM")
    grid = vit.grid(images)
    prefix = vit.num_prefix_tokens

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens[0] if isinstance(tokens, (tuple, list)) else tokens
        patches = tokens[:, prefix:, :]
        return patches.reshape(tokens.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)

    with GradCAM(model=forward, target_layers=[norms[0]], reshape_transform=reshape) as cam:
        heat = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])  # (B, H, W)
    heat = torch.as_tensor(heat, dtype=images.dtype, device=images.device)
    scores = torch.nn.functional.avg_pool2d(heat.unsqueeze(1), vit.patch_size).flatten(1)
    return patch_scores_to_pixels(scores, images.shape, vit.patch_size)


def patch_attribution(attributions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch relevance (B, N): the attribution summed over each patch's pixels and channels."""
    from .._checks import check_patch_size, shape_of

    if not isinstance(attributions, torch.Tensor) or attributions.dim() != 4:
        raise CaptumSiftError(f"expected attributions of shape (B, C, H, W), got {shape_of(attributions)}")
    patch_size = check_patch_size(patch_size, attributions.shape[2], attributions.shape[3])
    pooled = torch.nn.functional.avg_pool2d(attributions.sum(dim=1, keepdim=True), patch_size)
    return pooled.flatten(1) * patch_size * patch_size


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
    points, deletion, insertion = deletion_insertion_curves(vit, images, targets, scores, steps=steps, fill=fill)
    x = torch.tensor(points, dtype=torch.float64) / scores.shape[1]
    return _auc(x, deletion), _auc(x, insertion)


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
    vit = as_vit(vit)
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


@dataclass
class ComparisonTable:
    """Per-image values of every method x metric, with means and 95 % intervals; mean curves; cost.

    ``curves[method]`` holds the summed deletion and insertion curves over
    the images (``"points"``: the shares of patches masked, ``"n"``: images);
    ``timing[method]`` one ``[seconds, images, forward_seconds]`` per timed
    round: the seconds the method took on a batch and the seconds of one
    plain forward of the same batch, timed just before and just after it
    (the faster of the two), for the cost rows.
    """

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: dict[str, list[list[float]]] = field(default_factory=dict)

    def add(self, method: str, metric: str, per_image: Sequence[float]) -> None:
        self.values.setdefault(method, {}).setdefault(metric, []).extend(float(v) for v in per_image)

    def add_curves(self, method: str, points: list[float], deletion: torch.Tensor, insertion: torch.Tensor) -> None:
        """Add the curves (B, K) of B images."""
        self._add_curve_sums(method, points, deletion.sum(0).tolist(), insertion.sum(0).tolist(), deletion.shape[0])

    def _add_curve_sums(
        self, method: str, points: list[float], deletion: list[float], insertion: list[float], images: int
    ) -> None:
        entry = self.curves.setdefault(
            method, {"points": points, "deletion": [0.0] * len(points), "insertion": [0.0] * len(points), "n": 0}
        )
        entry["deletion"] = [a + b for a, b in zip(entry["deletion"], deletion, strict=True)]
        entry["insertion"] = [a + b for a, b in zip(entry["insertion"], insertion, strict=True)]
        entry["n"] += int(images)

    def add_time(self, method: str, seconds: float, images: int, forward_seconds: float) -> None:
        """One round: the method's seconds on ``images`` images and one plain forward's seconds on the same batch."""
        if not (images >= 1 and seconds >= 0 and forward_seconds > 0 and math.isfinite(seconds + forward_seconds)):
            raise CaptumSiftError(f"expected a timing of >= 1 image, seconds >= 0 and forward seconds > 0, got "
                                  f"{images} images, {seconds!r} s, forward {forward_seconds!r} s")  # fmt: skip
        self.timing.setdefault(method, []).append([float(seconds), int(images), float(forward_seconds)])

    @property
    def forward_seconds(self) -> float:
        """Seconds of one plain forward per image: the median over every timed round (NaN before any)."""
        per_image = [f / i for batches in self.timing.values() for _, i, f in batches]
        return statistics.median(per_image) if per_image else float("nan")

    @property
    def cost(self) -> dict[str, dict[str, float]]:
        """Seconds per image and plain forwards per image of every method, medians over the timed rounds.

        ``forwards_per_image`` pairs each round's time with the plain forward
        of the same batch timed around it, so a slow moment of a shared
        machine, or a first call at a new batch size, slows both sides.
        """
        return {method: {"seconds_per_image": statistics.median(s / i for s, i, _ in batches),
                         "forwards_per_image": statistics.median(s / f for s, _, f in batches)}
                for method, batches in self.timing.items() if batches}  # fmt: skip

    def merge(self, other: ComparisonTable) -> ComparisonTable:
        """Both tables' images in one (per-image values concatenated, curves added, batch timings listed)."""
        merged = ComparisonTable()
        for table in (self, other):
            for method, metrics in table.values.items():
                for metric, vals in metrics.items():
                    merged.add(method, metric, vals)
            for method, entry in table.curves.items():
                merged._add_curve_sums(method, entry["points"], entry["deletion"], entry["insertion"], entry["n"])
            for method, batches in table.timing.items():
                for seconds, images, forward in batches:
                    merged.add_time(method, seconds, int(images), forward)
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values, "curves": self.curves, "timing": self.timing}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonTable:
        try:
            values = {m: {k: [float(v) for v in vals] for k, vals in metrics.items()}
                      for m, metrics in data["values"].items()}  # fmt: skip
            table = cls(values=values, curves=dict(data["curves"]))
            for method, batches in data["timing"].items():
                for seconds, images, forward in batches:
                    table.add_time(method, float(seconds), int(images), float(forward))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CaptumSiftError(f"expected a comparison table written by ComparisonTable.to_dict: {exc!r}") from exc
        return table

    def rows(self) -> list[dict[str, Any]]:
        """One dict per method x metric: mean, 95 % interval (normal approximation), n, which way is better.

        The cost rows hold medians over the n timed rounds (no interval).
        """
        out = []
        for method, metrics in self.values.items():
            for metric, vals in metrics.items():
                finite = [v for v in vals if math.isfinite(v)]
                n = len(finite)
                mean = sum(finite) / n if n else float("nan")
                sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else float("nan")
                half = Z95 * sd / math.sqrt(n) if n > 1 else float("nan")
                out.append({"method": method, "metric": metric, "mean": mean, "ci_low": mean - half,
                            "ci_high": mean + half, "n": n, "better": BETTER.get(metric, "")})  # fmt: skip
            for metric, value in self.cost.get(method, {}).items():
                out.append({"method": method, "metric": metric, "mean": value, "ci_low": float("nan"),
                            "ci_high": float("nan"), "n": len(self.timing[method]),
                            "better": BETTER.get(metric, "")})  # fmt: skip
        return out

    def mean(self, method: str, metric: str) -> float:
        return next(r["mean"] for r in self.rows() if r["method"] == method and r["metric"] == metric)

    def __str__(self) -> str:
        """One row per metric (with which way is better), one column per method: full names, never cut."""
        means = {(r["method"], r["metric"]): r["mean"] for r in self.rows()}
        metrics = list(dict.fromkeys(metric for _, metric in means))
        methods = list(self.values)
        labels = [f"{m} ({BETTER[m]} is better)" if m in BETTER else m for m in metrics]
        first = max([len("metric"), *map(len, labels)])
        widths = [max(len(m), 10) for m in methods]
        lines = [f"{'metric':<{first}s} " + " ".join(f"{m:>{w}s}" for m, w in zip(methods, widths, strict=True))]
        for metric, label in zip(metrics, labels, strict=True):
            cells = []
            for method, w in zip(methods, widths, strict=True):
                value = means.get((method, metric))
                cells.append(f"{value:>{w}.4f}" if value is not None else f"{'-':>{w}s}")
            lines.append(f"{label:<{first}s} " + " ".join(cells))
        return "\n".join(lines)


def compare(
    model: nn.Module | ViTAdapter,
    images: torch.Tensor,
    labels: torch.Tensor,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    image_space: str = "model",
    steps: int = 8,
    fill: float | str = 0.0,
    true_patch: torch.Tensor | None = None,
    quantus_metrics: bool = True,
    ig_steps: int = 16,
    batch_size: int = 16,
    progress: bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    timing_rounds: int = 3,
) -> ComparisonTable:
    """Every method on (model, images, labels): one :class:`ComparisonTable`.

    Metrics per image: ``deletion_auc`` / ``insertion_auc`` (patch level,
    most relevant first, :func:`deletion_insertion`; lower / higher is
    better; deleting the least relevant first (LeRF) keeps the patch sets of
    insertion, so its AUC equals the insertion AUC and is not repeated),
    ``faithfulness_correlation`` and
    ``mprt_complexity_change`` (Quantus's ``FaithfulnessCorrelation`` and
    ``EfficientMPRT``, with ``quantus_metrics``), and with ``true_patch``
    (B,) — the index of the patch that holds the evidence — the
    ``true_patch_rank`` (0 = the top attributed patch) and the
    ``pointing_game`` hit (Quantus's ``PointingGame``, the true patch as the
    mask; rank 0 without ``quantus_metrics``). Cost per method: ``seconds_per_image`` and
    ``forwards_per_image``: each method first runs once on one image (its
    one-time set-up is no per-image cost), then on every batch
    ``timing_rounds`` times, each run timed between two plain forwards of
    the same batch (forward, method, forward, method, ..., forward); the
    cost rows are medians over all the rounds of its seconds per image and
    of its time / the faster of the two forwards around it, so that a slow
    moment of a shared machine slows both sides of a ratio. A busy machine
    still moves single rounds several-fold: for a steady figure use more
    rounds, or ``benchmarks/attribution.py``. ``timing_rounds=0`` times
    nothing (no cost rows; each method runs once per batch).

    ``labels`` (B,) must be integer classes of the model, ``true_patch`` (B,)
    patch indices of the grid, ``steps``, ``ig_steps`` and ``batch_size``
    ints >= 1; non-finite logits anywhere (a NaN weight) are an error naming
    the method and the step, never a score.
    """
    from tqdm.auto import tqdm

    from ..vit.inputs import to_model_and_pixels

    vit = as_vit(model, mean=mean, std=std)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise CaptumSiftError(f"expected methods among {METHODS}, got {list(methods)}")
    if len(set(methods)) != len(methods):
        raise CaptumSiftError(f"expected distinct methods, got {list(methods)}")
    steps = check_int(steps, "steps", low=1)
    ig_steps = check_int(ig_steps, "ig_steps", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    timing_rounds = check_int(timing_rounds, "timing_rounds", low=0)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W) with B >= 1, got {shape_of(images)}")
    labels = check_classes(labels, images.shape[0], "labels")
    x, _ = to_model_and_pixels(vit, images, image_space, need_pixels=image_space == "model")
    n_patches = math.prod(vit.grid(x))
    if true_patch is not None:
        true_patch = check_classes(true_patch, x.shape[0], "true_patch", high=n_patches)
    table = ComparisonTable()
    with torch.no_grad(), eval_mode(vit.model):  # NaN weights stop here, before any method runs
        classes = read_logits(vit.logits(x[:1]), 1, "the unmasked images").shape[1]
    check_classes(labels, x.shape[0], "labels", high=classes)
    bar = tqdm(methods, desc="compare", unit="method", disable=None if progress is None else not progress)
    for method in bar:
        explain(method, vit, x[:1], labels[:1].to(x.device), ig_steps=ig_steps)  # set-up is no per-image cost
        for lo in range(0, x.shape[0], batch_size):
            xb, yb = x[lo : lo + batch_size], labels[lo : lo + batch_size].to(x.device)
            logits, forward = _timed(_forward, vit, xb)
            read_logits(logits, xb.shape[0], f"the unmasked images {lo}..{lo + xb.shape[0] - 1}")
            for _ in range(max(timing_rounds, 1)):
                attributions, seconds = _timed(explain, method, vit, xb, yb, ig_steps=ig_steps, seed=lo)
                if timing_rounds:
                    after = _timed(_forward, vit, xb)[1]
                    table.add_time(method, seconds, xb.shape[0], min(forward, after))
                    forward = after
            scores = patch_attribution(attributions, vit.patch_size)
            try:
                points, del_curve, ins_curve = deletion_insertion_curves(vit, xb, yb, scores, steps=steps, fill=fill)
            except CaptumSiftError as exc:
                raise CaptumSiftError(f"method {method!r}, images {lo}..{lo + xb.shape[0] - 1}: {exc}") from exc
            share = torch.tensor(points, dtype=torch.float64) / scores.shape[1]
            table.add_curves(method, share.tolist(), del_curve, ins_curve)
            table.add(method, "deletion_auc", _auc(share, del_curve).tolist())
            table.add(method, "insertion_auc", _auc(share, ins_curve).tolist())
            if true_patch is not None:
                truth = true_patch[lo : lo + batch_size].to(scores.device).view(-1, 1)
                rank = (scores > scores.gather(1, truth)).sum(dim=1)
                table.add(method, "true_patch_rank", rank.tolist())
                if quantus_metrics:
                    table.add(method, "pointing_game", _pointing_game(vit, xb, yb, attributions, truth.flatten()))
                else:
                    table.add(method, "pointing_game", (rank == 0).double().tolist())
            if quantus_metrics:
                for metric, values in _quantus(vit, method, xb, yb, attributions, ig_steps).items():
                    table.add(method, metric, values)
    return table


def _forward(vit: ViTAdapter, x: torch.Tensor) -> torch.Tensor:
    """One plain forward (no gradient, eval mode): the unit of the cost rows."""
    with torch.no_grad(), eval_mode(vit.model):
        return vit.logits(x)


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall time in seconds, queued GPU work included."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _pointing_game(
    vit: ViTAdapter, x: torch.Tensor, y: torch.Tensor, attributions: torch.Tensor, truth: torch.Tensor
) -> list[float]:
    """Quantus's PointingGame with the true patch as the ground-truth mask: 1 where the maximum lies in it."""
    import warnings

    import quantus

    from ..attr.patches import patch_scores_to_pixels

    n = math.prod(vit.grid(x))
    mask = torch.zeros(x.shape[0], n).scatter_(1, truth.cpu().view(-1, 1), 1.0)
    s_batch = patch_scores_to_pixels(mask, (x.shape[0], 1, *x.shape[2:]), vit.patch_size).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.PointingGame(disable_warnings=True)
        hits = metric(model=_Logits(vit).eval(), x_batch=x.detach().cpu().numpy(), y_batch=y.cpu().numpy(),
                      a_batch=attributions.detach().cpu().numpy(), s_batch=s_batch, channel_first=True,
                      device=str(x.device))  # fmt: skip
    return [float(h) for h in hits]


def _quantus(
    vit: ViTAdapter, method: str, x: torch.Tensor, y: torch.Tensor, attributions: torch.Tensor, ig_steps: int
) -> dict[str, list[float]]:
    """Quantus's FaithfulnessCorrelation and EfficientMPRT for one batch (numpy in, lists out)."""
    try:
        import quantus
    except ImportError as exc:
        raise CaptumSiftError(
            "Quantus metrics need quantus: pip install quantus (from a clone of captum_sift: "
            "pip install -c constraints.txt '.[metrics]')"
        ) from exc
    wrapped = _Logits(vit).eval()
    n = math.prod(vit.grid(x))
    xs, ys, a = x.detach().cpu().numpy(), y.cpu().numpy(), attributions.detach().cpu().numpy()

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> Any:
        net = model.vit if isinstance(model, _Logits) else model
        t = torch.as_tensor(inputs, dtype=torch.float32)
        return explain(method, as_vit(net, mean=vit.mean, std=vit.std), t, torch.as_tensor(targets),
                       ig_steps=ig_steps).detach().cpu().numpy()  # fmt: skip

    import numpy as np

    numpy_state = np.random.get_state()
    np.random.seed(0)  # Quantus draws its random subsets from numpy's global generator: same table every run
    try:
        return _quantus_metrics(quantus, vit, wrapped, xs, ys, a, n, explain_func, x.device)
    finally:
        np.random.set_state(numpy_state)


def _quantus_metrics(
    quantus: Any, vit: ViTAdapter, wrapped: nn.Module, xs: Any, ys: Any, a: Any, n: int, explain_func: Any, device: Any
) -> dict[str, list[float]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        faith = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=max(1, n // 4) * vit.patch_size**2,
                                                perturb_baseline="black", return_aggregate=False,
                                                disable_warnings=True)  # fmt: skip
        fc = faith(model=wrapped, x_batch=xs, y_batch=ys, a_batch=a, device=str(device), channel_first=True)
        mprt = quantus.EfficientMPRT(disable_warnings=True)
        emprt = mprt(model=wrapped, x_batch=xs, y_batch=ys, a_batch=a, explain_func=explain_func,
                     device=str(device), channel_first=True)  # fmt: skip
    return {"faithfulness_correlation": [float(v) for v in fc], "mprt_complexity_change": [float(v) for v in emprt]}
