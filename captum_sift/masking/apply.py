"""Masks "as prompts" (SPEC §7): which patches to mask, and the fills that mask them.

The primitives only (no Captum, no analysis), so that :mod:`captum_sift.mae`
and user code can import them cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._checks import as_scalar, check_2d, check_int, check_number, shape_of
from ..attr.patches import patch_scores_to_pixels
from ..errors import CaptumSiftError
from ..theta.spurious import key_patches, spurious_patches

__all__ = [
    "DEFAULT_MODES",
    "MAX_SEED",
    "MODES",
    "check_fill",
    "check_generator",
    "check_image_ids",
    "check_plan",
    "check_seed",
    "check_selected",
    "mask_images",
    "num_masked",
    "random_scores",
    "random_selection",
    "select_patches",
]

MODES = ("top", "bottom", "random", "spurious")
#: The modes :func:`~captum_sift.masking.evaluate_masking` and ``mask-eval`` run by default (the paper's Fig. 8).
DEFAULT_MODES = ("top", "bottom", "random")
#: The largest seed of the random mode (image i draws from a torch.Generator seeded with seed * 1_000_003 + i, 64 bits).
MAX_SEED = 2**32 - 1


def num_masked(ratio: float, num_patches: int) -> int:
    """round(ratio * N), halves rounded up (SPEC §7)."""
    value = check_number(ratio, "ratio", 0, 1)
    return min(num_patches, math.floor(value * num_patches + 0.5))


def check_plan(ratios: Sequence[float], modes: Sequence[str], name: str = "modes") -> tuple[list[float], list[str]]:
    """Ratios as floats in [0, 1] and modes among :data:`MODES`, before any work is done."""
    if isinstance(ratios, (str, bytes)) or isinstance(modes, (str, bytes)):
        raise CaptumSiftError(f"expected sequences of ratios and modes, got {ratios!r} and {modes!r}")
    ratios, modes = list(ratios), list(modes)
    if not ratios or not modes:
        raise CaptumSiftError(f"expected at least one ratio and one mode, got {ratios} and {modes}")
    for ratio in ratios:
        num_masked(ratio, 1)  # validates the range
    for mode in modes:
        if mode not in MODES:
            raise CaptumSiftError(f"expected {name} among {MODES}, got {mode!r}")
    floats = [float(r) for r in ratios]
    for label, values in (("ratios", floats), (name, modes)):
        twice = sorted({v for v in values if values.count(v) > 1}, key=str)
        if twice:  # a repeated cell would count every image twice (n and the paired test)
            raise CaptumSiftError(f"expected distinct {label}, got {twice} more than once in {values}")
    return floats, modes


def check_selected(value: object) -> torch.Tensor:
    """A (B, N) bool mask of selected patches (a float or int mask is refused: casting it would change its meaning)."""
    value = check_2d(value, "selected")
    if value.dtype != torch.bool:
        raise CaptumSiftError(
            f"expected selected to be a bool tensor (True = masked), got dtype {value.dtype}; "
            "build it with select_patches or a comparison such as scores > t"
        )
    return value


def check_generator(generator: object) -> torch.Generator | None:
    """None or a torch.Generator (a seed is not one: pass torch.Generator().manual_seed(seed))."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise CaptumSiftError(
            f"expected generator to be a torch.Generator or None, got {generator!r}; "
            "pass torch.Generator().manual_seed(seed) for a seed"
        )
    return generator


def select_patches(
    scores: torch.Tensor,
    ratio: float,
    mode: str = "top",
    generator: torch.Generator | None = None,
    *,
    keypoint_counts: torch.Tensor | None = None,
    min_keypoints: int = 1,
    threshold: float | None = None,
) -> torch.Tensor:
    """Patches to mask: round(ratio * N) per image (SPEC §7).

    ``"top"`` takes the highest scores, ``"bottom"`` the lowest, ties broken by
    patch index (lower first), so the result is deterministic; ``"random"``
    ignores the scores and draws from ``generator``; ``"spurious"`` takes the
    Key patches (``keypoint_counts`` >= ``min_keypoints``) with the lowest
    scores (paper §5.1), only those below ``threshold`` when one is given —
    so an image with fewer such patches gets fewer than round(ratio * N).

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
    scores = check_2d(scores, "scores")
    if mode not in MODES:
        raise CaptumSiftError(f"expected mode in {MODES}, got {mode!r}")
    check_generator(generator)
    batch, n = scores.shape
    k = num_masked(ratio, n)
    if mode == "spurious":
        key = key_patches(scores, keypoint_counts, min_keypoints)
        candidates = key if threshold is None else spurious_patches(scores, keypoint_counts, threshold, min_keypoints)
        ranked = torch.where(candidates, scores, torch.full_like(scores, math.inf))
        order = torch.sort(ranked, dim=1, stable=True).indices[:, :k]
        keep = candidates.gather(1, order)  # fewer candidates than k: only those
        selected = torch.zeros(batch, n, dtype=torch.bool, device=scores.device)
        return selected.scatter_(1, order, keep)
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


def check_seed(seed: object) -> int:
    """The random mode's seed: an int in [0, 2**32 - 1] (numpy and 0-d tensor ints included)."""
    return check_int(seed, "seed", 0, MAX_SEED)


def check_image_ids(image_ids: object, batch: int) -> torch.Tensor:
    """Image indices (B,) as a CPU long tensor: ints >= 0, one per image."""
    ids = torch.as_tensor(image_ids) if isinstance(image_ids, (list, tuple, range)) else image_ids
    if (
        not isinstance(ids, torch.Tensor)
        or ids.shape != (batch,)
        or ids.dtype == torch.bool
        or ids.is_floating_point()
        or ids.is_complex()
        or (batch and int(ids.min()) < 0)
    ):
        got = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else repr(image_ids)
        raise CaptumSiftError(f"expected image_ids: {batch} ints >= 0, one per image (B,) = ({batch},), got {got}")
    return ids.cpu().long()


def random_scores(indices: torch.Tensor, num_patches: int, seed: int) -> torch.Tensor:
    """Per-image random scores (B, N) that depend only on (seed, image index).

    The random mode masks the top of these, so an image gets the same random
    mask whatever batch or process it is in (same numbers under torchrun).
    """
    seed = check_seed(seed)
    rows = [
        torch.rand(num_patches, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
        for i in indices.tolist()
    ]
    return torch.stack(rows) if rows else torch.zeros(0, num_patches)


def random_selection(
    indices: torch.Tensor, num_patches: int, ratio: float, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The random mode's mask (B, N) bool: image i masks the top round(ratio N) of its :func:`random_scores`.

    The random scheme of :func:`~captum_sift.masking.evaluate.evaluate_masking` and
    :class:`~captum_sift.masking.prompt.MaskAsPrompt`: an image's mask depends only
    on (seed, its index), not on the batch it is in.
    """
    return select_patches(random_scores(indices, num_patches, seed).to(device), ratio, "top")


def check_fill(fill: object) -> None:
    """A fill of :func:`mask_images` or ``"drop"``, checked before any work (its dtype range with the images)."""
    if isinstance(fill, str):
        if fill not in ("mean", "blur", "drop"):
            raise CaptumSiftError(f"expected fill to be a number, 'mean', 'blur', 'drop' or a tensor, got {fill!r}")
    elif isinstance(fill, torch.Tensor) and fill.dim() > 0:
        if fill.dtype == torch.bool or fill.is_complex():
            raise CaptumSiftError(f"expected a real-valued fill tensor, got dtype {fill.dtype}")
    else:
        check_number(fill, "fill")


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
            if size < 3:  # a kernel of one pixel would hand back the image itself
                raise CaptumSiftError(
                    f"expected images of at least 4 x 4 pixels for fill='blur' (a Gaussian kernel of 3 pixels or "
                    f"more), got {images.shape[2]} x {images.shape[3]}"
                )
            return kornia.filters.gaussian_blur2d(images, (size, size), (sigma, sigma), border_type="reflect")
        raise CaptumSiftError(f"expected fill to be a number, 'mean', 'blur', 'drop' or a tensor, got {fill!r}")
    if isinstance(fill, torch.Tensor) and fill.dim() > 0:  # a 0-d tensor is a number
        c, h, w = images.shape[1:]
        allowed = [(c,), (c, 1, 1), (c, h, w), (1, c, h, w), tuple(images.shape), (1, c, 1, 1)]
        if tuple(fill.shape) not in allowed:
            raise CaptumSiftError(
                f"expected a fill tensor of shape (C,), (C, 1, 1), (C, H, W) or (B, C, H, W) = "
                f"{tuple(images.shape)}, got {tuple(fill.shape)}"
            )
        if fill.dtype == torch.bool or fill.is_complex():
            raise CaptumSiftError(f"expected a real-valued fill tensor, got dtype {fill.dtype}")
        fill = fill.to(images.device, images.dtype)
        if not bool(torch.isfinite(fill).all()):  # NaN / Inf, or values beyond the images' dtype
            raise CaptumSiftError(f"expected a fill tensor of finite values in the images' dtype {images.dtype}")
        return fill.view(1, c, 1, 1) if fill.dim() == 1 else fill
    if isinstance(as_scalar(fill), (int, float)) and not isinstance(as_scalar(fill), bool):
        largest = torch.finfo(images.dtype).max
        value = check_number(fill, f"fill for {images.dtype} images", -largest, largest)
        return torch.full((1, 1, 1, 1), value, device=images.device, dtype=images.dtype)
    raise CaptumSiftError(f"expected a finite number, 'mean', 'blur' or a tensor as fill, got {fill!r}")


def mask_images(
    images: torch.Tensor, selected: torch.Tensor, patch_size: int, fill: float | str | torch.Tensor = 0.0
) -> torch.Tensor:
    """Fill the selected patches of every image; other pixels are bit-identical to ``images``.

    Args:
        images: the batch, in the model's input space.
        selected: patches to mask, a bool tensor (True = masked), from
            :func:`select_patches`.
        patch_size: P.
        fill: a number in the model's input space, representable in the
            images' dtype (default 0.0: after timm's normalisation, the data
            set's mean colour), ``"mean"`` (each image's mean colour),
            ``"blur"`` (a Gaussian blur with sigma = P of the image, shown in
            the patch; images of at least 4 x 4 pixels) or a finite tensor
            (C,), (C, H, W) or (B, C, H, W).

    Shape:
        - images: (B, C, H, W)
        - selected: (B, N), N = (H / P) (W / P)
        - output: (B, C, H, W)
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise CaptumSiftError(f"expected float images of shape (B, C, H, W), got {shape_of(images)}")
    selected = check_selected(selected)
    patch_size = check_int(patch_size, "patch_size", low=1)
    b, _, h, w = images.shape
    if h % patch_size or w % patch_size or selected.shape != (b, (h // patch_size) * (w // patch_size)):
        raise CaptumSiftError(
            f"expected selected of shape (B, N) = ({b}, {(h // patch_size) * (w // patch_size)}) for images "
            f"{tuple(images.shape)} and patch_size={patch_size} (H, W multiples of P), got {tuple(selected.shape)}"
        )
    pixel_mask = patch_scores_to_pixels(selected.to(torch.uint8), (b, 1, h, w), patch_size).bool()
    return torch.where(pixel_mask, _fill_values(images, fill, patch_size), images)
