"""Guided curriculum masking for MAE pre-training (paper §5.2, SPEC §8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_counts, check_int, check_min_keypoints, check_number, shape_of
from ..errors import CaptumSiftError
from ..masking.apply import check_generator, num_masked

__all__ = ["KeyShareSchedule", "guided_masking", "mask_counts", "random_masking"]


def _num_masked(mask_ratio: float, n: int) -> int:
    """round(mask_ratio * N) as in SPEC §7, with MAE's open range (0, 1)."""
    ratio = check_number(mask_ratio, "mask_ratio", 0.0, 1.0, low_open=True, high_open=True)
    return num_masked(ratio, n)


def _check_tokens(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise CaptumSiftError(f"expected patch tokens x of shape (B, N, D), got {shape_of(x)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise CaptumSiftError(f"expected at least one image and one patch token in x (B, N, D), got {tuple(x.shape)}")


def _shuffle(
    x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's outputs from a mask (B, N) bool: kept tokens first (in random order), then the masked ones."""
    n_keep = int((~mask[0]).sum())
    ids_shuffle = torch.argsort(mask.to(noise.dtype) + noise, dim=1)  # unmasked (< 1) before masked (>= 1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    return x_masked, mask.to(x.dtype), ids_restore


def _noise(x: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None) -> torch.Tensor:
    """(2, B, N) uniform draws: row 0 picks the masked patches, row 1 orders the kept tokens."""
    b, n, _ = x.shape
    check_generator(generator)
    if noise is None:
        device = generator.device if generator is not None else "cpu"
        return torch.rand(2, b, n, generator=generator, device=device).to(x.device)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (2, b, n):
        raise CaptumSiftError(f"expected noise of shape (2, B, N) = (2, {b}, {n}), got {shape_of(noise)}")
    if not noise.is_floating_point():
        raise CaptumSiftError(f"expected floating-point noise in [0, 1), got dtype {noise.dtype}")
    # The shuffle ranks mask + noise (kept tokens < 1 <= masked ones): a draw outside [0, 1) crosses over.
    low, high = (float(v) for v in torch.aminmax(noise))  # NaN propagates, and fails both tests
    if not (low >= 0.0 and high < 1.0):
        raise CaptumSiftError(f"expected noise with values in [0, 1) (uniform draws), got values in [{low}, {high}]")
    return noise.to(x.device)


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's uniform random masking (He et al. 2022): the baseline of :func:`guided_masking`.

    ``noise`` (2, B, N) in [0, 1) may be given instead of ``generator`` (e.g.
    drawn for a whole global batch and split across processes).
    """
    _check_tokens(x)
    b, n, _ = x.shape
    n_mask = _num_masked(mask_ratio, n)
    noise = _noise(x, generator, noise)
    order = torch.argsort(noise[0], dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter_(1, order[:, n - n_mask :], True)
    return _shuffle(x, mask, noise[1])


def mask_counts(is_key: torch.Tensor, n_mask: int, key_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_key, n_non) masked per image (SPEC §8): round(key_share * n) Key, the rest Non-key, with spill-over."""
    available_key = is_key.sum(dim=1)
    available_non = is_key.shape[1] - available_key
    want_key = num_masked(key_share, n_mask)
    n_key = torch.clamp(torch.full_like(available_key, want_key), max=available_key)
    n_non = torch.clamp(n_mask - n_key, max=available_non)
    n_key = n_mask - n_non  # a group too small: the rest comes from the other one
    return n_key, n_non


def guided_masking(
    x: torch.Tensor,
    keypoint_counts: torch.Tensor,
    mask_ratio: float,
    key_share: float,
    *,
    min_keypoints: int = 1,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A drop-in for MAE's ``random_masking`` that masks a share of keypoint patches (SPEC §8).

    n = round(mask_ratio * N) patches are masked in every image;
    round(key_share * n) of them are drawn at random from the Key patches
    (t_j >= min_keypoints) and the rest from the Non-key patches. When a
    group is too small the rest comes from the other group, so exactly n are
    always masked. (The paper's "N r β / (1 − β)" does not keep the total; the
    SPEC keeps it.)

    Args:
        x: patch tokens (positions already added, prefix tokens not included).
        keypoint_counts: t_j of every patch.
        mask_ratio: r in (0, 1).
        key_share: β in [0, 1], e.g. from :class:`KeyShareSchedule`.
        min_keypoints: the Key bar.
        generator: a ``torch.Generator`` for reproducible masks (the draw is
            made on its device and moved to x's).
        noise: (2, B, N) uniform draws in [0, 1) to use instead of ``generator``.

    Returns:
        ``(x_masked, mask, ids_restore)`` exactly as MAE's ``random_masking``:
        x_masked (B, N − n, D) = x gathered at the first N − n entries of
        ids_shuffle; mask (B, N), 1 = masked, in patch order; ids_restore
        (B, N), the inverse permutation of ids_shuffle.

    Shape:
        - x: (B, N, D)
        - keypoint_counts: (B, N) or (B, Gh, Gw)

    Example:
        >>> x = torch.arange(8.0).view(1, 8, 1)
        >>> counts = torch.tensor([[3, 0, 1, 0, 0, 0, 2, 0]])  # Key patches 0, 2, 6
        >>> g = torch.Generator().manual_seed(0)
        >>> x_masked, mask, ids_restore = guided_masking(x, counts, 0.5, 0.5, generator=g)
        >>> int(mask.sum()), int(mask[0, [0, 2, 6]].sum())  # 4 masked, round(0.5 * 4) = 2 of them Key
        (4, 2)
        >>> x_masked.shape
        torch.Size([1, 4, 1])
    """
    _check_tokens(x)
    b, n, _ = x.shape
    counts = check_counts(keypoint_counts, b, n).to(x.device)
    n_mask = _num_masked(mask_ratio, n)
    key_share = check_number(key_share, "key_share", 0.0, 1.0)
    is_key = counts >= check_min_keypoints(min_keypoints)
    n_key, n_non = mask_counts(is_key, n_mask, key_share)
    noise = _noise(x, generator, noise)
    # Rank every patch within its group (Key first, each group in random order) ...
    order = torch.argsort(noise[0] + 2.0 * (~is_key), dim=1)
    position = torch.argsort(order, dim=1)
    rank_in_group = position - torch.where(is_key, 0, is_key.sum(dim=1, keepdim=True))
    # ... and mask the first n_key Key and the first n_non Non-key patches.
    mask = torch.where(is_key, rank_in_group < n_key.unsqueeze(1), rank_in_group < n_non.unsqueeze(1))
    return _shuffle(x, mask, noise[1])


@dataclass(frozen=True)
class KeyShareSchedule:
    """Curriculum of the key share β (SPEC §8): epoch -> β.

    β = min(stop, start + step * (epoch // every)): by default 0.1 for epochs
    0-9, 0.2 for 10-19, ..., 0.5 from epoch 40 on.

    Example:
        >>> schedule = KeyShareSchedule()
        >>> [schedule(e) for e in (0, 9, 10, 25, 39, 40, 100)]
        [0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
        >>> KeyShareSchedule(every=2)(5)
        0.3
    """

    start: float = 0.1
    step: float = 0.1
    every: int = 10
    stop: float = 0.5

    def __post_init__(self) -> None:
        # Stored as Python numbers (numpy and 0-d tensor numbers accepted), so that asdict() is JSON-ready.
        for name in ("start", "stop"):
            object.__setattr__(self, name, check_number(getattr(self, name), name, 0.0, 1.0))
        object.__setattr__(self, "step", check_number(self.step, "step"))
        object.__setattr__(self, "every", check_int(self.every, "every", low=1))

    def __call__(self, epoch: int) -> float:
        epoch = check_int(epoch, "epoch", low=0)
        value = self.start + self.step * (epoch // self.every)
        value = min(value, self.stop) if self.step >= 0 else max(value, self.stop)
        return round(value, 10)
