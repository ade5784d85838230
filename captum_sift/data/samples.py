"""Sample photographs shipped with scikit-image and scikit-learn (no download)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from .._checks import check_int
from ..errors import CaptumSiftError
from .memory import check_memory

__all__ = ["SAMPLE_PHOTOS", "SKLEARN_PHOTOS", "load_sample_photo", "sample_images"]

#: Photographs of ``skimage.data`` that ship with scikit-image (no download).
SAMPLE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "immunohistochemistry",
    "hubble_deep_field",
    "stereo_motorcycle",
    "moon",
)
#: The two sample photographs of scikit-learn (``load_sample_image``).
SKLEARN_PHOTOS: tuple[str, ...] = ("china", "flower")


def load_sample_photo(name: str) -> np.ndarray:
    """One sample photo as an (H, W, 3) uint8 array (gray photos are repeated to RGB)."""
    if name in SKLEARN_PHOTOS:
        try:  # optional dependency
            from sklearn.datasets import load_sample_image
        except ImportError as exc:
            raise CaptumSiftError(f"sample photo {name!r} needs scikit-learn: pip install scikit-learn") from exc
        image = load_sample_image(f"{name}.jpg")
    elif name in SAMPLE_PHOTOS:
        try:  # optional dependency
            import skimage.data
        except ImportError as exc:
            raise CaptumSiftError(
                "the sample photos need scikit-image: pip install scikit-image (from a clone of captum_sift: "
                "pip install -c constraints.txt '.[samples]')"
            ) from exc
        image = getattr(skimage.data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
    else:
        raise CaptumSiftError(f"unknown sample photo {name!r}; expected one of {SAMPLE_PHOTOS + SKLEARN_PHOTOS}")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def sample_images(names: Sequence[str] | None = None, size: int = 224) -> torch.Tensor:
    """Sample photos as a batch, centre-cropped to a square and resized.

    Resizing is antialiased on the 8-bit image and the result stays on 8-bit
    steps, so the float batch is exactly what an 8-bit file would give.

    Args:
        names: photos to load, from :data:`SAMPLE_PHOTOS` (scikit-image) and
            :data:`SKLEARN_PHOTOS` (scikit-learn); default all of
            :data:`SAMPLE_PHOTOS`.
        size: side S of the output images.

    Returns:
        float32 tensor (B, 3, S, S) in [0, 1].

    Example:
        >>> x = sample_images(["astronaut", "coffee"], size=64)
        >>> x.shape, x.dtype, float(x.min()) >= 0.0, float(x.max()) <= 1.0
        (torch.Size([2, 3, 64, 64]), torch.float32, True, True)
    """
    size = check_int(size, "size", low=1)
    names = list(SAMPLE_PHOTOS if names is None else names)
    if not names:
        raise CaptumSiftError("expected at least one sample photo name, got none")
    check_memory(len(names) * 3 * size * size * (4 + 1 + 1), f"{len(names)} sample photos at size {size}")
    batch = []
    for name in names:
        image = torch.from_numpy(load_sample_photo(name)).permute(2, 0, 1)  # (3, H, W) uint8
        side = min(image.shape[1:])
        image = TF.center_crop(image, [side, side])
        image = TF.resize(image, [size, size], antialias=True)
        batch.append(image)
    return torch.stack(batch).float() / 255.0
