"""The images a command runs on: the embedded or full Fashion-MNIST test set in memory, or an image folder."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import (
    DEFAULT_IMG_SIZE,
    FASHION_MNIST_ROOT,
    ImageFolder,
    check_memory,
    checked_file,
    default_dataset,
    resize_8bit,
    sha256_file,
)
from ..vit.adapter import ViTAdapter
from .loading import LoadedModel
from .options import RunOptions

__all__ = ["InMemory", "check_batch_memory", "load_data"]


@dataclass
class InMemory:
    """Images held in memory, read batch by batch like an :class:`~captum_sift.data.ImageFolder`."""

    images: torch.Tensor  # (N, C, S, S) pixels in [0, 1]
    labels: torch.Tensor
    source: str = ""  # what the data is made from, for the resume fingerprint

    def fingerprint(self) -> str:
        return self.source

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def load(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[tuple[str, str]]]:
        idx = torch.tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx], list(indices), []


def _data_source(full: bool) -> str:
    """What the built-in data is made from: the shipped file's sha256, or the idx files' sizes and times."""
    if not full:
        return "sha256:" + sha256_file(checked_file("subset"))
    files = sorted(FASHION_MNIST_ROOT.glob("t10k-*"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def load_data(options: RunOptions, loaded: LoadedModel) -> tuple[InMemory | ImageFolder, str]:
    """The data source the options name (lazy for folders), and a description."""
    channels = loaded.vit.in_chans
    size = options.img_size or loaded.img_size or 224
    check_batch_memory(loaded.vit, size, min(options.batch_size, options.limit or options.batch_size), options.device)
    if options.images is not None:
        class_map = dict(options.class_map) if options.class_map is not None else None
        return ImageFolder(options.images, size, channels, class_map), f"image folder {options.images}"
    full = options.data == "fashion-mnist-full"
    images, labels = default_dataset(full=full)
    images, labels = images[: options.limit], labels[: options.limit]  # before resizing: only what is used
    check_memory(images.shape[0] * channels * size * size * 4 * 2, f"{images.shape[0]} images at {size} px")
    if channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if size != DEFAULT_IMG_SIZE:
        images = resize_8bit(images, size)
    name = "Fashion-MNIST test set (10,000)" if full else "embedded Fashion-MNIST (1,000)"
    return InMemory(images.contiguous(), labels, _data_source(full)), name


def check_batch_memory(vit: ViTAdapter, size: int, batch_size: int, device: torch.device) -> None:
    """Refuse, with the figure, a batch whose attention maps cannot fit in memory (before any work).

    One block holds the attention scores and probabilities of every head,
    B x heads x T^2 float32 values each (T tokens), plus the captured
    probabilities of every block: (2 + depth) x B x heads x T^2 x 4 bytes.
    """
    tokens = (size // vit.patch_size) ** 2 + vit.num_prefix_tokens
    need = (2 + vit.depth) * batch_size * vit.num_heads * tokens**2 * 4 + batch_size * vit.in_chans * size**2 * 4 * 8
    check_memory(need, f"a batch of {batch_size} images at {size} px ({tokens} tokens)", device)
