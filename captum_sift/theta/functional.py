"""The paper's equations 2-5 as pure tensor functions (SPEC §2-5).

Everything is vectorised over batch, heads and patches. Attention tensors
are the patch-to-patch block ``attn_patch`` (B, h, N, N) of a layer, rows =
starting (query) patches i, columns = target patches j.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import check_counts, check_gamma, check_int, check_min_keypoints, shape_of
from ..errors import CaptumSiftError

__all__ = [
    "Interrelation",
    "check_counts",
    "focus_index",
    "interrelation",
    "patch_block",
    "patch_theta",
    "theta_from_weights",
    "theta_weights",
]


def _check_attention(attn: torch.Tensor, name: str = "attn") -> None:
    if not isinstance(attn, torch.Tensor):
        raise CaptumSiftError(f"expected {name} to be a torch.Tensor, got {type(attn).__name__}")
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise CaptumSiftError(f"expected {name} of shape (B, heads, T, T), got {tuple(attn.shape)}")
    if not attn.is_floating_point():
        raise CaptumSiftError(f"expected floating-point {name}, got dtype {attn.dtype}")


def patch_block(attn: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Patch-to-patch block of an attention map (SPEC §2): prefix rows and columns dropped.

    No renormalisation: every quantity of SPEC §2-5 is invariant to scaling a row.

    Args:
        attn: post-softmax attention including prefix tokens (CLS, distillation, registers first).
        num_prefix_tokens: ``model.num_prefix_tokens``.

    Shape:
        - attn: (B, h, T, T) with T = num_prefix_tokens + N
        - output: (B, h, N, N), a view

    Example:
        >>> attn = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
        >>> patch_block(attn, 1).shape
        torch.Size([2, 3, 4, 4])
    """
    _check_attention(attn)
    num_prefix_tokens = check_int(num_prefix_tokens, "num_prefix_tokens", low=0)
    if num_prefix_tokens >= attn.shape[-1]:
        raise CaptumSiftError(
            f"expected fewer prefix tokens than tokens, got num_prefix_tokens={num_prefix_tokens} "
            f"for attention of shape {tuple(attn.shape)}"
        )
    return attn[:, :, num_prefix_tokens:, num_prefix_tokens:]


def patch_theta(
    attn_patch: torch.Tensor,
    keypoint_counts: torch.Tensor,
    *,
    gamma: float = 1.0,
    weighted: bool = True,
    include_self: bool = True,
    min_keypoints: int = 1,
) -> torch.Tensor:
    """Per-patch score θ_i of every head (paper eqs. 2-3, SPEC §2-3).

    The detection line of row i is ``H_i = gamma * mean_j attn[i, j]`` (eq. 2);
    the attended set is ``S_i = {j : attn[i, j] >= H_i}`` (ties included), with
    j = i in it only if ``include_self``. Key(j) <=> ``t_j >= min_keypoints``.

    - weighted (default): ``θ_i = Σ_{j∈S_i^Key} t_j / (|S_i^Non| + Σ_{j∈S_i^Key} t_j)``
    - unweighted: ``θ_i = |S_i^Key| / |S_i|``

    θ_i is NaN where S_i is empty (possible only for gamma > 1, or gamma = 1
    with ``include_self=False`` on a one-patch grid).

    Args:
        attn_patch: patch-to-patch attention, see :func:`patch_block`.
        keypoint_counts: keypoint count t_j of every patch, integral values >= 0.
        gamma: height of the detection line, > 0.
        weighted: weigh Key patches by their keypoint count (eq. 3, right).
        include_self: whether patch i may belong to its own S_i.
        min_keypoints: the Key bar.

    Returns:
        θ (B, h, N) in the dtype of ``attn_patch``.

    Shape:
        - attn_patch: (B, h, N, N)
        - keypoint_counts: (B, N) or (B, Gh, Gw)
        - output: (B, h, N)

    Example:
        >>> attn = torch.tensor([[[[0.4, 0.4, 0.1, 0.1]] * 4]])  # every row attends patches 0 and 1
        >>> counts = torch.tensor([[3, 0, 1, 0]])
        >>> patch_theta(attn, counts)[0, 0]  # (3) / (1 + 3)
        tensor([0.7500, 0.7500, 0.7500, 0.7500])
        >>> patch_theta(attn, counts, weighted=False)[0, 0]  # |{0}| / |{0, 1}|
        tensor([0.5000, 0.5000, 0.5000, 0.5000])
    """
    _check_attention(attn_patch, "attn_patch")
    batch, _, n, _ = attn_patch.shape
    counts = check_counts(keypoint_counts, batch, n).to(device=attn_patch.device, dtype=attn_patch.dtype)
    weights = theta_weights(counts, weighted=weighted, min_keypoints=check_min_keypoints(min_keypoints))
    return theta_from_weights(attn_patch, weights, check_gamma(gamma), include_self)


def theta_weights(counts: torch.Tensor, *, weighted: bool, min_keypoints: int) -> torch.Tensor:
    """The two weights of every target patch in eq. 3: (B, 1, N, 2) = [Key weight, weight in |S_i|].

    Key patches weigh t_j (``weighted``) or 1 in both; Non-key patches weigh 0 and 1.
    ``counts`` (B, N) are checked counts in the dtype θ is computed in.
    """
    is_key = counts >= min_keypoints  # (B, N)
    key_weight = torch.where(is_key, counts if weighted else torch.ones_like(counts), torch.zeros_like(counts))
    all_weight = torch.where(is_key, key_weight, torch.ones_like(counts))  # Non-key patches count 1
    return torch.stack([key_weight, all_weight], dim=-1).unsqueeze(1)


def theta_from_weights(
    attn_patch: torch.Tensor,
    weights: torch.Tensor,
    gamma: float,
    include_self: bool,
    line: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eqs. 2-3 on checked arguments: θ (B, h, N) from attn_patch (B, h, N, N) and ``theta_weights``.

    :func:`patch_theta` after its checks; the analysis calls it once per
    layer, with the weights of the batch taken once.
    ``line``: the row means of ``attn_patch`` (B, h, N, 1), when already taken;
    ``out``: a contiguous (B, h, N, N) float buffer for S_i (one per batch, not one per layer).
    """
    sums = _attended_sums(attn_patch, weights, gamma, include_self, line, out)  # (B, h, N, 2)
    return sums[..., 0] / sums[..., 1]  # 0 / 0 = NaN where S_i is empty


def _attended_sums(
    attn_patch: torch.Tensor,
    weights: torch.Tensor,
    gamma: float,
    include_self: bool,
    line: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_{j∈S_i} of every weight column (B, h, N, C): eqs. 2-3's sums for weights (B, 1, N, C), C = 2 per θ.

    S_i depends on the attention alone, so several count sets (the shuffled control's draws) share it:
    their weights side by side in ``weights`` cost one product.
    """
    if line is None:
        line = attn_patch.mean(dim=-1, keepdim=True)  # (B, h, N, 1): eq. 2
    if gamma != 1:
        line = line * gamma
    # S_i (B, h, N, N) as 0/1 in attn's dtype, written once (a bool mask, then a cast: one more pass)
    attended = torch.empty_like(attn_patch, memory_format=torch.contiguous_format) if out is None else out
    torch.ge(attn_patch, line, out=attended)
    if not include_self:
        attended.diagonal(dim1=-2, dim2=-1).zero_()
    return attended @ weights


class Interrelation(NamedTuple):
    """The four interrelation classes of eq. 4, each (B, h); NaN where undefined."""

    kk: torch.Tensor
    kn: torch.Tensor
    nk: torch.Tensor
    nn: torch.Tensor


def interrelation(theta: torch.Tensor, keypoint_counts: torch.Tensor, min_keypoints: int = 1) -> Interrelation:
    """θ_KK, θ_KN, θ_NK, θ_NN of every image and head (paper eq. 4, SPEC §4).

    θ_KK is the mean of θ_i over starting patches i that are Key, θ_NK over
    those that are Non-key; θ_KN = 1 − θ_KK and θ_NN = 1 − θ_NK. NaN θ_i (empty
    S_i) are left out of the means. An image without a Key (or without a
    Non-key) patch gets NaN for that class, never 0.

    Args:
        theta: per-patch scores from :func:`patch_theta`.
        keypoint_counts: the counts θ was computed with.
        min_keypoints: the Key bar, as for :func:`patch_theta`.

    Shape:
        - theta: (B, h, N)
        - keypoint_counts: (B, N) or (B, Gh, Gw)
        - each output field: (B, h)

    Example:
        >>> theta = torch.tensor([[[0.9, 0.7, 0.2, 0.4]]])
        >>> rel = interrelation(theta, torch.tensor([[2, 1, 0, 0]]))
        >>> rel.kk, rel.nk
        (tensor([[0.8000]]), tensor([[0.3000]]))
        >>> interrelation(theta, torch.tensor([[0, 0, 0, 0]])).kk  # no Key patch
        tensor([[nan]])
    """
    if not isinstance(theta, torch.Tensor) or theta.dim() != 3:
        raise CaptumSiftError(f"expected theta of shape (B, heads, N), got {shape_of(theta)}")
    batch, _, n = theta.shape
    counts = check_counts(keypoint_counts, batch, n).to(theta.device)
    is_key = (counts >= check_min_keypoints(min_keypoints)).unsqueeze(1)  # (B, 1, N)
    valid = ~torch.isnan(theta)

    def class_mean(start: torch.Tensor) -> torch.Tensor:
        use = start & valid
        # NaN theta are excluded from the mean (SPEC §3), not replaced by 0.
        total = torch.where(use, theta, torch.zeros_like(theta)).sum(-1)
        return total / use.sum(-1)  # 0 / 0 = NaN: no starting patch of this kind

    kk = class_mean(is_key)
    nk = class_mean(~is_key)
    return Interrelation(kk=kk, kn=1 - kk, nk=nk, nn=1 - nk)


def focus_index(attn_patch: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Attention focus index of every image and head (paper eq. 5, SPEC §5).

    Each row is min-max normalised to [0, 1] and divided by its sum,
    ``p_ij = a_ij / Σ_j a_ij``; a constant row becomes the uniform
    distribution. ``δ_i = −Σ_j p_ij log p_ij`` (nats, 0 log 0 = 0), and the
    index is the mean of δ_i over rows. **Larger = broader attention**: the
    entropy meaning is kept (the paper's text says both).

    Args:
        attn_patch: patch-to-patch attention, see :func:`patch_block`.
        normalized: divide by log N, so that grids of different sizes compare
            (1 = uniform attention; 0 = every row on one patch).

    Shape:
        - attn_patch: (B, h, N, N)
        - output: (B, h)

    Example:
        >>> uniform = torch.full((1, 1, 4, 4), 0.25)
        >>> focus_index(uniform, normalized=True)
        tensor([[1.]])
        >>> peaked = torch.eye(4).view(1, 1, 4, 4)
        >>> focus_index(peaked)
        tensor([[0.]])
    """
    _check_attention(attn_patch, "attn_patch")
    n = attn_patch.shape[-1]
    # p_ij = a_ij / Σ_j a_ij with a = (α − min) / (max − min) is (α − min) / Σ_j (α − min):
    # the span cancels, so δ_i = log D_i − Σ_j u_ij log u_ij / D_i with u = α − min and
    # D = Σ_j u. Four passes over the block instead of ten (this is the analysis' hot spot).
    u = attn_patch - attn_patch.amin(dim=-1, keepdim=True)
    total = u.sum(dim=-1)  # (B, h, N); exactly 0 only for a constant row
    u_log_u = torch.special.xlogy(u, u, out=u).sum(dim=-1)  # in place: one block-sized temporary
    constant = total == 0
    safe = torch.where(constant, torch.ones_like(total), total)
    delta = torch.where(constant, torch.full_like(total, math.log(n)), torch.log(safe) - u_log_u / safe)
    index = delta.mean(dim=-1)
    return index / math.log(n) if normalized else index  # N = 1: 0 / 0 = NaN
