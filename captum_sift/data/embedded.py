"""The embedded default: a small timm ViT trained on Fashion-MNIST and 1,000 of its test images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int
from ..errors import CaptumSiftError
from .fashion_mnist import (
    DEFAULT_IMG_SIZE,
    DEFAULT_PATCH_SIZE,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_to_model_size,
    load_fashion_mnist,
)

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "checked_file",
    "create_default_architecture",
    "default_dataset",
    "default_model",
    "sha256_file",
]

_PACKAGE_DATA = Path(__file__).resolve().parents[1] / "_data"
_MANIFEST = _PACKAGE_DATA / "manifest.json"

#: timm.create_model arguments of the default architecture when the package ships no manifest.
DEFAULT_ARCHITECTURE = {
    "model_name": "vit_tiny_patch16_224",
    "img_size": DEFAULT_IMG_SIZE,
    "patch_size": DEFAULT_PATCH_SIZE,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 64,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,
}


def create_default_architecture(config: dict | None = None) -> torch.nn.Module:
    """The default model's architecture (random weights): a small timm ViT for 1-channel 112 px images.

    ``config`` (timm.create_model arguments) defaults to the shipped manifest's.
    """
    import timm  # startup cost: seconds, paid only when the default model is built

    if config is None:
        config = json.loads(_MANIFEST.read_text())["architecture"] if _MANIFEST.exists() else DEFAULT_ARCHITECTURE
    model = timm.create_model(**config, pretrained=False)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "mean": (FASHION_MNIST_MEAN,),
        "std": (FASHION_MNIST_STD,),
        "input_size": (1, DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE),
        "num_classes": 10,
        "label_names": FASHION_MNIST_CLASSES,
    }
    return model


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def checked_file(key: str) -> Path:
    """The shipped file the manifest lists under ``key`` (``"weights"``, ``"subset"``), its sha256 checked."""
    if not _MANIFEST.exists():
        raise CaptumSiftError(f"the embedded default is missing ({_MANIFEST}); reinstall captum_sift")
    entry = json.loads(_MANIFEST.read_text())["files"][key]
    path = _PACKAGE_DATA / entry["name"]
    if not path.exists() or sha256_file(path) != entry["sha256"]:
        raise CaptumSiftError(f"embedded file {path.name} is missing or its sha256 does not match the manifest")
    return path


def default_model() -> torch.nn.Module:
    """The embedded default: a small timm ViT trained on Fashion-MNIST (eval mode, CPU).

    Weights are loaded with ``weights_only=True`` after a sha256 check; how
    they were made and how good they are is in ``docs/default_model.md`` and
    in the package's ``_data/manifest.json``.
    """
    model = create_default_architecture()
    state = torch.load(checked_file("weights"), map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def default_dataset(limit: int | None = None, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST test images at the default model's size, with labels.

    Args:
        limit: keep the first ``limit`` images.
        full: the whole 10,000-image test set from Debian's package instead
            of the 1,000 images shipped in the package (100 per class).

    Returns:
        images (N, 1, 112, 112) float in [0, 1] and labels (N,) long.
    """
    if full:
        images, labels = load_fashion_mnist("test")
    else:
        with np.load(checked_file("subset")) as data:
            images, labels = data["images"], data["labels"]
    if limit is not None:
        limit = check_int(limit, "limit", low=1)
        images, labels = images[:limit], labels[:limit]
    return fashion_mnist_to_model_size(images), torch.from_numpy(np.array(labels, dtype=np.int64))
