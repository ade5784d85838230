"""Is θ a faithful explanation? Attribution methods side by side on standard metrics, in one table.

:func:`compare` runs several methods (:mod:`~captum_sift.faithfulness.methods`)
on (model, images, labels) and returns a :class:`ComparisonTable`: patch-level
deletion and insertion AUC (most relevant patches first; fill or token drop),
Quantus's ``FaithfulnessCorrelation`` and ``EfficientMPRT``
(:mod:`~captum_sift.faithfulness.metrics`), where ground truth is given
Quantus's localisation metrics and the rank of a known true patch, ROAD on
request (:mod:`~captum_sift.faithfulness.localisation`), and the cost of each method in
seconds per image and in plain forwards (each method timed between two plain
forwards of the same batch, in interleaved rounds; medians over the rounds).
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

from .._checks import check_classes, check_int, shape_of
from .._dist import all_gather_objects
from ..errors import CaptumSiftError
from ..masking import Z95, read_logits
from ..vit import ViTAdapter, as_vit, eval_mode
from ..vit.inputs import Batch
from .localisation import LOCALISATION_METRICS, ROAD_PERCENTILES, TOP_K, localisation_scores, patch_masks, road_scores
from .methods import DEFAULT_METHODS, METHODS, explain_with, patch_attribution
from .metrics import _quantus, measure_deletion_insertion, quantus_scores

__all__ = ["BETTER", "ComparisonTable", "compare"]

#: Which way each metric of a :class:`ComparisonTable` is better.
BETTER = {"deletion_auc": "lower", "insertion_auc": "higher", "faithfulness_correlation": "higher",
          "mprt_complexity_change": "higher", "true_patch_rank": "lower", "pointing_game": "higher",
          "relevance_mass_accuracy": "higher", "relevance_rank_accuracy": "higher", "top_k_intersection": "higher",
          "road": "higher", "seconds_per_image": "lower", "forwards_per_image": "lower"}  # fmt: skip


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

    def merge(self, *others: ComparisonTable) -> ComparisonTable:
        """One table of every table's images: per-image values concatenated, curves added, timed rounds listed."""
        for other in others:
            if not isinstance(other, ComparisonTable):
                raise CaptumSiftError(f"expected ComparisonTables to merge, got {type(other).__name__}")
        merged = ComparisonTable()
        for table in (self, *others):
            for method, metrics in table.values.items():
                for metric, vals in metrics.items():
                    merged.add(method, metric, vals)
            for method, entry in table.curves.items():
                merged._add_curve_sums(method, entry["points"], entry["deletion"], entry["insertion"], entry["n"])
            for method, batches in table.timing.items():
                for seconds, images, forward in batches:
                    merged.add_time(method, seconds, int(images), forward)
        return merged

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Every torch.distributed rank's images in this table, in rank order, in place (a no-op in one process).

        Every rank must call it. The tables travel as Python objects
        (:meth:`state_dict`), so ``device`` (the accumulator protocol's
        argument) does not matter here.
        """
        parts = all_gather_objects(self.state_dict())
        if len(parts) > 1:
            whole = ComparisonTable().merge(*(ComparisonTable.from_dict(part) for part in parts))
            self.values, self.curves, self.timing = whole.values, whole.curves, whole.timing

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready per-image values, curve sums and timed rounds (:meth:`load_state_dict` reads it back)."""
        return {"values": self.values, "curves": self.curves, "timing": self.timing}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this table's contents by a :meth:`state_dict`'s, checked; anything else is refused."""
        try:
            values = {m: {k: [float(v) for v in vals] for k, vals in metrics.items()}
                      for m, metrics in state["values"].items()}  # fmt: skip
            loaded = ComparisonTable(values=values, curves=dict(state["curves"]))
            for method, batches in state["timing"].items():
                for seconds, images, forward in batches:
                    loaded.add_time(method, float(seconds), int(images), float(forward))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CaptumSiftError(f"expected a comparison table (ComparisonTable.state_dict): {exc!r}") from exc
        self.values, self.curves, self.timing = loaded.values, loaded.curves, loaded.timing

    def to_dict(self) -> dict[str, Any]:
        """The :meth:`state_dict`."""
        return self.state_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonTable:
        """A new table holding a :meth:`state_dict` (:meth:`load_state_dict`)."""
        table = cls()
        table.load_state_dict(data)
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
    images: torch.Tensor | Batch,
    labels: torch.Tensor,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    image_space: str = "model",
    steps: int = 8,
    fill: float | str = 0.0,
    true_patch: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    road: bool | Sequence[int] = False,
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
    most relevant first, :func:`~captum_sift.faithfulness.metrics.deletion_insertion`; lower / higher is
    better; deleting the least relevant first (LeRF) keeps the patch sets of
    insertion, so its AUC equals the insertion AUC and is not repeated),
    ``faithfulness_correlation`` and
    ``mprt_complexity_change`` (Quantus's ``FaithfulnessCorrelation`` and
    ``EfficientMPRT``, with ``quantus_metrics``). With ground truth,
    ``masks`` — patch masks (B, N) or pixel masks (B, H, W) of the images'
    size (:func:`~captum_sift.faithfulness.localisation.patch_masks`) — or
    ``true_patch`` (B,), the index of the one patch that holds the evidence
    (a one-patch mask, and its ``true_patch_rank``: 0 = the top attributed
    patch): ``pointing_game``, ``relevance_mass_accuracy``,
    ``relevance_rank_accuracy`` and ``top_k_intersection`` (top 5 patches),
    Quantus's on the patch scores
    (:func:`~captum_sift.faithfulness.localisation.localisation_scores`;
    they need quantus, whatever ``quantus_metrics`` says). With ``road``
    (True: the percentiles 10, 20, ..., 90; or the percentiles to use):
    ``road``, pytorch-grad-cam's ROADCombined of the patch scores
    (:func:`~captum_sift.faithfulness.localisation.road_scores`; two sparse
    solves per percentile and image, about 0.1 s each at 112 px and up to
    1.4 s at 224 px). Cost per method: ``seconds_per_image`` and
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
    patch indices of the grid (not with ``masks``), ``steps``, ``ig_steps`` and ``batch_size``
    ints >= 1; non-finite logits anywhere (a NaN weight) are an error naming
    the method and the step, never a score.
    """
    from tqdm.auto import tqdm

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
    size = images.model_input.shape[0] if isinstance(images, Batch) else None
    if size is None and (not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0):
        raise CaptumSiftError(f"expected images of shape (B, C, H, W) with B >= 1, got {shape_of(images)}")
    labels = check_classes(labels, images.shape[0] if size is None else size, "labels")
    batch = images if isinstance(images, Batch) else Batch.build(vit, images, image_space)
    x, pixels = batch.model_input, batch.pixels
    n_patches = batch.num_patches
    if true_patch is not None and masks is not None:
        raise CaptumSiftError("expected true_patch (one patch per image) or masks, not both")
    if true_patch is not None:
        true_patch = check_classes(true_patch, x.shape[0], "true_patch", high=n_patches)
        masks = torch.zeros(x.shape[0], n_patches, dtype=torch.bool).scatter_(1, true_patch.cpu().view(-1, 1), True)
    elif masks is not None:
        masks = patch_masks(masks, x.shape[0], batch.grid, vit.patch_size).cpu()
    percentiles = _road_percentiles(road)
    if masks is not None:
        _quantus()  # before any work: the localisation metrics are Quantus's
        top_k = min(TOP_K, n_patches - 1)
    table = ComparisonTable()
    with torch.no_grad(), eval_mode(vit.model):  # NaN weights stop here, before any method runs
        classes = read_logits(vit.logits(x[:1]), 1, "the unmasked images").shape[1]
    check_classes(labels, x.shape[0], "labels", high=classes)
    bar = tqdm(methods, desc="compare", unit="method", disable=None if progress is None else not progress)
    for method in bar:
        explain_with(method, vit, x[:1], labels[:1].to(x.device), ig_steps=ig_steps)  # set-up: no per-image cost
        for lo in range(0, x.shape[0], batch_size):
            xb, yb = x[lo : lo + batch_size], labels[lo : lo + batch_size].to(x.device)
            logits, forward = _timed(_forward, vit, xb)
            read_logits(logits, xb.shape[0], f"the unmasked images {lo}..{lo + xb.shape[0] - 1}")
            for _ in range(max(timing_rounds, 1)):
                pb = None if pixels is None else pixels[lo : lo + batch_size]
                attributions, seconds = _timed(explain_with, method, vit, xb, yb, ig_steps=ig_steps, seed=lo, pixels=pb)
                if timing_rounds:
                    after = _timed(_forward, vit, xb)[1]
                    table.add_time(method, seconds, xb.shape[0], min(forward, after))
                    forward = after
            scores = patch_attribution(attributions, vit.patch_size)
            try:
                measured = measure_deletion_insertion(vit, xb, yb, scores, steps=steps, fill=fill)
            except CaptumSiftError as exc:
                raise CaptumSiftError(f"method {method!r}, images {lo}..{lo + xb.shape[0] - 1}: {exc}") from exc
            table.add_curves(method, measured.shares, measured.deletion, measured.insertion)
            table.add(method, "deletion_auc", measured.deletion_auc.tolist())
            table.add(method, "insertion_auc", measured.insertion_auc.tolist())
            if true_patch is not None:
                truth = true_patch[lo : lo + batch_size].to(scores.device).view(-1, 1)
                table.add(method, "true_patch_rank", (scores > scores.gather(1, truth)).sum(dim=1).tolist())
            if masks is not None:
                found = localisation_scores(scores, masks[lo : lo + batch_size], k=top_k)
                for metric in LOCALISATION_METRICS:
                    table.add(method, metric, found[metric])
            if percentiles:
                table.add(method, "road", road_scores(vit, xb, yb, scores, percentiles=percentiles, seed=lo))
            if quantus_metrics:
                for metric, values in quantus_scores(vit, method, xb, yb, attributions, ig_steps).items():
                    table.add(method, metric, values)
    return table


def _road_percentiles(road: object) -> tuple[int, ...]:
    """``road`` of :func:`compare` as its percentiles: () for False, pytorch-grad-cam's for True."""
    if isinstance(road, bool):
        return ROAD_PERCENTILES if road else ()
    if not isinstance(road, Sequence) or isinstance(road, str) or not road:
        raise CaptumSiftError(f"expected road to be True, False or a sequence of percentiles, got {road!r}")
    return tuple(check_int(p, "every ROAD percentile", low=1, high=99) for p in road)


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
