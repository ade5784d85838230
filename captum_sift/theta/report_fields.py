"""What an InterrelationReport holds: its fields' names, and the checks every field of a report passes."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import as_int, check_int, shape_of
from ..errors import CaptumSiftError

__all__ = [
    "CONTROL_STORED",
    "CURVES",
    "PER_IMAGE",
    "POSITIONS",
    "QUANTITIES",
    "SOURCE",
    "STORED",
    "control_names",
    "stored_high",
    "validate_report",
]

#: Quantities kept as float64 sums and int64 counts over images, (L, h) each.
STORED = ("kk", "nk", "focus")
#: Every quantity :meth:`InterrelationReport.mean` knows.
QUANTITIES = ("kk", "kn", "nk", "nn", "focus", "focus_normalized")
#: The stored quantity each of :data:`QUANTITIES` is read off.
SOURCE = {"kk": "kk", "kn": "kk", "nk": "nk", "nn": "nk", "focus": "focus", "focus_normalized": "focus"}
#: Per-image fields, kept until :meth:`InterrelationReport.without_per_image`.
PER_IMAGE = ("kk", "nk", "focus", "patch_theta", "keypoint_counts", "query_patch", "query_attention")
#: Per-image head-mean curves (B, L) of every report (``curves``), beside an optional ``"image"`` index (B,).
CURVES = ("kk", "focus")
#: Per patch position counts (N,) of every report (``positions``).
POSITIONS = ("key", "spurious")
#: θ_KK and θ_NK of each SPEC §9 control (SPEC order), stored like :data:`STORED` and kept as head-mean
#: curves beside the real θ_NK curve ``"nk"`` when the analysis computed the control.
CONTROL_STORED = tuple(f"{q}_{c}" for c in ("uniform", "locality", "shuffled") for q in ("kk", "nk"))


def control_names(names: object) -> tuple[str, ...]:
    """The controls whose θ_KK and θ_NK are both among ``names`` (stored sums or curves), in SPEC order."""
    present = set(names)  # type: ignore[call-overload]
    return tuple(n[3:] for n in CONTROL_STORED[::2] if n in present and f"nk_{n[3:]}" in present)


def stored_high(name: str, num_patches: int) -> float:
    """Largest value of a stored quantity for one image: 1 for θ, log N for the focus index."""
    if name == "focus":
        return math.log(num_patches) if num_patches > 1 else 0.0
    return 1.0


def validate_report(report: Any) -> None:
    """:meth:`InterrelationReport.validate`: setup, sums and counts, per-image data, curves, position counts."""
    _check_setup(report)
    n = report.grid_size[0] * report.grid_size[1]
    stored = report.stored_names
    high = {name: stored_high(name, n) for name in stored}
    if set(report.sums) != set(stored) or set(report.counts) != set(stored):
        raise CaptumSiftError(f"expected sums and counts of {list(stored)}, got {sorted(report.sums)} and "
                              f"{sorted(report.counts)}")  # fmt: skip
    paired = {f"{q}_{c}" for c in report.controls for q in ("kk", "nk")}
    if set(stored[len(STORED) :]) != paired:
        raise CaptumSiftError(f"expected each control's sums of both 'kk_<control>' and 'nk_<control>', got "
                              f"{list(stored[len(STORED) :])}")  # fmt: skip
    for name in stored:
        _check_stored(report, name, high[name])
    _check_per_image(report, high)
    if report.curves is not None:
        _check_curves(report.curves, report.num_images, len(report.layers), high, report.controls)
    if report.positions is not None:
        _check_positions(report.positions, n, report.num_images)


def _check_setup(report: Any) -> None:
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


def _check_stored(report: Any, name: str, high: float) -> None:
    """Sums and counts (L, h) of one stored quantity: counts ints in [0, images], sums in [0, high x count]."""
    layers, heads, images = len(report.layers), report.num_heads, report.num_images
    s, c = report.sums.get(name), report.counts.get(name)
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
    ok = torch.isfinite(s) & (s >= -slack) & (s <= c.double() * high * (1 + 1e-6) + slack)
    if not bool(ok.all()):
        bad = s[~ok][0].item()
        raise CaptumSiftError(
            f"expected finite sums of {name!r} in [0, {high:.4g} x count], got {bad!r} at (layer "
            f"position, head) {tuple(torch.nonzero(~ok)[0].tolist())}"
        )


def _check_per_image(report: Any, high: dict[str, float]) -> None:
    """Every per-image field or none; shapes of B = num_images images, θ in [0, 1] or NaN, counts ints."""
    present = [name for name in PER_IMAGE if getattr(report, name) is not None]
    if not present:
        return
    if len(present) != len(PER_IMAGE):
        missing = [name for name in PER_IMAGE if name not in present]
        raise CaptumSiftError(f"expected every per-image field or none, got {present} without {missing}")
    b, layers, heads = report.num_images, len(report.layers), report.num_heads
    n = report.grid_size[0] * report.grid_size[1]
    shapes = {"kk": (b, layers, heads), "nk": (b, layers, heads), "focus": (b, layers, heads),
              "patch_theta": (b, layers, n), "keypoint_counts": (b, n), "query_patch": (b,),
              "query_attention": (b, layers, n)}  # fmt: skip
    for name, shape in shapes.items():
        value = getattr(report, name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            raise CaptumSiftError(f"expected per-image {name!r} of shape {shape}, got {shape_of(value)}")
    ranges = {"kk": high["kk"], "nk": high["nk"], "focus": high["focus"], "patch_theta": 1.0, "query_attention": 1.0}
    for name, top in ranges.items():
        _check_range(getattr(report, name), f"per-image {name!r}", top)
    for name, top in (("keypoint_counts", None), ("query_patch", n - 1)):
        value = getattr(report, name)
        if value.is_floating_point() or value.dtype == torch.bool or bool((value < 0).any()) or (
            top is not None and bool((value > top).any())
        ):  # fmt: skip
            bound = "ints >= 0" if top is None else f"ints in [0, {top}]"
            raise CaptumSiftError(f"expected per-image {name!r} to be {bound}, got {value.dtype} out of range")


def _check_curves(
    curves: dict[str, torch.Tensor], images: int, layers: int, high: dict[str, float], controls: tuple[str, ...]
) -> None:
    names = (*CURVES, "nk", *(f"{q}_{c}" for c in controls for q in ("kk", "nk"))) if controls else CURVES
    if not isinstance(curves, dict) or set(curves) - {"image"} != set(names):
        raise CaptumSiftError(f"expected curves {list(names)} and optionally 'image', got {sorted(curves)}")
    for name in names:
        got = shape_of(curves[name])
        if got != (images, layers):
            raise CaptumSiftError(f"expected {name!r} curves of shape {(images, layers)}, got {got}")
        _check_range(curves[name], f"{name!r} curves", high.get(name, 1.0))
    if "image" in curves:
        index = curves["image"]
        if shape_of(index) != (images,) or index.is_floating_point() or index.dtype == torch.bool:
            raise CaptumSiftError(f"expected an int image index of shape ({images},), got {shape_of(index)}")
        if bool((index < 0).any()) or torch.unique(index).numel() != images:
            raise CaptumSiftError("expected unique image indices >= 0, got negative or repeated ones")


def _check_positions(positions: dict[str, torch.Tensor], n: int, images: int) -> None:
    key, spurious = positions.get("key"), positions.get("spurious")
    if (
        key is None or spurious is None or tuple(key.shape) != (n,) or tuple(spurious.shape) != (n,)
        or key.is_floating_point() or spurious.is_floating_point()
        or bool((spurious < 0).any()) or bool((spurious > key).any()) or bool((key > images).any())
    ):  # fmt: skip
        raise CaptumSiftError(f"expected position counts (N,) = ({n},) with 0 <= spurious <= key <= images")


def _check_range(value: torch.Tensor, name: str, high: float) -> None:
    """Every value in [0, high] (float rounding allowed) or NaN."""
    value = value.double()
    slack = 1e-5 * max(1.0, high)
    ok = torch.isnan(value) | ((value >= -slack) & (value <= high + slack))
    if not bool(ok.all()):
        raise CaptumSiftError(f"expected {name} in [0, {high:.4g}] or NaN, got {value[~ok][0].item()!r}")
