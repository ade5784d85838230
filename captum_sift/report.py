"""InterrelationReport: θ classes and focus index per image x layer x head, mergeable."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import CaptumSiftError
from .patches import SPURIOUS_THRESHOLD

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
    (B, L), kept by :meth:`without_per_image` (small) so that
    :func:`~captum_sift.find_stages` can bootstrap over the images of a
    sums-only report.

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
        if all(r.curves is not None for r in reports):
            merged.curves = {n: torch.cat([r.curves[n] for r in reports]) for n in ("kk", "focus")}
        else:
            merged.curves = None
        return merged

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Sum the float64 sums, int64 counts and image count over torch.distributed ranks, in place.

        A no-op in one process; every rank must call it (a rank with no image
        passes an empty report of the same layers and heads).
        """
        from ._dist import all_gather_objects, all_reduce_sum

        device = torch.device(device)
        for name in STORED:
            self.sums[name] = all_reduce_sum(self.sums[name], device)
            self.counts[name] = all_reduce_sum(self.counts[name], device)
        self.num_images = int(all_reduce_sum(torch.tensor([self.num_images]), device)[0])
        if self.positions is not None:
            self.positions = {n: all_reduce_sum(v, device) for n, v in self.positions.items()}
        parts = all_gather_objects(self.curves)  # every image's curves, for the stage bootstrap
        if len(parts) > 1:
            ok = all(p is not None for p in parts)
            self.curves = {n: torch.cat([p[n] for p in parts]) for n in ("kk", "focus")} if ok else None

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
            data["curves"] = {n: nan_to_none(self.curves[n].tolist()) for n in ("kk", "focus")}
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
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            raise CaptumSiftError(f"expected a report written by InterrelationReport.to_dict: {exc!r}") from exc
        report.validate()
        return report

    def validate(self) -> None:
        """Check shapes, ranges and consistency of the sums and counts (after loading)."""
        shape = (len(self.layers), self.num_heads)
        if self.positions is not None:
            key, spurious = self.positions.get("key"), self.positions.get("spurious")
            n = self.grid_size[0] * self.grid_size[1]
            if (
                key is None or spurious is None or tuple(key.shape) != (n,) or tuple(spurious.shape) != (n,)
                or bool((spurious < 0).any()) or bool((spurious > key).any()) or bool((key > self.num_images).any())
            ):  # fmt: skip
                raise CaptumSiftError(f"expected position counts (N,) = ({n},) with 0 <= spurious <= key <= images")
        if self.curves is not None:
            for n in ("kk", "focus"):
                got = tuple(self.curves[n].shape) if n in self.curves else None
                if got != (self.num_images, len(self.layers)):
                    raise CaptumSiftError(
                        f"expected {n!r} curves of shape {(self.num_images, len(self.layers))}, got {got}"
                    )
        if self.num_images < 0 or len(self.grid_size) != 2 or min(self.grid_size) < 1:
            raise CaptumSiftError(
                f"expected num_images >= 0 and a (Gh, Gw) grid, got {self.num_images} and {self.grid_size}"
            )
        for n in STORED:
            s, c = self.sums.get(n), self.counts.get(n)
            if s is None or c is None or tuple(s.shape) != shape or tuple(c.shape) != shape:
                got = (None if s is None else tuple(s.shape), None if c is None else tuple(c.shape))
                raise CaptumSiftError(f"expected sums and counts of {n!r} of shape {shape}, got {got}")
            if bool((c < 0).any()) or bool((c > self.num_images).any()) or not bool(torch.isfinite(s).all()):
                raise CaptumSiftError(
                    f"expected counts of {n!r} in [0, num_images={self.num_images}] and finite sums, got otherwise"
                )

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> InterrelationReport:
        if not isinstance(data, dict):
            raise CaptumSiftError(f"expected a report dict, got {type(data).__name__}")
        per_image = data.get("per_image")
        kwargs: dict[str, Any] = {}
        if per_image is not None:
            for name in _PER_IMAGE:
                dtype = torch.long if name in ("keypoint_counts", "query_patch") else torch.float32
                kwargs[name] = torch.tensor(_none_to_nan(per_image[name]), dtype=dtype)
        return cls(
            layers=list(data["layers"]),
            num_heads=int(data["num_heads"]),
            grid_size=tuple(data["grid_size"]),
            settings=dict(data["settings"]),
            sums={n: torch.tensor(data["sums"][n], dtype=torch.float64) for n in STORED},
            counts={n: torch.tensor(data["counts"][n], dtype=torch.long) for n in STORED},
            num_images=int(data["num_images"]),
            extra=dict(data.get("extra", {})),
            positions=(
                {n: torch.tensor(data["positions"][n], dtype=torch.long) for n in ("key", "spurious")}
                if data.get("positions") is not None
                else None
            ),  # fmt: skip
            curves=(
                {
                    n: torch.tensor(_none_to_nan(data["curves"][n]), dtype=torch.float32).view(-1, len(data["layers"]))
                    for n in ("kk", "focus")
                }
                if data.get("curves") is not None
                else None
            ),  # fmt: skip
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
        return cls.from_dict(data)

    def save_csv(self, path: str | Path) -> None:
        """One row per layer x head: the means of every quantity, the image counts, and the exact sums.

        The sums (written with full precision), the image count, grid and
        settings make the file loadable by :meth:`load_csv` (without per-image data).
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
        except (KeyError, TypeError, ValueError, IndexError, json.JSONDecodeError) as exc:
            raise CaptumSiftError(f"expected a CSV written by InterrelationReport.save_csv, got {path}: {exc}") from exc
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
