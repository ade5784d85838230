"""Data: shipped samples, Fashion-MNIST, image folders, the default model, the shortcut benchmark."""

from .embedded import (
    DEFAULT_ARCHITECTURE,
    checked_file,
    create_default_architecture,
    default_dataset,
    default_model,
    sha256_file,
)
from .fashion_mnist import (
    DEFAULT_IMG_SIZE,
    DEFAULT_PATCH_SIZE,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_ROOT,
    FASHION_MNIST_STD,
    fashion_mnist_to_model_size,
    load_fashion_mnist,
    resize_8bit,
)
from .folders import IMAGE_SUFFIXES, ImageFolder, decode_image, display_path
from .masks import MASK_MODES, load_mask, mask_file, masks_fingerprint
from .memory import available_memory, check_memory
from .samples import SAMPLE_PHOTOS, SKLEARN_PHOTOS, load_sample_photo, sample_images
from .shortcut import NUM_MARKERS, marker_masks, marker_textures, plant_markers

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_IMG_SIZE",
    "DEFAULT_PATCH_SIZE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_STD",
    "IMAGE_SUFFIXES",
    "MASK_MODES",
    "ImageFolder",
    "NUM_MARKERS",
    "SAMPLE_PHOTOS",
    "SKLEARN_PHOTOS",
    "available_memory",
    "check_memory",
    "checked_file",
    "create_default_architecture",
    "decode_image",
    "default_dataset",
    "default_model",
    "display_path",
    "fashion_mnist_to_model_size",
    "load_fashion_mnist",
    "load_mask",
    "load_sample_photo",
    "marker_masks",
    "marker_textures",
    "mask_file",
    "masks_fingerprint",
    "plant_markers",
    "resize_8bit",
    "sample_images",
    "sha256_file",
]
