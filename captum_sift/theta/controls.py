"""Null models for θ (SPEC §9): what θ would be without a semantic link between attention and keypoints.

Three controls, each measured with the same eqs. 2-4 and the same counts as the real attention:

- **uniform**: α_ij = 1/N; θ_i is the image's (weighted) Key share, the floor of every class.
- **locality**: α_ij = f(d(i, j)), a function of the grid distance only, fitted to the real attention of
  each image and head (:func:`locality_attention`). A layer that is merely local gets the same θ from it.
- **shuffled keypoints**: the real attention with counts that no longer belong to the image content
  (:func:`shuffled_counts`): the count grid rolled by a random offset (clustering kept, content link
  broken) or another image's counts.

:func:`excess` turns per-image differences between real and control into a mean with a bootstrap
interval and a sign-flip permutation p-value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch

from .._checks import check_int, shape_of
from ..errors import CaptumSiftError
from .functional import _check_attention

__all__ = [
    "Excess",
    "distance_classes",
    "excess",
    "excess_verdict",
    "exceeding_layers",
    "decidable_layers",
    "joint_verdict",
    "locality_attention",
    "shuffled_counts",
    "uniform_attention",
]

#: Seed offset of the shuffled-count draws, kept apart from the random masking scheme's seeds.
_SHUFFLE_STREAM = 0x5EED


def distance_classes(grid_h: int, grid_w: int, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """Every patch pair's class of grid distance: (N, N) long ids of dy² + dx², and the number of classes.

    Two pairs share a class exactly when their Euclidean grid distances are equal.

    Example:
        >>> classes, num = distance_classes(1, 3)
        >>> classes
        tensor([[0, 1, 2],
                [1, 0, 1],
                [2, 1, 0]])
        >>> num
        3
    """
    grid_h, grid_w = check_int(grid_h, "grid_h", low=1), check_int(grid_w, "grid_w", low=1)
    index = torch.arange(grid_h * grid_w, device=device)
    ys, xs = index // grid_w, index % grid_w
    squared = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    values, classes = torch.unique(squared, return_inverse=True)
    return classes, int(values.numel())


def _check_block(attn_patch: object, grid: tuple[int, int]) -> torch.Tensor:
    _check_attention(attn_patch, "attn_patch")
    n = grid[0] * grid[1]
    if attn_patch.shape[-1] != n:  # type: ignore[union-attr]
        raise CaptumSiftError(
            f"expected attn_patch of shape (B, heads, N, N) with N = {grid[0]} x {grid[1]} = {n}, "
            f"got {shape_of(attn_patch)}"
        )
    return attn_patch  # type: ignore[return-value]


def locality_attention(attn_patch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The locality control: each image's and head's attention replaced by its mean profile over grid distance.

    Rows are renormalised to sum to 1 over the patches; f(d) is the mean of the renormalised α_ij over
    all pairs (i, j) at distance d (over every query patch), and the control is α'_ij = f(d(i, j)).
    Fitted per image (not over the data set as SPEC §9 writes): the control is then computed in the
    same streamed pass, and equals for any batching and any number of processes.

    Shape:
        - attn_patch: (B, h, N, N), N = grid[0] * grid[1]
        - output: (B, h, N, N)

    Example:
        >>> attn = torch.tensor([[[[0.8, 0.2], [0.4, 0.6]]]])  # 1 x 2 grid: d = 0 on the diagonal, 1 off it
        >>> locality_attention(attn, (1, 2))
        tensor([[[[0.7000, 0.3000],
                  [0.3000, 0.7000]]]])
    """
    attn_patch = _check_block(attn_patch, grid)
    classes, num_classes = distance_classes(*grid, device=attn_patch.device)
    rows = attn_patch / attn_patch.sum(dim=-1, keepdim=True)
    flat = classes.flatten()
    sums = rows.new_zeros(*rows.shape[:2], num_classes).index_add_(-1, flat, rows.flatten(-2))
    pairs = torch.bincount(flat, minlength=num_classes).to(rows.dtype)
    profile = sums / pairs  # (B, h, D): mean attention at each distance
    return profile[..., classes]


def uniform_attention(attn_patch: torch.Tensor) -> torch.Tensor:
    """The uniform control α_ij = 1/N, shaped like ``attn_patch`` (a broadcast view, no copy)."""
    if (
        not isinstance(attn_patch, torch.Tensor)
        or attn_patch.dim() != 4
        or attn_patch.shape[-1] != attn_patch.shape[-2]
    ):
        raise CaptumSiftError(f"expected attn_patch of shape (B, heads, N, N), got {shape_of(attn_patch)}")
    n = attn_patch.shape[-1]
    return attn_patch.new_full((1, 1, 1, 1), 1.0 / n).expand(attn_patch.shape)


def shuffled_counts(
    keypoint_counts: torch.Tensor,
    grid: tuple[int, int],
    image_ids: torch.Tensor,
    *,
    draws: int = 8,
    seed: int = 0,
    mode: Literal["roll", "images"] = "roll",
) -> torch.Tensor:
    """Keypoint counts that no longer belong to the image content, ``draws`` times: (K, B, N).

    - ``"roll"`` (default): each image's count grid rolled (with wrap-around) by an offset drawn
      uniformly among the non-zero ones, from a generator seeded by (seed, image id, draw). Key
      patches keep their clustering and their share; only their place relative to the content
      changes. Each image's draws depend on its id alone, so batching and processes do not matter.
    - ``"images"``: another image's counts (a derangement of the batch per draw, seeded by (seed,
      draw, the batch's first id)); needs B >= 2 and depends on which images share a batch.

    Shape:
        - keypoint_counts: (B, N) or (B, Gh, Gw)
        - image_ids: (B,) int
        - output: (K, B, N)
    """
    grid_h, grid_w = grid
    n = grid_h * grid_w
    if not isinstance(keypoint_counts, torch.Tensor) or keypoint_counts.flatten(1).shape[-1:] != (n,):
        raise CaptumSiftError(f"expected keypoint_counts of shape (B, N) with N = {n}, got {shape_of(keypoint_counts)}")
    counts = keypoint_counts.flatten(1)
    batch = counts.shape[0]
    if not isinstance(image_ids, torch.Tensor) or image_ids.shape != (batch,) or image_ids.is_floating_point():
        raise CaptumSiftError(f"expected image_ids of shape ({batch},) with integer ids, got {shape_of(image_ids)}")
    draws = check_int(draws, "draws", low=1)
    seed = check_int(seed, "seed", low=0)
    if mode == "roll":
        if n == 1:
            raise CaptumSiftError("expected a grid of at least 2 patches to roll, got 1 x 1")
        out = counts.new_empty(draws, batch, n)
        for b, image_id in enumerate(image_ids.tolist()):
            for k in range(draws):
                generator = torch.Generator().manual_seed(_stream_seed(seed, int(image_id), k))
                offset = int(torch.randint(1, n, (1,), generator=generator))  # never (0, 0)
                dy, dx = divmod(offset, grid_w)
                out[k, b] = counts[b].view(grid_h, grid_w).roll((dy, dx), dims=(0, 1)).flatten()
        return out
    if mode == "images":
        if batch < 2:
            raise CaptumSiftError(f"expected at least 2 images to exchange counts, got {batch}")
        out = counts.new_empty(draws, batch, n)
        first = int(image_ids[0])
        for k in range(draws):
            generator = torch.Generator().manual_seed(_stream_seed(seed, first, k) ^ 1)
            out[k] = counts[_derangement(batch, generator)]
        return out
    raise CaptumSiftError(f"expected mode 'roll' or 'images', got {mode!r}")


def _stream_seed(seed: int, image_id: int, draw: int) -> int:
    """A generator seed for one (seed, image, draw), the same in every process and Python run."""
    return ((seed * 1_000_003 + image_id) * 1_000_033 + draw + _SHUFFLE_STREAM) % 2**63


def _derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of range(n) without a fixed point: a random cyclic order, each element to the next."""
    order = torch.randperm(n, generator=generator)
    target = torch.empty(n, dtype=torch.long)
    target[order] = order.roll(-1)
    return target


class Excess(NamedTuple):
    """Per layer: the mean excess of real over control, its 95 % bootstrap interval, the one-sided
    sign-flip p-value (H1: real > control) and the number of images that entered; each (L,)."""

    mean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    p_value: torch.Tensor
    images: torch.Tensor


def excess(real: torch.Tensor, control: torch.Tensor, *, resamples: int = 2000, seed: int = 0) -> Excess:
    """How far a per-image, per-layer quantity exceeds its control, with an interval and a p-value.

    ``d = real - control`` per image and layer; images with NaN in either are left out of that layer.
    The interval is the 2.5-97.5 % percentile of ``resamples`` bootstrap means over images (NaN with fewer than 2); the
    p-value is one-sided, from ``resamples`` random sign flips of d (paired permutation test: under
    the null the control is exchangeable with the real measurement), (1 + #{flipped mean >= mean}) /
    (1 + resamples), so its floor is 1 / (1 + resamples).

    Shape:
        - real, control: (I, L)
        - each output field: (L,)
    """
    if not isinstance(real, torch.Tensor) or real.dim() != 2:
        raise CaptumSiftError(f"expected real of shape (images, layers), got {shape_of(real)}")
    if not isinstance(control, torch.Tensor) or control.shape != real.shape:
        raise CaptumSiftError(f"expected control of shape {tuple(real.shape)}, got {shape_of(control)}")
    resamples = check_int(resamples, "resamples", low=1)
    generator = torch.Generator().manual_seed(check_int(seed, "seed", low=0))
    diff = (real.double() - control.double()).cpu()
    images = diff.shape[0]
    valid = ~torch.isnan(diff)
    used = valid.sum(0)
    zeros = torch.zeros_like(diff)
    d = torch.where(valid, diff, zeros)
    mean = d.sum(0) / used  # NaN where no image entered
    picks = torch.randint(0, max(images, 1), (resamples, images), generator=generator)
    times = torch.zeros(resamples, images, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones_like(picks, dtype=torch.float64)
    )
    boot = (times @ d) / (times @ valid.double())  # (R, L): each resample's mean over the images it drew
    low = torch.nanquantile(boot, 0.025, dim=0)
    high = torch.nanquantile(boot, 0.975, dim=0)
    signs = torch.randint(0, 2, (resamples, images), generator=generator).double() * 2 - 1
    flipped = (signs @ d) / used  # (R, L)
    p_value = (1 + (flipped >= mean - 1e-12).sum(0)).double() / (1 + resamples)
    nan = torch.full_like(mean, float("nan"))
    empty, single = used == 0, used < 2  # one image has no interval
    return Excess(
        mean=mean,
        low=torch.where(single, nan, low),
        high=torch.where(single, nan, high),
        p_value=torch.where(empty, nan, p_value),
        images=used,
    )


def exceeding_layers(result: Excess, alpha: float = 0.01, min_excess: float = 0.0) -> torch.Tensor:
    """(L,) bool: the layers where the excess counts (mean > 0 and >= ``min_excess``, interval above 0,
    p < alpha) and the test could have found it (:func:`decidable_layers`)."""
    min_excess = float(min_excess)
    if not min_excess >= 0:
        raise CaptumSiftError(f"expected min_excess >= 0, got {min_excess!r}")
    above = (result.mean > 0) & (result.mean >= min_excess) & (result.low > 0) & (result.p_value < alpha)
    return above & decidable_layers(result, alpha)


def decidable_layers(result: Excess, alpha: float = 0.01) -> torch.Tensor:
    """(L,) bool: the layers where a sign-flip p-value can fall below ``alpha`` at all: at least 2 images
    entered and 2^-images < alpha (with n images no p is smaller than 2^-n, so 7 images for 0.01)."""
    images = result.images.double()
    return (images >= 2) & (torch.pow(0.5, images) < alpha)


def excess_verdict(
    quantity: str,
    control: str,
    result: Excess,
    layers: Sequence[int] | None = None,
    alpha: float = 0.01,
    min_excess: float = 0.0,
) -> str:
    """One line naming the layers where ``quantity`` exceeds ``control`` (:func:`exceeding_layers`),
    e.g. ``"θ_KK exceeds the locality control at layers 3-9 (p < 0.01)"``; ``layers`` are the layer
    numbers of the L entries (default 0 .. L-1). A floor ``min_excess`` > 0 names the size too:
    ``"... (p < 0.01, excess >= 0.05)"``. Layers too few images entered to reach ``alpha``
    (:func:`decidable_layers`) are named undetermined, never "does not exceed"."""
    return _verdict(f"the {control} control", quantity, [result], layers, alpha, min_excess, joint=False)


def joint_verdict(
    quantity: str,
    results: dict[str, Excess],
    layers: Sequence[int] | None = None,
    alpha: float = 0.01,
    min_excess: float = 0.0,
) -> str:
    """SPEC §9's verdict: the layers where ``quantity`` exceeds every control of ``results`` at once
    (``{"locality": ..., "shuffled": ...}``), e.g. ``"θ_KK exceeds the locality and shuffled controls
    together at layers 4-5 (p < 0.01, excess >= 0.1): the paper's Key bias beyond geometry"``; layers
    where any control is untestable are undetermined."""
    if not results:
        raise CaptumSiftError("expected at least one control's excess, got none")
    names = " and ".join(results)
    return _verdict(f"the {names} controls", quantity, list(results.values()), layers, alpha, min_excess, joint=True)


def _verdict(
    what: str,
    quantity: str,
    results: list[Excess],
    layers: Sequence[int] | None,
    alpha: float,
    min_excess: float,
    *,
    joint: bool,
) -> str:
    flags = [exceeding_layers(r, alpha, min_excess) for r in results]
    if len({f.numel() for f in flags}) != 1:
        raise CaptumSiftError(f"expected one number of layers for every control, got {[f.numel() for f in flags]}")
    testable = torch.stack([decidable_layers(r, alpha) for r in results]).all(dim=0)
    found = _layer_numbers(torch.stack(flags).all(dim=0), layers)
    tested, untested = _layer_numbers(testable, layers), _layer_numbers(~testable, layers)
    bar = _bar(alpha, min_excess)
    together = " together" if joint else ""
    if not tested:
        return f"{quantity} vs {what}{together}: undetermined at every layer ({_why(results, ~testable, alpha)})"
    if found:
        line = f"{quantity} exceeds {what}{together} at layers {_ranges(found)} ({bar})"
        line += ": the paper's Key bias beyond geometry" if joint else ""
    elif joint:
        where = "no layer" if not untested else f"none of layers {_ranges(tested)}"
        line = f"{quantity} exceeds {what} together at {where} ({bar}): no Key bias beyond geometry"
    else:
        where = "any layer" if not untested else f"layers {_ranges(tested)}"
        line = f"{quantity} does not exceed {what} at {where} ({bar})"
    if untested:
        line += f"; undetermined at layers {_ranges(untested)} ({_why(results, ~testable, alpha)})"
    return line


def _why(results: list[Excess], untested: torch.Tensor, alpha: float) -> str:
    """Why the ``untested`` layers cannot be tested: no image, or too few for a p-value below alpha."""
    images = int(torch.stack([r.images for r in results]).amin(dim=0)[untested].max())
    if images == 0:
        return "no image has a value there"
    plural = "s" if images > 1 else ""
    return f"{images} image{plural}: no sign-flip p-value falls below 2^-{images} = {0.5**images:.2g}"


def _layer_numbers(flags: torch.Tensor, layers: Sequence[int] | None) -> list[int]:
    numbers = list(range(flags.numel())) if layers is None else list(layers)
    if len(numbers) != flags.numel():
        raise CaptumSiftError(f"expected {flags.numel()} layer numbers, got {len(numbers)}")
    return [numbers[i] for i, flag in enumerate(flags.tolist()) if flag]


def _bar(alpha: float, min_excess: float) -> str:
    return f"p < {alpha:g}" + (f", excess >= {float(min_excess):g}" if min_excess > 0 else "")


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts: list[str] = []
    start = prev = values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)
