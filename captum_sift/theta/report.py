"""InterrelationReport: θ classes and focus index per image x layer x head, mergeable."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .._checks import as_int, check_int, shape_of
from ..errors import CaptumSiftError
from .spurious import SPURIOUS_THRESHOLD

__all__ = ["InterrelationReport"]

#: Quantities kept as sums and counts (θ_KN = 1 − θ_KK and θ_NN = 1 − θ_NK are derived).
STORED = ("kk", "nk", "focus")
#: Every quantity :meth:`InterrelationReport.mean` knows.
QUANTITIES = ("kk", "kn", "nk", "nn", "focus", "focus_normalized")
_PER_IMAGE = ("kk", "nk", "focus", "patch_theta", "keypoint_counts", "query_patch", "query_attention")


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
    below :data:`SPURIOUS_THRESHOLD`, paper §5.1), each (N,) int64; summed by
    :meth:`merge` and :meth:`all_reduce`.
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
    ) -> InterrelationReport:
        """Build a report from per-image tensors; sums and counts are derived."""
        kk = per_image["kk"]
        sums, counts = {}, {}
        for name in STORED:
            values = per_image[name].double().cpu()
            valid = ~torch.isnan(values)
            sums[name] = torch.where(valid, values, torch.zeros_like(values)).sum(0)
            counts[name] = valid.sum(0)
        return cls(
            layers=list(layers),
            num_heads=int(kk.shape[2]),
            grid_size=(int(grid_size[0]), int(grid_size[1])),
            settings=dict(settings),
            sums=sums,
            counts=counts,
            num_images=int(kk.shape[0]),
            curves={
                "kk": torch.nanmean(kk.float(), dim=2).cpu(),
                "focus": torch.nanmean(per_image["focus"].float(), dim=2).cpu(),
            },
            positions=_positions(per_image, int(settings.get("min_keypoints", 1))),
            **{name: per_image[name].cpu() for name in _PER_IMAGE},
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

    # -- data-set level --------------------------------------------------------
    def _check_name(self, name: str) -> None:
        if name not in QUANTITIES:
            raise CaptumSiftError(f"expected a quantity in {QUANTITIES}, got {name!r}")

    def mean(self, name: str) -> torch.Tensor:
        """Mean over images, ignoring NaN, per layer x head: (L, h) float64 (SPEC §4)."""
        self._check_name(name)
        base = {"kn": "kk", "nn": "nk", "focus_normalized": "focus"}.get(name, name)
        value = self.sums[base] / self.counts[base]  # 0 / 0 = NaN: no image contributed
        if name in ("kn", "nn"):
            return 1 - value
        if name == "focus_normalized":
            return value / math.log(self.num_patches)
        return value

    def image_count(self, name: str) -> torch.Tensor:
        """Number of images behind each value of :meth:`mean`: (L, h) int64."""
        self._check_name(name)
        return self.counts[{"kn": "kk", "nn": "nk", "focus_normalized": "focus"}.get(name, name)].clone()

    def layer_mean(self, name: str) -> torch.Tensor:
        """Mean over heads of :meth:`mean` (the solid line of Fig. 5): (L,) float64, NaN heads left out."""
        return torch.nanmean(self.mean(name), dim=1)

    # -- merging ---------------------------------------------------------------
    def _same_setup(self, other: InterrelationReport) -> None:
        mine = (self.layers, self.num_heads, self.grid_size, self.settings)
        theirs = (other.layers, other.num_heads, other.grid_size, other.settings)
        if mine != theirs:
            raise CaptumSiftError(
                f"expected reports of the same layers, heads, grid and settings to merge, got {mine} and {theirs}"
            )

    def merge(self, *others: InterrelationReport) -> InterrelationReport:
        """One report of all images: sums and counts added, per-image data concatenated.

        Per-image tensors are kept only if every report has them.
        """
        reports = (self, *others)
        for other in others:
            if not isinstance(other, InterrelationReport):
                raise CaptumSiftError(f"expected InterrelationReports to merge, got {type(other).__name__}")
            self._same_setup(other)
        sums = {n: sum((r.sums[n] for r in reports[1:]), reports[0].sums[n].clone()) for n in STORED}
        counts = {n: sum((r.counts[n] for r in reports[1:]), reports[0].counts[n].clone()) for n in STORED}
        merged = replace(
            self,
            sums=sums,
            counts=counts,
            num_images=sum(r.num_images for r in reports),
            extra=dict(self.extra),
        )
        keep = all(r.has_per_image for r in reports)
        for name in _PER_IMAGE:
            setattr(merged, name, torch.cat([getattr(r, name) for r in reports]) if keep else None)
        if all(r.positions is not None for r in reports):
            merged.positions = {n: sum((r.positions[n] for r in reports[1:]), reports[0].positions[n].clone())
                                for n in ("key", "spurious")}  # fmt: skip
        else:
            merged.positions = None
        merged.curves = _cat_curves([r.curves for r in reports])
        return merged

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Sum the float64 sums, int64 counts and image count over torch.distributed ranks, in place.

        The per-image curves of every rank are gathered, in image-index order
        when they carry one (:meth:`with_image_index`), else in rank order.
        A no-op in one process; every rank must call it (a rank with no image
        passes an empty report of the same layers and heads).
        """
        from .._dist import all_gather_objects, all_reduce_sum

        device = torch.device(device)
        for name in STORED:
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

    def with_image_index(self, index: Any) -> InterrelationReport:
        """A copy whose per-image curves carry the data-set index of each image (B,), unique ints >= 0.

        :meth:`merge`, :meth:`all_reduce` and :func:`~captum_sift.find_stages`
        then order the images by it, so that a data set split over batches or
        processes in any order gives the stage confidence of one pass in
        index order.
        """
        if self.curves is None:
            raise CaptumSiftError("expected a report with per-image curves to index, got none")
        values = _int_tensor(index, "image index")
        if tuple(values.shape) != (self.num_images,):
            raise CaptumSiftError(f"expected an image index of shape ({self.num_images},), got {tuple(values.shape)}")
        copy = replace(self, extra=dict(self.extra), curves={**self.curves, "image": values})
        copy.validate()
        return copy

    def without_per_image(self) -> InterrelationReport:
        """A copy holding only the data-set sums and counts (small, for big runs)."""
        return replace(self, extra=dict(self.extra), **{name: None for name in _PER_IMAGE})

    # -- saving ----------------------------------------------------------------
    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        """JSON-ready dict: setup, sums, counts, per-layer x head means; per-image data if kept."""
        data: dict[str, Any] = {
            "layers": self.layers,
            "num_heads": self.num_heads,
            "grid_size": list(self.grid_size),
            "settings": self.settings,
            "num_images": self.num_images,
            "sums": {n: self.sums[n].tolist() for n in STORED},
            "counts": {n: self.counts[n].tolist() for n in STORED},
            "means": {n: nan_to_none(self.mean(n).tolist()) for n in QUANTITIES},
            "extra": self.extra,
        }
        if self.curves is not None:
            data["curves"] = {n: nan_to_none(v.tolist()) for n, v in self.curves.items()}
        if self.positions is not None:
            data["positions"] = {n: self.positions[n].tolist() for n in ("key", "spurious")}
        if per_image and self.has_per_image:
            data["per_image"] = {n: nan_to_none(getattr(self, n).tolist()) for n in _PER_IMAGE}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterrelationReport:
        """Inverse of :meth:`to_dict`; anything else (missing keys, wrong shapes or ranges) is refused."""
        try:
            report = cls._from_dict(data)
        except CaptumSiftError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as exc:
            raise CaptumSiftError(f"expected a report written by InterrelationReport.to_dict: {exc!r}") from exc
        except RecursionError as exc:
            raise CaptumSiftError(
                "expected a report written by InterrelationReport.to_dict: nested too deeply"
            ) from exc
        report.validate()
        return report

    def validate(self) -> None:
        """Check types, shapes, ranges and consistency of every field (after loading).

        Layers: increasing ints >= 0; heads, images and grid: ints; sums and
        counts (L, h), counts ints in [0, num_images], sums finite and within
        the range of their quantity (θ in [0, 1], focus index in [0, log N],
        times the count); per-image tensors of B = num_images images with the
        shapes of the class docstring, θ in [0, 1] or NaN; curves (B, L).
        """
        _check_setup(self)
        layers, heads, images, n = len(self.layers), self.num_heads, self.num_images, self.num_patches
        high = {"kk": 1.0, "nk": 1.0, "focus": math.log(n) if n > 1 else 0.0}
        for name in STORED:
            s, c = self.sums.get(name), self.counts.get(name)
            if not isinstance(s, torch.Tensor) or not isinstance(c, torch.Tensor):
                raise CaptumSiftError(f"expected sums and counts of {name!r} as tensors, got {type(s).__name__}, "
                                      f"{type(c).__name__}")  # fmt: skip
            if tuple(s.shape) != (layers, heads) or tuple(c.shape) != (layers, heads):
                raise CaptumSiftError(
                    f"expected sums and counts of {name!r} of shape {(layers, heads)}, got {tuple(s.shape)} and "
                    f"{tuple(c.shape)}"
                )
            if c.is_floating_point() or c.dtype == torch.bool or bool((c < 0).any()) or bool((c > images).any()):
                raise CaptumSiftError(
                    f"expected counts of {name!r} to be ints in [0, num_images={images}], got {c.dtype} in "
                    f"[{c.min().item() if c.numel() else None}, {c.max().item() if c.numel() else None}]"
                )
            slack = 1e-6 * c.double() + 1e-9  # float rounding of a sum of c values
            ok = torch.isfinite(s) & (s >= -slack) & (s <= c.double() * high[name] * (1 + 1e-6) + slack)
            if not bool(ok.all()):
                bad = s[~ok][0].item()
                raise CaptumSiftError(
                    f"expected finite sums of {name!r} in [0, {high[name]:.4g} x count], got {bad!r} at (layer "
                    f"position, head) {tuple(torch.nonzero(~ok)[0].tolist())}"
                )
        self._validate_per_image(high)
        if self.curves is not None:
            _validate_curves(self.curves, images, layers, high)
        if self.positions is not None:
            key, spurious = self.positions.get("key"), self.positions.get("spurious")
            if (
                key is None or spurious is None or tuple(key.shape) != (n,) or tuple(spurious.shape) != (n,)
                or key.is_floating_point() or spurious.is_floating_point()
                or bool((spurious < 0).any()) or bool((spurious > key).any()) or bool((key > images).any())
            ):  # fmt: skip
                raise CaptumSiftError(f"expected position counts (N,) = ({n},) with 0 <= spurious <= key <= images")

    def _validate_per_image(self, high: dict[str, float]) -> None:
        present = [name for name in _PER_IMAGE if getattr(self, name) is not None]
        if not present:
            return
        if len(present) != len(_PER_IMAGE):
            missing = [name for name in _PER_IMAGE if name not in present]
            raise CaptumSiftError(f"expected every per-image field or none, got {present} without {missing}")
        b, layers, heads, n = self.num_images, len(self.layers), self.num_heads, self.num_patches
        shapes = {"kk": (b, layers, heads), "nk": (b, layers, heads), "focus": (b, layers, heads),
                  "patch_theta": (b, layers, n), "keypoint_counts": (b, n), "query_patch": (b,),
                  "query_attention": (b, layers, n)}  # fmt: skip
        for name, shape in shapes.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                raise CaptumSiftError(f"expected per-image {name!r} of shape {shape}, got {shape_of(value)}")
        ranges = {"kk": high["kk"], "nk": high["nk"], "focus": high["focus"], "patch_theta": 1.0,
                  "query_attention": 1.0}  # fmt: skip
        for name, top in ranges.items():
            _check_range(getattr(self, name), f"per-image {name!r}", top)
        for name, top in (("keypoint_counts", None), ("query_patch", n - 1)):
            value = getattr(self, name)
            if value.is_floating_point() or value.dtype == torch.bool or bool((value < 0).any()) or (
                top is not None and bool((value > top).any())
            ):  # fmt: skip
                bound = "ints >= 0" if top is None else f"ints in [0, {top}]"
                raise CaptumSiftError(f"expected per-image {name!r} to be {bound}, got {value.dtype} out of range")

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> InterrelationReport:
        if not isinstance(data, dict):
            raise CaptumSiftError(f"expected a report dict, got {type(data).__name__}")
        per_image = data.get("per_image")
        kwargs: dict[str, Any] = {}
        if per_image is not None:
            if not isinstance(per_image, dict):
                raise CaptumSiftError(f"expected 'per_image' to be a dict, got {type(per_image).__name__}")
            for name in _PER_IMAGE:
                if name in ("keypoint_counts", "query_patch"):
                    kwargs[name] = _int_tensor(per_image[name], f"per-image {name!r}")
                else:
                    kwargs[name] = _float_tensor(per_image[name], f"per-image {name!r}", torch.float32)
        for key in ("settings", "sums", "counts"):
            if not isinstance(data[key], dict):
                raise CaptumSiftError(f"expected {key!r} to be a dict, got {type(data[key]).__name__}")
        layers = data["layers"]
        if not isinstance(layers, list):
            raise CaptumSiftError(f"expected 'layers' to be a list of ints, got {type(layers).__name__}")
        grid = data["grid_size"]
        if not isinstance(grid, list) or len(grid) != 2:
            raise CaptumSiftError(f"expected 'grid_size' [Gh, Gw], got {grid!r}")
        curves = data.get("curves")
        if curves is not None:
            if not isinstance(curves, dict) or not {"kk", "focus"} <= set(curves) <= {"kk", "focus", "image"}:
                raise CaptumSiftError("expected 'curves' to be a dict of 'kk', 'focus' and optionally 'image'")
            curves = {n: _float_tensor(curves[n], f"{n!r} curves", torch.float32) for n in ("kk", "focus")} | (
                {"image": _int_tensor(curves["image"], "curves' image index")} if "image" in curves else {}
            )  # fmt: skip
        positions = data.get("positions")
        if positions is not None:
            if not isinstance(positions, dict):
                raise CaptumSiftError(f"expected 'positions' to be a dict, got {type(positions).__name__}")
            positions = {n: _int_tensor(positions[n], f"{n!r} positions") for n in ("key", "spurious")}
        extra = data.get("extra", {})
        if not isinstance(extra, dict):
            raise CaptumSiftError(f"expected 'extra' to be a dict, got {type(extra).__name__}")
        return cls(
            layers=[check_int(layer, "each of 'layers'", low=0) for layer in layers],
            num_heads=check_int(data["num_heads"], "num_heads", low=1),
            grid_size=(check_int(grid[0], "grid_size[0]", low=1), check_int(grid[1], "grid_size[1]", low=1)),
            settings=dict(data["settings"]),
            sums={n: _float_tensor(data["sums"][n], f"sums of {n!r}", torch.float64) for n in STORED},
            counts={n: _int_tensor(data["counts"][n], f"counts of {n!r}") for n in STORED},
            num_images=check_int(data["num_images"], "num_images", low=0),
            extra=dict(extra),
            positions=positions,
            curves=curves,
            **kwargs,
        )

    def save_json(self, path: str | Path, per_image: bool = True) -> None:
        """Write :meth:`to_dict` as JSON (NaN written as null)."""
        Path(path).write_text(json.dumps(self.to_dict(per_image=per_image)))

    @classmethod
    def load_json(cls, path: str | Path) -> InterrelationReport:
        """Read a report written by :meth:`save_json`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CaptumSiftError(f"cannot read a report from {path}: {exc}") from exc
        except RecursionError as exc:
            raise CaptumSiftError(f"cannot read a report from {path}: JSON nested too deeply") from exc
        return cls.from_dict(data)

    def save_csv(self, path: str | Path) -> None:
        """One row per layer x head: the means of every quantity, the image counts, and the exact sums.

        The sums (written with full precision), the image count, grid and
        settings make the file loadable by :meth:`load_csv` (without per-image
        data). The per-image curves are not written: a report read back from
        a CSV gets no stage confidence, and :func:`~captum_sift.find_stages`
        says so ("no clear stages"); :meth:`save_json` keeps them.
        """
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layer", "head", *QUANTITIES, *(f"images_{n}" for n in STORED),
                             *(f"sum_{n}" for n in STORED), "num_images", "grid_h", "grid_w", "settings"])  # fmt: skip
            means = {n: self.mean(n) for n in QUANTITIES}
            settings = json.dumps(self.settings, sort_keys=True)
            for li, layer in enumerate(self.layers):
                for head in range(self.num_heads):
                    row = [layer, head, *(f"{float(means[n][li, head]):.6g}" for n in QUANTITIES)]
                    row += [int(self.counts[n][li, head]) for n in STORED]
                    row += [repr(float(self.sums[n][li, head])) for n in STORED]
                    row += [self.num_images, *self.grid_size, settings]
                    writer.writerow(row)

    @classmethod
    def load_csv(cls, path: str | Path) -> InterrelationReport:
        """Read a report written by :meth:`save_csv`: data-set sums and counts, no per-image data."""
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise CaptumSiftError(f"cannot read a report from {path}: {exc}") from exc
        if not rows or "sum_kk" not in rows[0]:
            raise CaptumSiftError(f"expected a CSV written by InterrelationReport.save_csv, got {path}")
        try:
            report = cls._from_csv_rows(rows)
        except (
            KeyError,
            TypeError,
            ValueError,
            IndexError,
            OverflowError,
            RecursionError,
            json.JSONDecodeError,
        ) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise CaptumSiftError(
                f"expected a CSV written by InterrelationReport.save_csv, got {path}: {reason}"
            ) from exc
        report.validate()
        return report

    @classmethod
    def _from_csv_rows(cls, rows: list[dict[str, str]]) -> InterrelationReport:
        layers = sorted({int(r["layer"]) for r in rows})
        heads = max(int(r["head"]) for r in rows) + 1
        sums = {n: torch.zeros(len(layers), heads, dtype=torch.float64) for n in STORED}
        counts = {n: torch.zeros(len(layers), heads, dtype=torch.long) for n in STORED}
        for r in rows:
            li, head = layers.index(int(r["layer"])), int(r["head"])
            for n in STORED:
                sums[n][li, head] = float(r[f"sum_{n}"])
                counts[n][li, head] = int(r[f"images_{n}"])
        first = rows[0]
        return cls(
            layers=layers, num_heads=heads, grid_size=(int(first["grid_h"]), int(first["grid_w"])),
            settings=json.loads(first["settings"]), sums=sums, counts=counts, num_images=int(first["num_images"]),
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"InterrelationReport(images={self.num_images}, layers={self.layers}, heads={self.num_heads}, "
            f"grid={self.grid_size}, per_image={self.has_per_image}, settings={self.settings})"
        )


def _cat_curves(parts: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    """Per-image curves of several reports concatenated; None unless every report has them.

    The image index is kept when every report with images has one.
    """
    if any(p is None for p in parts):
        return None
    curves = {n: torch.cat([p[n] for p in parts]) for n in ("kk", "focus")}
    if all("image" in p or p["kk"].shape[0] == 0 for p in parts):
        curves["image"] = torch.cat([p.get("image", torch.zeros(0, dtype=torch.long)) for p in parts])
    return curves


def _check_setup(report: InterrelationReport) -> None:
    """Layers, heads, image count, grid and settings of a report."""
    layers = report.layers
    if (
        not isinstance(layers, list) or not layers or any(as_int(x) is None or as_int(x) < 0 for x in layers)
        or any(b <= a for a, b in zip(layers[:-1], layers[1:], strict=True))
    ):  # fmt: skip
        raise CaptumSiftError(f"expected layers to be increasing ints >= 0, got {layers!r}")
    check_int(report.num_heads, "num_heads", low=1)
    check_int(report.num_images, "num_images", low=0)
    grid = report.grid_size
    if not isinstance(grid, tuple) or len(grid) != 2:
        raise CaptumSiftError(f"expected grid_size (Gh, Gw), got {grid!r}")
    check_int(grid[0], "grid_size[0]", low=1)
    check_int(grid[1], "grid_size[1]", low=1)
    if not isinstance(report.settings, dict):
        raise CaptumSiftError(f"expected settings to be a dict, got {type(report.settings).__name__}")


def _check_range(value: torch.Tensor, name: str, high: float) -> None:
    """Every value in [0, high] (float rounding allowed) or NaN."""
    value = value.double()
    slack = 1e-5 * max(1.0, high)
    ok = torch.isnan(value) | ((value >= -slack) & (value <= high + slack))
    if not bool(ok.all()):
        raise CaptumSiftError(f"expected {name} in [0, {high:.4g}] or NaN, got {value[~ok][0].item()!r}")


def _validate_curves(curves: dict[str, torch.Tensor], images: int, layers: int, high: dict[str, float]) -> None:
    if not isinstance(curves, dict) or not {"kk", "focus"} <= set(curves) <= {"kk", "focus", "image"}:
        raise CaptumSiftError("expected curves {'kk', 'focus'} and optionally 'image'")
    for name in ("kk", "focus"):
        got = shape_of(curves[name])
        if got != (images, layers):
            raise CaptumSiftError(f"expected {name!r} curves of shape {(images, layers)}, got {got}")
        _check_range(curves[name], f"{name!r} curves", high[name])
    if "image" in curves:
        index = curves["image"]
        if shape_of(index) != (images,) or index.is_floating_point() or index.dtype == torch.bool:
            raise CaptumSiftError(f"expected an int image index of shape ({images},), got {shape_of(index)}")
        if bool((index < 0).any()) or torch.unique(index).numel() != images:
            raise CaptumSiftError("expected unique image indices >= 0, got negative or repeated ones")


def _float_tensor(value: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A float tensor of nested lists of numbers (null = NaN); anything else named in the error."""
    try:
        tensor = torch.tensor(_none_to_nan(value), dtype=dtype)
    except RecursionError as exc:
        raise CaptumSiftError(f"expected {name} to be nested lists of numbers, got lists nested too deeply") from exc
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CaptumSiftError(f"expected {name} to be nested lists of numbers, got otherwise ({exc})") from exc
    if tensor.dtype != dtype:
        raise CaptumSiftError(f"expected {name} to be numbers, got {tensor.dtype}")
    return tensor


def _int_tensor(value: Any, name: str) -> torch.Tensor:
    """An int64 tensor of nested lists of ints (or an int tensor); floats and bools are refused, not truncated."""
    try:
        tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    except RecursionError as exc:
        raise CaptumSiftError(f"expected {name} to be nested lists of ints, got lists nested too deeply") from exc
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CaptumSiftError(f"expected {name} to be nested lists of ints, got otherwise ({exc})") from exc
    if tensor.numel() == 0:
        return tensor.long()
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise CaptumSiftError(f"expected {name} to be ints, got {tensor.dtype}")
    return tensor.long()


def _positions(per_image: dict[str, torch.Tensor], min_keypoints: int) -> dict[str, torch.Tensor]:
    """Key and spurious counts per patch position over the images of a batch."""
    key = per_image["keypoint_counts"].cpu() >= min_keypoints
    score = torch.nanmean(per_image["patch_theta"].float().cpu(), dim=1)  # (B, N): mean over layers
    # spurious_patches' rule, except that a NaN θ (gamma > 1) is counted as not spurious instead of refused
    spurious = key & (score < SPURIOUS_THRESHOLD)
    return {"key": key.long().sum(0), "spurious": spurious.long().sum(0)}


def nan_to_none(value: Any) -> Any:
    """JSON-ready copy of nested lists and dicts: NaN becomes null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _none_to_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return float("nan") if value is None else value
