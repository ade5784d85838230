"""Fashion-MNIST: idx files, and images at the size the default model takes them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .._checks import all_finite, check_int
from ..errors import CaptumSiftError
from .memory import check_memory

__all__ = [
    "DEFAULT_IMG_SIZE",
    "DEFAULT_PATCH_SIZE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_STD",
    "fashion_mnist_to_model_size",
    "load_fashion_mnist",
    "resize_8bit",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the idx files.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
#: Input size and patch size of the default model: 28 px upsampled to 112 px, 7 x 7 patches of 16 px,
#: so that SIFT finds keypoints on the garments (~29 % of patches are Key).
DEFAULT_IMG_SIZE = 112
DEFAULT_PATCH_SIZE = 16
#: Fashion-MNIST training-set mean and std of the pixels in [0, 1] (the model's normalisation).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise CaptumSiftError(f"cannot read idx file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise CaptumSiftError(f"expected an idx file of unsigned bytes (magic 0x00000801-04) in {path}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise CaptumSiftError(f"expected {expected} bytes in idx file {path} of shape {dims}, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()  # writable


def load_fashion_mnist(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from idx files: (N, 28, 28) uint8 images and (N,) uint8 labels.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: folder of the idx files; default Debian's ``dataset-fashion-mnist``
            location (``apt-get install dataset-fashion-mnist``).
    """
    if split not in ("train", "test"):
        raise CaptumSiftError(f"expected split 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else FASHION_MNIST_ROOT
    prefix = "train" if split == "train" else "t10k"
    files = [folder / f"{prefix}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
    files = [f if f.exists() else f.with_suffix("") for f in files]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise CaptumSiftError(
            f"Fashion-MNIST idx files not found: {missing}; install Debian's dataset-fashion-mnist or pass root=FOLDER"
        )
    return _read_idx(files[0]), _read_idx(files[1])


def resize_8bit(images: torch.Tensor, size: int, eight_bit: bool = True) -> torch.Tensor:
    """(N, C, H, W) pixels in [0, 1] -> (N, C, S, S): bilinear, clipped to [0, 1], rounded to 8-bit steps.

    With ``eight_bit=False`` the resized values are kept as they are (float
    input that was never 8-bit).

    Example:
        >>> x = torch.tensor([[[[0.0, 1.0]]]])
        >>> resize_8bit(x, 4)[0, 0, 0].mul(255).tolist()
        [0.0, 64.0, 191.0, 255.0]
    """
    x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return (x * 255).round() / 255 if eight_bit else x


def fashion_mnist_to_model_size(images: np.ndarray | torch.Tensor, size: int = DEFAULT_IMG_SIZE) -> torch.Tensor:
    """(N, H, W) images -> (N, 1, S, S) float in [0, 1]: bilinear upsampling (8-bit input stays on 8-bit steps).

    ``images`` are 8-bit (uint8, or integers in [0, 255]) or floats in [0, 1]
    (kept as they are, not rounded to 8-bit steps); anything else is refused. This is the image "as the
    model sees it": keypoints are counted on it, and the default model takes
    it after normalisation.
    """
    size = check_int(size, "size", low=1)
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.dim() != 3 or x.dtype == torch.bool or x.is_complex():
        raise CaptumSiftError(f"expected (N, H, W) 8-bit or [0, 1] float images, got shape {tuple(x.shape)} {x.dtype}")
    check_memory(x.shape[0] * size * size * 4 * 3, f"{x.shape[0]} images at size {size}")
    images_are_float = x.is_floating_point()
    if images_are_float:
        if x.numel() and (not all_finite(x) or float(x.min()) < 0 or float(x.max()) > 1):
            raise CaptumSiftError(
                f"expected float images in [0, 1], got values in [{float(x.min()):g}, {float(x.max()):g}]"
            )
        x = x.float().unsqueeze(1)
    else:
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
            raise CaptumSiftError(f"expected 8-bit images in [0, 255], got values in [{int(x.min())}, {int(x.max())}]")
        x = x.float().unsqueeze(1) / 255.0
    return resize_8bit(x, size, eight_bit=not images_are_float)
