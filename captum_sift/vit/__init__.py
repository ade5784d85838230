"""Model -> adapter -> per-block attention (timm, torchvision, Hugging Face).

``families`` reads what each family says, ``adapter`` holds it (:func:`as_vit`, :class:`ViTAdapter`),
``inputs`` checks a batch once (:class:`Batch`), ``capture`` streams the attention block by block,
``parts`` reads a classifier's blocks and head as plain weights (:func:`vit_parts`).
"""

from .adapter import ViTAdapter, as_vit, iter_attention
from .capture import capturing, dropping_tokens, eval_mode, non_finite_attention, run_stem, stream_attention
from .families import IMAGENET_MEAN, IMAGENET_STD
from .inputs import Batch, check_model_space, to_model_and_pixels
from .parts import vit_parts

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batch",
    "ViTAdapter",
    "as_vit",
    "capturing",
    "check_model_space",
    "dropping_tokens",
    "eval_mode",
    "iter_attention",
    "non_finite_attention",
    "run_stem",
    "stream_attention",
    "to_model_and_pixels",
    "vit_parts",
]
