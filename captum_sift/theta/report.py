"""InterrelationReport: θ classes and focus index per image x layer x head, and their data-set sums, mergeable."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from .._dist import all_gather_objects, all_reduce_sum
from ..errors import CaptumSiftError
from .control_theta import MIN_EXCESS, control_excess, control_verdicts
from .controls import Excess
from .report_fields import (
    CONTROL_STORED,
    CURVES,
    PER_IMAGE,
    POSITIONS,
    QUANTITIES,
    SOURCE,
    STORED,
    control_names,
    validate_report,
)
from .report_io import fields_from_csv, fields_from_dict, int_tensor, read_json, report_to_dict, write_csv, write_json
from .spurious import position_counts

__all__ = ["InterrelationReport"]


@dataclass
class InterrelationReport:
    """Result of :func:`captum_sift.analyze` (SPEC §3-5).

    Per image (while kept; ``B`` images, ``L`` analysed layers, ``h`` heads,
    ``N`` patches): ``kk``, ``nk``, ``focus`` (B, L, h) and the derived ``kn``,
    ``nn``, ``focus_normalized``; ``patch_theta`` (B, L, N), θ_i averaged over
    heads; ``keypoint_counts`` (B, N); ``query_patch`` (B,) and
    ``query_attention`` (B, L, N), the head-mean attention row of one query
    patch per image (for Fig. 7b).

    Data-set level: float64 ``sums`` and ``counts`` (L, h) of every stored
    quantity over images, NaN left out, so that :meth:`merge` of reports of
    several batches gives exactly the means of one big batch.

    ``curves``: per-image head-mean θ_KK and focus curves ``{"kk", "focus"}``
    (B, L), kept by :meth:`without_per_image` (small) and written by
    :meth:`save_json` so that :func:`~captum_sift.find_stages` can bootstrap
    over the images of a sums-only report; with ``"image"`` (B,) int64, the
    data-set index of each image (set by :meth:`with_image_index`), the
    bootstrap takes the images in that order, so that reports merged or
    gathered over processes in any order give the same confidence.

    ``positions``: per patch position, the number of images where it is a Key
    patch (``"key"``) and where it is flagged spurious (``"spurious"``: a Key
    patch whose score — θ_i averaged over heads and the analysed layers — is
    below :data:`~captum_sift.theta.spurious.SPURIOUS_THRESHOLD`, paper §5.1,
    see :func:`~captum_sift.theta.spurious.position_counts`), each (N,) int64;
    summed by :meth:`merge` and :meth:`all_reduce`.

    Controls (SPEC §9, when the analysis computed them, ``ThetaSettings.controls``):
    ``sums`` and ``counts`` also hold ``"kk_<control>"`` and ``"nk_<control>"``
    (L, h) for each of :attr:`controls`, read by :meth:`mean` like θ_KK, and
    ``curves`` the per-image head-mean curves of θ_NK (``"nk"``) and of each
    control's two classes, from which :meth:`control_excess` bootstraps the
    excess over images and :meth:`control_verdicts` gives the verdict lines.

    An accumulator: :meth:`merge`, :meth:`all_reduce`, :meth:`state_dict`
    and :meth:`load_state_dict` (checkpoints of a long run). The dict, JSON
    and CSV forms are in :mod:`~captum_sift.theta.report_io`, the names of
    the fields and their checks in :mod:`~captum_sift.theta.report_fields`.
    """

    layers: list[int]
    num_heads: int
    grid_size: tuple[int, int]
    settings: dict[str, Any]
    sums: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    num_images: int
    kk: torch.Tensor | None = None
    nk: torch.Tensor | None = None
    focus: torch.Tensor | None = None
    patch_theta: torch.Tensor | None = None
    keypoint_counts: torch.Tensor | None = None
    query_patch: torch.Tensor | None = None
    query_attention: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, torch.Tensor] | None = None
    positions: dict[str, torch.Tensor] | None = None

    # -- construction --------------------------------------------------------
    @classmethod
    def from_per_image(
        cls,
        *,
        layers: list[int],
        grid_size: tuple[int, int],
        settings: dict[str, Any],
        per_image: dict[str, torch.Tensor],
        controls: dict[str, torch.Tensor] | None = None,
    ) -> InterrelationReport:
        """A report of per-image tensors (named as the fields); sums, counts, curves and positions are derived.

        ``controls``: ``{"kk_<control>", "nk_<control>": (B, L, h)}`` of the controls computed.
        """
        kk = per_image["kk"]
        sums, counts = {}, {}
        values_of = {**per_image, **(controls or {})}
        stored = STORED + tuple(n for n in CONTROL_STORED if n in values_of)
        for name in stored:
            values = values_of[name].double().cpu()
            valid = ~torch.isnan(values)  # NaN (no Key or no Non-key patch) is left out, with its count
            sums[name] = torch.where(valid, values, torch.zeros_like(values)).sum(0)
            counts[name] = valid.sum(0)
        scores = torch.nanmean(per_image["patch_theta"].float().cpu(), dim=1)  # (B, N): SPEC §7, all layers
        min_keypoints = int(settings.get("min_keypoints", 1))
        return cls(
            layers=list(layers),
            num_heads=int(kk.shape[2]),
            grid_size=(int(grid_size[0]), int(grid_size[1])),
            settings=dict(settings),
            sums=sums,
            counts=counts,
            num_images=int(kk.shape[0]),
            curves={
                name: torch.nanmean(values_of[name].float(), dim=2).cpu()
                for name in CURVES + ((("nk",) + stored[len(STORED) :]) if controls else ())
            },
            positions=position_counts(scores, per_image["keypoint_counts"].cpu(), min_keypoints),
            **{name: per_image[name].cpu() for name in PER_IMAGE},
        )

    # -- per image -------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def kn(self) -> torch.Tensor | None:
        """θ_KN = 1 − θ_KK per image (B, L, h)."""
        return None if self.kk is None else 1 - self.kk

    @property
    def nn(self) -> torch.Tensor | None:
        """θ_NN = 1 − θ_NK per image (B, L, h)."""
        return None if self.nk is None else 1 - self.nk

    @property
    def focus_normalized(self) -> torch.Tensor | None:
        """Focus index / log N per image (B, L, h)."""
        return None if self.focus is None else self.focus / math.log(self.num_patches)

    @property
    def has_per_image(self) -> bool:
        return self.kk is not None

    @property
    def controls(self) -> tuple[str, ...]:
        """The SPEC §9 controls this report holds, in SPEC order (empty when none was computed)."""
        return control_names(self.sums)

    @property
    def stored_names(self) -> tuple[str, ...]:
        """Every quantity kept as sums and counts: :data:`STORED` and each control's two classes."""
        return STORED + tuple(n for n in CONTROL_STORED if n in self.sums)

    # -- data-set level --------------------------------------------------------
    def mean(self, name: str) -> torch.Tensor:
        """Mean over images, ignoring NaN, per layer x head: (L, h) float64 (SPEC §4); also ``"kk_<control>"``."""
        source = self._source(name)
        value = self.sums[source] / self.counts[source]  # 0 / 0 = NaN: no image contributed
        if name in ("kn", "nn"):
            return 1 - value
        if name == "focus_normalized":
            return value / math.log(self.num_patches)
        return value

    def image_count(self, name: str) -> torch.Tensor:
        """Number of images behind each value of :meth:`mean`: (L, h) int64."""
        return self.counts[self._source(name)].clone()

    def layer_mean(self, name: str) -> torch.Tensor:
        """Mean over heads of :meth:`mean` (the solid line of Fig. 5): (L,) float64, NaN heads left out."""
        return torch.nanmean(self.mean(name), dim=1)

    # -- accumulating ----------------------------------------------------------
    def merge(self, *others: InterrelationReport) -> InterrelationReport:
        """One report of all images: sums, counts and position counts added, per-image data and curves concatenated.

        Per-image tensors are kept only if every report has them; so are the
        curves and the position counts.
        """
        reports = (self, *others)
        for other in others:
            if not isinstance(other, InterrelationReport):
                raise CaptumSiftError(f"expected InterrelationReports to merge, got {type(other).__name__}")
            self._same_setup(other)
        stored = self.stored_names
        merged = replace(
            self,
            sums=_add([r.sums for r in reports], stored),
            counts=_add([r.counts for r in reports], stored),
            num_images=sum(r.num_images for r in reports),
            extra=dict(self.extra),
        )
        keep = all(r.has_per_image for r in reports)
        for name in PER_IMAGE:
            setattr(merged, name, torch.cat([getattr(r, name) for r in reports]) if keep else None)
        with_positions = all(r.positions is not None for r in reports)
        merged.positions = _add([r.positions for r in reports], POSITIONS) if with_positions else None
        merged.curves = _cat_curves([r.curves for r in reports])
        return merged

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Sum the float64 sums, int64 counts and image count over torch.distributed ranks, in place.

        The per-image curves of every rank are gathered, in image-index order
        when they carry one (:meth:`with_image_index`), else in rank order.
        A no-op in one process; every rank must call it (a rank with no image
        passes an empty report of the same layers and heads).
        """
        device = torch.device(device)
        for name in self.stored_names:
            self.sums[name] = all_reduce_sum(self.sums[name], device)
            self.counts[name] = all_reduce_sum(self.counts[name], device)
        self.num_images = int(all_reduce_sum(torch.tensor([self.num_images]), device)[0])
        if self.positions is not None:
            self.positions = {n: all_reduce_sum(v, device) for n, v in self.positions.items()}
        parts = all_gather_objects(self.curves)  # every image's curves, for the stage bootstrap
        if len(parts) > 1:
            self.curves = _cat_curves(parts)
            if self.curves is not None and "image" in self.curves:  # data-set order, whatever the sharding
                order = torch.sort(self.curves["image"], stable=True).indices
                self.curves = {n: v[order] for n, v in self.curves.items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything the report holds as JSON-ready data, for checkpoints; :meth:`load_state_dict` reads it back.

        :meth:`to_dict` without the means (they follow from the sums):
        setup, sums, counts, image count, ``extra``, curves, position counts
        and the per-image data while kept. The float64 sums and the float32
        per-image values and curves come back exactly.
        """
        return report_to_dict(self, means=False)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace every field, in place, by those of a :meth:`state_dict`, checked as :meth:`from_dict` checks."""
        loaded = self.from_dict(state)
        for item in fields(self):
            setattr(self, item.name, getattr(loaded, item.name))

    def with_image_index(self, index: Any) -> InterrelationReport:
        """A copy whose per-image curves carry the data-set index of each image (B,), unique ints >= 0.

        :meth:`merge`, :meth:`all_reduce` and :func:`~captum_sift.find_stages`
        then order the images by it, so that a data set split over batches or
        processes in any order gives the stage confidence of one pass in
        index order.
        """
        if self.curves is None:
            raise CaptumSiftError("expected a report with per-image curves to index, got none")
        values = int_tensor(index, "image index")
        if tuple(values.shape) != (self.num_images,):
            raise CaptumSiftError(f"expected an image index of shape ({self.num_images},), got {tuple(values.shape)}")
        copy = replace(self, extra=dict(self.extra), curves={**self.curves, "image": values})
        copy.validate()
        return copy

    def without_per_image(self) -> InterrelationReport:
        """A copy holding only the data-set sums and counts (small, for big runs), the curves and positions."""
        return replace(self, extra=dict(self.extra), **{name: None for name in PER_IMAGE})

    def control_excess(self, control: str, quantity: str = "kk", *, resamples: int = 2000) -> Excess:
        """Per layer, the excess of θ_KK (``"kk"``) or of the gap θ_KK − θ_NK (``"gap"``) over ``control``:
        mean, 95 % bootstrap interval over images, one-sided sign-flip p-value
        (:func:`~captum_sift.theta.control_theta.control_excess`)."""
        return control_excess(self, control, quantity, resamples=resamples)

    def control_verdicts(self, alpha: float = 0.01, min_excess: float = MIN_EXCESS) -> dict[str, str]:
        """{control: one verdict line} (:func:`~captum_sift.theta.control_theta.control_verdicts`)."""
        return control_verdicts(self, alpha, min_excess)

    def _source(self, name: str) -> str:
        """The stored quantity behind one of :data:`QUANTITIES` or a control's class."""
        if name in CONTROL_STORED and name in self.sums:
            return name
        return _source(name)

    def _same_setup(self, other: InterrelationReport) -> None:
        mine = (self.layers, self.num_heads, self.grid_size, self.settings)
        theirs = (other.layers, other.num_heads, other.grid_size, other.settings)
        if mine != theirs:
            raise CaptumSiftError(
                f"expected reports of the same layers, heads, grid and settings to merge, got {mine} and {theirs}"
            )

    # -- saving and loading (report_io) ---------------------------------------
    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        """JSON-ready dict: setup, sums, counts, per-layer x head means; per-image data if kept."""
        return report_to_dict(self, per_image)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterrelationReport:
        """Inverse of :meth:`to_dict`; anything else (missing keys, wrong shapes or ranges) is refused."""
        report = cls(**fields_from_dict(data))
        report.validate()
        return report

    def validate(self) -> None:
        """Check types, shapes, ranges and consistency of every field (after loading).

        Layers: increasing ints >= 0; heads, images and grid: ints; sums and
        counts (L, h), counts ints in [0, num_images], sums finite and within
        the range of their quantity (θ in [0, 1], focus index in [0, log N],
        times the count); per-image tensors of B = num_images images with the
        shapes of the class docstring, θ in [0, 1] or NaN; curves (B, L);
        position counts (N,) with 0 <= spurious <= key <= num_images.
        """
        validate_report(self)

    def save_json(self, path: str | Path, per_image: bool = True) -> None:
        """Write :meth:`to_dict` as JSON (NaN written as null)."""
        write_json(self, path, per_image)

    @classmethod
    def load_json(cls, path: str | Path) -> InterrelationReport:
        """Read a report written by :meth:`save_json`."""
        return cls.from_dict(read_json(path))

    def save_csv(self, path: str | Path) -> None:
        """One row per layer x head: the means of every quantity, the image counts, and the exact sums.

        The sums (written with full precision), the image count, grid and
        settings make the file loadable by :meth:`load_csv` (without per-image
        data). The per-image curves are not written: a report read back from
        a CSV gets no stage confidence, and :func:`~captum_sift.find_stages`
        says so ("no clear stages"); :meth:`save_json` keeps them.
        """
        write_csv(self, path)

    @classmethod
    def load_csv(cls, path: str | Path) -> InterrelationReport:
        """Read a report written by :meth:`save_csv`: data-set sums and counts, no per-image data."""
        report = cls(**fields_from_csv(path))
        report.validate()
        return report

    def __repr__(self) -> str:
        return (
            f"InterrelationReport(images={self.num_images}, layers={self.layers}, heads={self.num_heads}, "
            f"grid={self.grid_size}, per_image={self.has_per_image}, settings={self.settings})"
        )


def _source(name: str) -> str:
    """The stored quantity behind one of :data:`QUANTITIES`."""
    if name not in QUANTITIES:
        raise CaptumSiftError(f"expected a quantity in {QUANTITIES}, got {name!r}")
    return SOURCE[name]


def _add(parts: list[dict[str, torch.Tensor]], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of several dicts added name by name, in order, into new tensors."""
    return {n: sum((p[n] for p in parts[1:]), parts[0][n].clone()) for n in names}


def _cat_curves(parts: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    """Per-image curves of several reports concatenated; None unless every report has them.

    The image index is kept when every report with images has one.
    """
    if any(p is None for p in parts):
        return None
    names = [n for n in parts[0] if n != "image"]
    curves = {n: torch.cat([p[n] for p in parts]) for n in names}
    if all("image" in p or p["kk"].shape[0] == 0 for p in parts):
        curves["image"] = torch.cat([p.get("image", torch.zeros(0, dtype=torch.long)) for p in parts])
    return curves
