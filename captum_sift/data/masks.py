"""Ground-truth masks of an image folder: one PNG per image, at the image's relative path with a .png suffix.

``images/cat/001.jpg`` has its mask at ``masks/cat/001.png``: a one-channel
PNG (mode 1, L, P or I;16) of the image's size whose nonzero pixels are
inside. It is resized and centre-cropped as :class:`~captum_sift.data.ImageFolder`
resizes the image (shorter side to the size, nearest neighbour so it stays
binary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from ..errors import CaptumSiftError
from .folders import display_path, files_fingerprint

__all__ = ["MASK_MODES", "load_mask", "mask_file", "masks_fingerprint"]

#: The PIL modes a mask file may have: one channel, nonzero = inside.
MASK_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I")


def mask_file(image: Path, images_root: Path, masks_root: Path) -> Path:
    """Where the mask of ``image`` (a file under ``images_root``) lies: same relative path, suffix .png."""
    return Path(masks_root) / Path(image).relative_to(images_root).with_suffix(".png")


def load_mask(path: Path, image: Path, size: int) -> torch.Tensor:
    """The mask of ``image`` as (size, size) bool, read from ``path`` and checked against the image's size."""
    shown = display_path(path)
    if not Path(path).is_file():
        raise CaptumSiftError(f"no mask for image {display_path(image)}: expected the file {shown}")
    try:
        with Image.open(image) as im:
            expected = im.size
        with Image.open(path) as m:
            mode, got = m.mode, m.size
            array = np.asarray(m) if mode in MASK_MODES else None
    except (OSError, ValueError) as exc:
        raise CaptumSiftError(f"cannot read the mask {shown} or its image: {exc}") from exc
    if array is None:
        raise CaptumSiftError(f"expected a one-channel mask (PNG mode {', '.join(MASK_MODES[:4])}), got mode {mode} "
                              f"in {shown}")  # fmt: skip
    if got != expected:
        raise CaptumSiftError(f"expected the mask {shown} to be {expected[0]} x {expected[1]} px like its image "
                              f"{display_path(image)}, got {got[0]} x {got[1]} px")  # fmt: skip
    inside = torch.from_numpy(np.ascontiguousarray(array != 0)).unsqueeze(0)
    if not bool(inside.any()):
        raise CaptumSiftError(f"expected a nonzero pixel in the mask {shown}, got an empty mask")
    resized = TF.resize(inside.to(torch.uint8), size, interpolation=TF.InterpolationMode.NEAREST_EXACT)
    return TF.center_crop(resized, [size, size])[0].bool()


def masks_fingerprint(paths: list[Path]) -> str:
    """sha256 of the mask files' paths, sizes and modification times (what a resumed run must match)."""
    return files_fingerprint(paths, [display_path(path) for path in paths])
