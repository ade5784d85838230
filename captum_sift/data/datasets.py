"""Data: sample photographs, Fashion-MNIST, and the embedded default model and data set."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from ..errors import CaptumSiftError

__all__ = [
    "DEFAULT_IMG_SIZE",
    "DEFAULT_PATCH_SIZE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "SAMPLE_PHOTOS",
    "SKLEARN_PHOTOS",
    "create_default_architecture",
    "default_dataset",
    "default_model",
    "fashion_mnist_to_model_size",
    "load_fashion_mnist",
    "load_sample_photo",
    "sample_images",
]

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
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as exc:
            raise CaptumSiftError(f"sample photo {name!r} needs scikit-learn: pip install scikit-learn") from exc
        image = load_sample_image(f"{name}.jpg")
    elif name in SAMPLE_PHOTOS:
        try:
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
    from .._checks import check_int

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


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes that can still be allocated: the free GPU memory for CUDA, else MemAvailable (or physical memory)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return 2**62


def check_memory(nbytes: float, what: str, device: str | torch.device = "cpu") -> None:
    """Refuse, with the figures, work whose estimated memory ``nbytes`` exceeds what the machine has free."""
    free = available_memory(device)
    if nbytes > free:
        raise CaptumSiftError(f"{what} needs about {_gib(nbytes)} of memory, {_gib(free)} is free: use a smaller size")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes < 2**50 else f"{nbytes / 2**40:.3g} TiB"


# -- Fashion-MNIST and the embedded default -------------------------------------------
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
_PACKAGE_DATA = Path(__file__).resolve().parents[1] / "_data"
_MANIFEST = _PACKAGE_DATA / "manifest.json"


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


def fashion_mnist_to_model_size(images: np.ndarray | torch.Tensor, size: int = DEFAULT_IMG_SIZE) -> torch.Tensor:
    """(N, H, W) images -> (N, 1, S, S) float in [0, 1]: bilinear upsampling (8-bit input stays on 8-bit steps).

    ``images`` are 8-bit (uint8, or integers in [0, 255]) or floats in [0, 1]
    (kept as they are, not rounded to 8-bit steps); anything else is refused. This is the image "as the
    model sees it": keypoints are counted on it, and the default model takes
    it after normalisation.
    """
    from .._checks import all_finite, check_int

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
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x if images_are_float else (x * 255).round() / 255


def create_default_architecture(config: dict | None = None) -> torch.nn.Module:
    """The default model's architecture (random weights): a small timm ViT for 1-channel 112 px images.

    ``config`` (timm.create_model arguments) defaults to the shipped manifest's.
    """
    import timm

    if config is None:
        config = json.loads(_MANIFEST.read_text())["architecture"] if _MANIFEST.exists() else _DEFAULT_ARCH
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


_DEFAULT_ARCH = {
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checked_file(key: str) -> Path:
    if not _MANIFEST.exists():
        raise CaptumSiftError(f"the embedded default is missing ({_MANIFEST}); reinstall captum_sift")
    entry = json.loads(_MANIFEST.read_text())["files"][key]
    path = _PACKAGE_DATA / entry["name"]
    if not path.exists() or _sha256(path) != entry["sha256"]:
        raise CaptumSiftError(f"embedded file {path.name} is missing or its sha256 does not match the manifest")
    return path


def default_model() -> torch.nn.Module:
    """The embedded default: a small timm ViT trained on Fashion-MNIST (eval mode, CPU).

    Weights are loaded with ``weights_only=True`` after a sha256 check; how
    they were made and how good they are is in ``docs/default_model.md`` and
    in the package's ``_data/manifest.json``.
    """
    model = create_default_architecture()
    state = torch.load(_checked_file("weights"), map_location="cpu", weights_only=True)
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
        with np.load(_checked_file("subset")) as data:
            images, labels = data["images"], data["labels"]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise CaptumSiftError(f"expected limit to be an int >= 1, got {limit!r}")
        images, labels = images[:limit], labels[:limit]
    return fashion_mnist_to_model_size(images), torch.from_numpy(np.array(labels, dtype=np.int64))


# -- image folders -------------------------------------------------------------------
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
        from .._checks import check_int

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
        digest = hashlib.sha256()
        for path in self.files:
            try:
                stat = path.stat()
                info = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:
                info = "unreadable"
            digest.update(f"{display_path(path.relative_to(self.root))}\t{info}\n".encode())
        return digest.hexdigest()

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[tuple[str, str]]]:
        """Images (n, C, S, S) in [0, 1], labels (n,), the indices read, and (path, reason) of unreadable files."""
        from PIL import Image

        images, labels, read, skipped = [], [], [], []
        from .._checks import as_int

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
            if tensor.dtype == torch.uint8:  # 8-bit images stay on 8-bit steps, as before
                tensor = TF.resize(tensor, self.size, antialias=True).float() / 255.0
            else:
                tensor = TF.resize(tensor, self.size, antialias=True).clamp(0, 1)
            images.append(TF.center_crop(tensor, [self.size, self.size]))
            labels.append(self.label(path))
            read.append(i)
        if not images:
            return torch.zeros(0, self.channels, self.size, self.size), torch.zeros(0, dtype=torch.long), read, skipped
        return torch.stack(images), torch.tensor(labels), read, skipped


def display_path(path: str | Path) -> str:
    """A path as printable text: bytes that are not UTF-8 shown as backslash escapes."""
    import os

    return os.fsencode(path).decode("utf-8", "backslashreplace")


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def decode_image(im, channels: int) -> torch.Tensor:
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
