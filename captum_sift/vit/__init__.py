"""Model -> adapter -> per-block attention (timm, torchvision, Hugging Face)."""

from .adapter import FAMILIES, IMAGENET_MEAN, IMAGENET_STD, ViTAdapter, as_vit, eval_mode, non_finite_attention
from .capture import iter_attention, model_grid, num_prefix_tokens, patch_size_of
from .inputs import check_model_space, model_normalization, to_model_and_pixels

__all__ = [
    "FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ViTAdapter",
    "as_vit",
    "check_model_space",
    "eval_mode",
    "iter_attention",
    "model_grid",
    "model_normalization",
    "non_finite_attention",
    "num_prefix_tokens",
    "patch_size_of",
    "to_model_and_pixels",
]
