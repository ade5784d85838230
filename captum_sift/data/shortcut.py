"""A known-truth benchmark: Fashion-MNIST with a planted shortcut marker in one patch.

Every image gets a small high-contrast texture in one grid-aligned patch.
In the *correlated* split the texture's type is the label (a shortcut a
model can learn instead of the garment); in the *decorrelated* split it is
drawn at random, unrelated to the label. A model that relies on the marker
loses accuracy on the decorrelated split, and masking exactly the marker
patch (the oracle) gives it back: the right answer to "which patch should an
explanation point at, and which patch should a mask-as-prompt remove" is
known for every image: :func:`marker_masks` gives it as a ground-truth mask.
"""

from __future__ import annotations

import torch

from ..errors import CaptumSiftError

__all__ = ["NUM_MARKERS", "marker_masks", "marker_textures", "plant_markers"]

NUM_MARKERS = 10


def marker_textures(size: int = 12) -> torch.Tensor:
    """The 10 distinct marker textures, (10, size, size) in {0, 1}: stripes, diagonals, checkers, a frame, dots."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    textures = [
        yy % 2,  # thin horizontal stripes
        xx % 2,  # thin vertical stripes
        (yy // 2) % 2,  # thick horizontal stripes
        (xx // 2) % 2,  # thick vertical stripes
        ((yy + xx) // 2) % 2,  # diagonal stripes
        ((yy - xx + size) // 2) % 2,  # anti-diagonal stripes
        (yy // 2 + xx // 2) % 2,  # small checkerboard
        (yy // 4 + xx // 4) % 2,  # large checkerboard
        (yy < 2) | (yy >= size - 2) | (xx < 2) | (xx >= size - 2),  # frame
        (yy % 3 == 1) & (xx % 3 == 1),  # dots
    ]
    return torch.stack([t.float() for t in textures])


def plant_markers(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    patch_size: int = 16,
    correlated: bool = True,
    seed: int = 0,
    marker_size: int = 12,
    agreement: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with one marker each, the marker patch index and the marker type.

    Args:
        images: (B, 1, H, W) pixels in [0, 1], H and W multiples of ``patch_size``.
        labels: (B,) classes in [0, 10).
        correlated: the marker type is the label (True; with probability
            ``agreement``, else uniform) or uniform at random (False).
        seed: positions (and random types) depend only on (seed, image index).
        marker_size: side of the texture, centred in its patch.
        agreement: in the correlated split, the share of images whose marker
            is the label's (1.0: a perfect shortcut; less leaves the model a
            reason to learn the garments too).

    Returns:
        (marked images, patch index (B,), marker type (B,)).
    """
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] % patch_size or images.shape[3] % patch_size:
        raise CaptumSiftError(f"expected (B, 1, H, W) images tiled by {patch_size}-px patches, got {images.shape}")
    if not 0 < marker_size <= patch_size:
        raise CaptumSiftError(f"expected 0 < marker_size <= patch_size, got {marker_size}")
    if labels.shape != (images.shape[0],) or int(labels.min()) < 0 or int(labels.max()) >= NUM_MARKERS:
        raise CaptumSiftError(f"expected labels (B,) in [0, {NUM_MARKERS}), got {tuple(labels.shape)}")
    batch = images.shape[0]
    grid_h, grid_w = images.shape[2] // patch_size, images.shape[3] // patch_size
    g = torch.Generator().manual_seed(seed)
    position = torch.randint(0, grid_h * grid_w, (batch,), generator=g)
    if not 0.0 <= agreement <= 1.0:
        raise CaptumSiftError(f"expected agreement in [0, 1], got {agreement!r}")
    random_kind = torch.randint(0, NUM_MARKERS, (batch,), generator=g)
    if correlated:
        agree = torch.rand(batch, generator=g) < agreement
        kind = torch.where(agree, labels, random_kind)
    else:
        kind = random_kind
    textures = marker_textures(marker_size)
    out = images.clone()
    offset = (patch_size - marker_size) // 2
    for b in range(batch):
        row, col = divmod(int(position[b]), grid_w)
        y0, x0 = row * patch_size + offset, col * patch_size + offset
        out[b, 0, y0 : y0 + marker_size, x0 : x0 + marker_size] = textures[int(kind[b])]
    return out, position, kind


def marker_masks(
    position: torch.Tensor, size: tuple[int, int], *, patch_size: int = 16, marker_size: int = 12
) -> torch.Tensor:
    """The pixels of each planted marker, (B, H, W) bool: the ground truth of :func:`plant_markers`' images.

    ``position`` (B,): the marker patch indices :func:`plant_markers` returns;
    ``size``: the images' (H, W). The marker is the ``marker_size`` square
    centred in its patch (12 of 16 px: 56 % of the patch, so as a patch mask
    it is exactly the marker's patch).

    Example:
        >>> marker_masks(torch.tensor([1]), (4, 8), patch_size=4, marker_size=2)[0].long()
        tensor([[0, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 0, 0, 0]])
    """
    height, width = size
    if height % patch_size or width % patch_size or not 0 < marker_size <= patch_size:
        raise CaptumSiftError(f"expected (H, W) tiled by {patch_size}-px patches and 0 < marker_size <= patch_size, "
                              f"got {tuple(size)} and marker_size {marker_size}")  # fmt: skip
    grid_w, n = width // patch_size, (height // patch_size) * (width // patch_size)
    if not isinstance(position, torch.Tensor) or position.dim() != 1 or (len(position) and not (
            0 <= int(position.min()) and int(position.max()) < n)):  # fmt: skip
        raise CaptumSiftError(f"expected marker positions (B,) in [0, {n}), got {position!r}")
    masks = torch.zeros(len(position), height, width, dtype=torch.bool)
    offset = (patch_size - marker_size) // 2
    for b, index in enumerate(position.tolist()):
        row, col = divmod(int(index), grid_w)
        y0, x0 = row * patch_size + offset, col * patch_size + offset
        masks[b, y0 : y0 + marker_size, x0 : x0 + marker_size] = True
    return masks
