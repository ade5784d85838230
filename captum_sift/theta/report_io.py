"""An InterrelationReport as data: its dict, JSON and CSV forms, written and read back.

The functions take any object with the fields of
:class:`~captum_sift.theta.report.InterrelationReport`; the class's own
methods (``to_dict``, ``from_dict``, ``save_json``, ``load_csv``, ...) call
them. What is read back is checked by
:func:`~captum_sift.theta.report_fields.validate_report` (the class does so).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch

from .._checks import check_int
from ..errors import CaptumSiftError
from .report_fields import CONTROL_STORED, CURVES, PER_IMAGE, POSITIONS, QUANTITIES, STORED

__all__ = ["nan_to_none"]

_INT_PER_IMAGE = ("keypoint_counts", "query_patch")


# -- writing -------------------------------------------------------------------------
def report_to_dict(report: Any, per_image: bool = True, *, means: bool = True) -> dict[str, Any]:
    """:meth:`InterrelationReport.to_dict`; ``means=False`` leaves out the means (derived from the sums)."""
    data: dict[str, Any] = {
        "layers": list(report.layers),
        "num_heads": report.num_heads,
        "grid_size": list(report.grid_size),
        "settings": dict(report.settings),
        "num_images": report.num_images,
        "sums": {n: report.sums[n].tolist() for n in report.stored_names},
        "counts": {n: report.counts[n].tolist() for n in report.stored_names},
    }
    if means:
        names = QUANTITIES + report.stored_names[len(STORED) :]
        data["means"] = {n: nan_to_none(report.mean(n).tolist()) for n in names}
    data["extra"] = dict(report.extra)
    if report.curves is not None:
        data["curves"] = {n: nan_to_none(v.tolist()) for n, v in report.curves.items()}
    if report.positions is not None:
        data["positions"] = {n: report.positions[n].tolist() for n in POSITIONS}
    if per_image and report.has_per_image:
        data["per_image"] = {n: nan_to_none(getattr(report, n).tolist()) for n in PER_IMAGE}
    return data


def write_json(report: Any, path: str | Path, per_image: bool = True) -> None:
    """:meth:`InterrelationReport.save_json`."""
    Path(path).write_text(json.dumps(report_to_dict(report, per_image=per_image)))


def write_csv(report: Any, path: str | Path) -> None:
    """:meth:`InterrelationReport.save_csv`: one row per layer x head; with controls, each control's θ_KK,
    θ_NK and the excess of θ_KK and of the gap θ_KK − θ_NK over it too. Per head the excess is the difference
    of the two means, each over the images where it is defined (only sums are kept per head); the paired
    per-layer excess with its interval is :meth:`InterrelationReport.control_excess` (report.json); the two agree
    where every image has a value in both, and differ where NaN sets differ (γ > 1, images without Key patches)."""
    stored, controls = report.stored_names, report.controls
    excess = tuple(f"excess_{q}_{c}" for c in controls for q in ("kk", "gap"))
    columns = QUANTITIES + stored[len(STORED) :] + excess
    means = {n: report.mean(n) for n in QUANTITIES + stored[len(STORED) :]}
    for c in controls:
        means[f"excess_kk_{c}"] = means["kk"] - means[f"kk_{c}"]
        means[f"excess_gap_{c}"] = means["kk"] - means["nk"] - means[f"kk_{c}"] + means[f"nk_{c}"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", *columns, *(f"images_{n}" for n in stored),
                         *(f"sum_{n}" for n in stored), "num_images", "grid_h", "grid_w", "settings"])  # fmt: skip
        settings = json.dumps(report.settings, sort_keys=True)
        for li, layer in enumerate(report.layers):
            for head in range(report.num_heads):
                row = [layer, head, *(f"{float(means[n][li, head]):.6g}" for n in columns)]
                row += [int(report.counts[n][li, head]) for n in stored]
                row += [repr(float(report.sums[n][li, head])) for n in stored]
                row += [report.num_images, *report.grid_size, settings]
                writer.writerow(row)


# -- reading -------------------------------------------------------------------------
def fields_from_dict(data: Any) -> dict[str, Any]:
    """The report fields of a :meth:`InterrelationReport.to_dict` dict, as tensors; malformed data refused."""
    try:
        return _fields_from_dict(data)
    except CaptumSiftError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as exc:
        raise CaptumSiftError(f"expected a report written by InterrelationReport.to_dict: {exc!r}") from exc
    except RecursionError as exc:
        raise CaptumSiftError("expected a report written by InterrelationReport.to_dict: nested too deeply") from exc


def read_json(path: str | Path) -> Any:
    """The data of a JSON file; unreadable files refused with the reason."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptumSiftError(f"cannot read a report from {path}: {exc}") from exc
    except RecursionError as exc:
        raise CaptumSiftError(f"cannot read a report from {path}: JSON nested too deeply") from exc


def fields_from_csv(path: str | Path) -> dict[str, Any]:
    """The report fields of a file written by :meth:`InterrelationReport.save_csv` (sums and counts only)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CaptumSiftError(f"cannot read a report from {path}: {exc}") from exc
    if not rows or "sum_kk" not in rows[0]:
        raise CaptumSiftError(f"expected a CSV written by InterrelationReport.save_csv, got {path}")
    try:
        return _fields_from_csv_rows(rows)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError, json.JSONDecodeError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise CaptumSiftError(f"expected a CSV written by InterrelationReport.save_csv, got {path}: {reason}") from exc


def _fields_from_dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CaptumSiftError(f"expected a report dict, got {type(data).__name__}")
    fields: dict[str, Any] = {}
    per_image = data.get("per_image")
    if per_image is not None:
        if not isinstance(per_image, dict):
            raise CaptumSiftError(f"expected 'per_image' to be a dict, got {type(per_image).__name__}")
        for name in PER_IMAGE:
            label = f"per-image {name!r}"
            is_int = name in _INT_PER_IMAGE
            fields[name] = int_tensor(per_image[name], label) if is_int else float_tensor(per_image[name], label)
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
        if not isinstance(curves, dict) or not set(CURVES) <= set(curves) <= {*CURVES, "image", "nk", *CONTROL_STORED}:
            raise CaptumSiftError(
                "expected 'curves' to be a dict of 'kk', 'focus', optionally 'image' and the controls' curves"
            )
        curves = {n: float_tensor(v, f"{n!r} curves") for n, v in curves.items() if n != "image"} | (
            {"image": int_tensor(curves["image"], "curves' image index")} if "image" in curves else {}
        )  # fmt: skip
    positions = data.get("positions")
    if positions is not None:
        if not isinstance(positions, dict):
            raise CaptumSiftError(f"expected 'positions' to be a dict, got {type(positions).__name__}")
        positions = {n: int_tensor(positions[n], f"{n!r} positions") for n in POSITIONS}
    stored = STORED + tuple(n for n in CONTROL_STORED if n in data["sums"])
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise CaptumSiftError(f"expected 'extra' to be a dict, got {type(extra).__name__}")
    return fields | {
        "layers": [check_int(layer, "each of 'layers'", low=0) for layer in layers],
        "num_heads": check_int(data["num_heads"], "num_heads", low=1),
        "grid_size": (check_int(grid[0], "grid_size[0]", low=1), check_int(grid[1], "grid_size[1]", low=1)),
        "settings": dict(data["settings"]),
        "sums": {n: float_tensor(data["sums"][n], f"sums of {n!r}", torch.float64) for n in stored},
        "counts": {n: int_tensor(data["counts"][n], f"counts of {n!r}") for n in stored},
        "num_images": check_int(data["num_images"], "num_images", low=0),
        "extra": dict(extra),
        "positions": positions,
        "curves": curves,
    }


def _fields_from_csv_rows(rows: list[dict[str, str]]) -> dict[str, Any]:
    layers = sorted({int(r["layer"]) for r in rows})
    heads = max(int(r["head"]) for r in rows) + 1
    stored = STORED + tuple(n for n in CONTROL_STORED if f"sum_{n}" in rows[0])
    sums = {n: torch.zeros(len(layers), heads, dtype=torch.float64) for n in stored}
    counts = {n: torch.zeros(len(layers), heads, dtype=torch.long) for n in stored}
    for r in rows:
        li, head = layers.index(int(r["layer"])), int(r["head"])
        for n in stored:
            sums[n][li, head] = float(r[f"sum_{n}"])
            counts[n][li, head] = int(r[f"images_{n}"])
    first = rows[0]
    return {
        "layers": layers, "num_heads": heads, "grid_size": (int(first["grid_h"]), int(first["grid_w"])),
        "settings": json.loads(first["settings"]), "sums": sums, "counts": counts,
        "num_images": int(first["num_images"]),
    }  # fmt: skip


# -- conversions ---------------------------------------------------------------------
def float_tensor(value: Any, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
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


def int_tensor(value: Any, name: str) -> torch.Tensor:
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
