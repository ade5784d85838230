"""Image folders read lazily, labels from sub-folder names; PIL images as tensors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from .._checks import as_int, check_int
from ..errors import CaptumSiftError

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "decode_image", "display_path"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class ImageFolder:
    """Images of a folder, read lazily batch by batch (labels from sub-folder names).

    Files with a suffix in :data:`IMAGE_SUFFIXES` are found recursively and
    sorted; the label of a file is the index of its first-level sub-folder
    among the sorted sub-folder names (torchvision's ImageFolder convention;
    -1 for files directly in the folder). Each image is resized (shorter side
    to ``size``, antialiased) and centre-cropped to ``size`` x ``size``, as
    timm's eval transform does, and kept on 8-bit steps.
    """

    def __init__(self, root: str | Path, size: int, channels: int = 3, class_map: dict[str, int] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CaptumSiftError(f"image folder not found: {display_path(self.root)}")
        if channels not in (1, 3):
            raise CaptumSiftError(f"expected 1 or 3 channels, got {channels}")
        self.size, self.channels = check_int(size, "size", low=1), channels
        # dangling links are kept: loading them fails, so they are listed among the skipped files
        self.files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink())
        )
        if not self.files:
            raise CaptumSiftError(f"no {'/'.join(IMAGE_SUFFIXES)} images found under {display_path(self.root)}")
        self.classes = sorted({p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root})
        if class_map is not None:
            missing = [c for c in self.classes if c not in class_map]
            bad = {k: v for k, v in class_map.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
            if missing or bad:
                raise CaptumSiftError(
                    f"expected a class index >= 0 for every sub-folder in the class map, "
                    f"missing {missing}, not an index {bad}"
                )
        self.class_map = class_map

    def __len__(self) -> int:
        return len(self.files)

    def label(self, path: Path) -> int:
        if path.parent == self.root:
            return -1
        name = path.relative_to(self.root).parts[0]
        return self.class_map[name] if self.class_map is not None else self.classes.index(name)

    def fingerprint(self) -> str:
        """sha256 of the sorted relative paths, sizes and modification times (what a resume must match)."""
        return files_fingerprint(self.files, [display_path(path.relative_to(self.root)) for path in self.files])

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[tuple[str, str]]]:
        """Images (n, C, S, S) in [0, 1], labels (n,), the indices read, and (path, reason) of unreadable files."""
        images, labels, read, skipped = [], [], [], []
        for index in indices:
            i = as_int(index)
            if i is None or not 0 <= i < len(self.files):
                raise CaptumSiftError(f"expected image indices in [0, {len(self.files)}), got {index!r}")
            path = self.files[i]
            try:
                with Image.open(path) as im:
                    tensor = decode_image(im, self.channels)
            except Exception as exc:  # a corrupt file is reported and skipped, never ends the run
                skipped.append((display_path(path), f"{type(exc).__name__}: {display_path(str(exc))}"))
                continue
            if tensor.dtype == torch.uint8:  # resized as 8-bit, so the pixels stay on 8-bit steps
                tensor = TF.resize(tensor, self.size, antialias=True).float() / 255.0
            else:
                tensor = TF.resize(tensor, self.size, antialias=True).clamp(0, 1)
            images.append(TF.center_crop(tensor, [self.size, self.size]))
            labels.append(self.label(path))
            read.append(i)
        if not images:
            return torch.zeros(0, self.channels, self.size, self.size), torch.zeros(0, dtype=torch.long), read, skipped
        return torch.stack(images), torch.tensor(labels), read, skipped


def files_fingerprint(paths: Sequence[Path], names: Sequence[str]) -> str:
    """sha256 of each file's name, size and modification time ("unreadable" where it cannot be read), in order."""
    digest = hashlib.sha256()
    for path, name in zip(paths, names, strict=True):
        try:
            stat = path.stat()
            info = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            info = "unreadable"
        digest.update(f"{name}\t{info}\n".encode())
    return digest.hexdigest()


def display_path(path: str | Path) -> str:
    """A path as printable text: bytes that are not UTF-8 shown as backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def decode_image(im: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image as a (C, H, W) tensor: uint8 for 8-bit images, float in [0, 1] for 16-bit ones.

    16-bit grayscale (``I;16*``, and ``I`` holding 16-bit values) is scaled by
    1/65535, never clipped to 8 bits; palette, 1-bit, RGBA (alpha dropped),
    CMYK and the rest go through PIL's conversion to L or RGB.
    """
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        array = np.asarray(im).astype(np.int64)
        if array.min() < 0 or array.max() > 65535:
            raise CaptumSiftError(f"expected a 16-bit image, got values in [{array.min()}, {array.max()}]")
        gray = torch.from_numpy((array / 65535.0).astype(np.float32)).unsqueeze(0)
        return gray if channels == 1 else gray.expand(3, -1, -1).contiguous()
    if im.mode == "F":
        raise CaptumSiftError("expected an 8- or 16-bit image, got a 32-bit float image (mode F)")
    array = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
