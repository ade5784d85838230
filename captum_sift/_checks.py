"""Input checks shared by the public functions (private module)."""

from __future__ import annotations

import math
import numbers

import torch

from .errors import CaptumSiftError


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite: one reduction, the elementwise test only when the sum is not finite.

    NaN and Inf make the sum non-finite; a sum of finite values that
    overflows is settled by the exact ``isfinite`` pass (so never a wrong answer).
    The sum is tested as a Python number: two ops, not the ~6 of ``torch.isfinite``.
    """
    return math.isfinite(tensor.sum().item()) or bool(torch.isfinite(tensor).all())


def check_image_space(image_space: object) -> str:
    """What inputs are: ``"model"`` (normalised as the model expects) or ``"pixel"`` (in [0, 1])."""
    if image_space not in ("model", "pixel"):
        raise CaptumSiftError(f"expected image_space 'model' or 'pixel', got {image_space!r}")
    return image_space  # type: ignore[return-value]


def shape_of(value: object) -> object:
    """What to print for a value that should have been a tensor: its shape, else its type name."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def as_scalar(value: object) -> object:
    """numpy scalars and 0-d tensors as the Python number they hold; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        return value.item()
    if isinstance(value, numbers.Number) and type(value).__module__ == "numpy":
        return value.item()  # type: ignore[attr-defined]
    return value


def as_int(value: object) -> int | None:
    """An int (numpy and 0-d tensor ints included), or None when ``value`` is not one (bools are not)."""
    value = as_scalar(value)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _bound_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    def text(bound: float) -> str:  # ints exactly (2**32 - 1, not 4.29497e+09), other numbers short
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {text(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {text(high)}")
    return " and ".join(parts)


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """An int (numpy and 0-d tensor ints included; bools and floats are not) in [low, high].

    Example:
        >>> import numpy as np
        >>> check_int(np.int64(3), "patch_size", low=1)
        3
    """
    number = as_int(value)
    if number is None or (low is not None and number < low) or (high is not None and number > high):
        bound = _bound_text(low, high, False, False)
        raise CaptumSiftError(f"expected {name} to be an int{' ' + bound if bound else ''}, got {value!r}")
    return number


def check_index(value: object, name: str, size: int, of: str) -> int:
    """An index into ``size`` items (blocks, heads), negative counting from the end as in Python, -> [0, size).

    ``of`` names the items in the message, e.g. ``"blocks"``.

    Example:
        >>> check_index(-1, "layer", 12, "blocks")
        11
        >>> check_index(12, "head", 12, "heads")
        Traceback (most recent call last):
        ...
        captum_sift.errors.CaptumSiftError: expected head in [-12, 12) (the model has 12 heads), got 12
    """
    index = as_int(value)
    if index is None or not -size <= index < size:
        raise CaptumSiftError(f"expected {name} in [-{size}, {size}) (the model has {size} {of}), got {value!r}")
    return index % size


def check_number(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (int, float, numpy scalar or 0-d tensor; not a bool or a string) in the given range.

    ``low_open`` / ``high_open`` exclude the bound itself. NaN and Inf are refused, never clipped.

    Example:
        >>> import numpy as np
        >>> check_number(np.float32(0.5), "ratio", 0, 1)
        0.5
    """
    number = as_scalar(value)
    ok = isinstance(number, (int, float)) and not isinstance(number, bool)
    if ok:
        try:
            number = float(number)  # type: ignore[arg-type]
        except OverflowError:  # an int too large for a float
            ok = False
    ok = ok and math.isfinite(number)  # type: ignore[arg-type]
    if ok and low is not None:
        ok = number > low if low_open else number >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = number < high if high_open else number <= high  # type: ignore[operator]
    if not ok:
        bound = _bound_text(low, high, low_open, high_open)
        raise CaptumSiftError(f"expected {name} to be a finite number{' ' + bound if bound else ''}, got {value!r}")
    return number  # type: ignore[return-value]


def check_min_keypoints(min_keypoints: object) -> int:
    """The Key bar: an int >= 1."""
    value = as_int(min_keypoints)
    if value is None or value < 1:
        raise CaptumSiftError(f"expected min_keypoints to be an int >= 1, got {min_keypoints!r}")
    return value


def check_gamma(gamma: object) -> float:
    """The detection-line height of eq. 2: a finite number > 0."""
    value = as_scalar(gamma)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CaptumSiftError(f"expected gamma > 0, got {gamma!r}")
    return float(value)


def check_images(images: object, name: str = "images") -> torch.Tensor:
    """Check a float image batch (B, 1 or 3, H, W) with values in [0, 1].

    NaN and Inf are rejected, never replaced; integer tensors are rejected
    rather than rescaled, so that nothing is silently coerced.
    """
    if not isinstance(images, torch.Tensor):
        raise CaptumSiftError(f"expected {name} to be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise CaptumSiftError(f"expected {name} of shape (B, C, H, W), got {tuple(images.shape)}")
    images = images.detach()  # keypoints need no gradient; Captum inputs often require one
    if images.shape[1] not in (1, 3):
        raise CaptumSiftError(
            f"expected {name} with 1 or 3 channels (B, C, H, W), got C={images.shape[1]} in shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise CaptumSiftError(
            f"expected floating-point {name} in [0, 1], got dtype {images.dtype}; "
            "convert 8-bit images with `images.float() / 255`"
        )
    if images.numel() == 0:
        return images
    # One pass settles the usual case (min and max propagate NaN); a shared CPU
    # makes every parallel pass expensive (a thread that waits for a busy core).
    lo, hi = (float(v) for v in torch.aminmax(images))
    if not (lo >= 0.0 and hi <= 1.0):
        if not all_finite(images):
            n_bad = int((~torch.isfinite(images)).sum())
            raise CaptumSiftError(f"expected finite {name}, got {n_bad} NaN or Inf values")
        hint = " (this looks like a 0..255 image: divide it by 255)" if lo >= 0.0 and 2.0 < hi <= 255.0 else ""
        raise CaptumSiftError(f"expected {name} with values in [0, 1], got values in [{lo:g}, {hi:g}]{hint}")
    return images


def check_patch_size(patch_size: object, height: int, width: int) -> int:
    """Check that ``patch_size`` is a positive int that tiles an H x W image."""
    patch_size = check_int(patch_size, "patch_size", low=1)
    if height % patch_size or width % patch_size:
        raise CaptumSiftError(f"expected H and W to be multiples of patch_size={patch_size}, got H={height}, W={width}")
    return patch_size


def check_classes(values: object, batch: int, name: str, high: int | None = None) -> torch.Tensor:
    """An integer tensor (B,) with values in [0, high) (high None: only >= 0; the model's classes are checked later)."""
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (batch,):
        raise CaptumSiftError(f"expected {name} of shape ({batch},), got {shape_of(values)}")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise CaptumSiftError(f"expected integer {name}, got dtype {values.dtype}")
    if batch and (int(values.min()) < 0 or (high is not None and int(values.max()) >= high)):
        bound = f"in [0, {high})" if high is not None else ">= 0"
        raise CaptumSiftError(f"expected {name} {bound}, got values in [{int(values.min())}, {int(values.max())}]")
    return values


def check_2d(value: object, name: str) -> torch.Tensor:
    """A (B, N) tensor, else an error naming ``name`` and the shape given."""
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        raise CaptumSiftError(f"expected {name} of shape (B, N), got {shape_of(value)}")
    return value


def check_counts(keypoint_counts: object, batch: int, num_patches: int) -> torch.Tensor:
    """Keypoint counts t_j, (B, N) or (B, Gh, Gw), checked -> a (B, N) view in their own dtype.

    Refused: other shapes, complex, bool or meta tensors, NaN, Inf, fractional or negative counts.

    Example:
        >>> check_counts(torch.tensor([[[1, 0], [2, 0]]]), 1, 4)
        tensor([[1, 0, 2, 0]])
    """
    if not isinstance(keypoint_counts, torch.Tensor):
        raise CaptumSiftError(f"expected keypoint_counts to be a torch.Tensor, got {type(keypoint_counts).__name__}")
    counts = keypoint_counts.flatten(1) if keypoint_counts.dim() == 3 else keypoint_counts
    if counts.dim() != 2 or counts.shape != (batch, num_patches):
        raise CaptumSiftError(
            f"expected keypoint_counts of shape (B, N) = ({batch}, {num_patches}) or (B, Gh, Gw) with "
            f"Gh * Gw = {num_patches}, got {tuple(keypoint_counts.shape)}"
        )
    if counts.is_complex() or counts.dtype == torch.bool or counts.is_meta:
        raise CaptumSiftError(
            f"expected real-valued keypoint_counts on a real device, got dtype {counts.dtype} on {counts.device}"
        )
    if counts.is_floating_point():
        if not bool(torch.isfinite(counts).all()):
            raise CaptumSiftError("expected finite keypoint_counts, got NaN or Inf")
        if not bool((counts == counts.round()).all()):
            raise CaptumSiftError("expected integral keypoint_counts, got fractional values")
    if counts.numel() and int(counts.min()) < 0:
        raise CaptumSiftError(f"expected keypoint_counts >= 0, got a minimum of {counts.min().item()}")
    return counts
