"""Images into a model: pixel or model-space input checked once, turned into model input and pixels.

Keypoints are counted on pixels in [0, 1]; the model reads its normalised input. Either space comes in
(``image_space``), and the other is derived and checked here. A :class:`Batch` holds both, the patch
grid and the keypoint counts, built and checked once per batch by :meth:`Batch.build`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._checks import all_finite, check_counts, check_image_space, check_images, shape_of
from ..errors import CaptumSiftError

if TYPE_CHECKING:
    from .adapter import ViTAdapter

__all__ = ["Batch", "check_model_space", "to_model_and_pixels"]

# Undoing the normalisation of a normalised image gives back [0, 1] up to rounding.
_TOL = 1e-4
# A perturbation (Captum's NoiseTunnel, sensitivity_max, infidelity) pushes pixels out of [0, 1], but its noise
# averages out over a patch (sigma / P for P x P pixels); a wrong normalisation (or 0..255 values) moves whole
# regions. Patch means (per image and channel) may leave [0, 1] by _PATCH_TOL + 5 sigma / P, sigma the image's
# noise level estimated from its neighbour differences (their median: edges hardly move it).
_PATCH_TOL = 0.05
# A normalised image whose normalisation is undone usually spans most of [0, 1]; raw pixels taken for normalised
# ones, or other statistics, squeeze it into a narrow band. So can a dark or hazy photo: a warning, not an error.
_MIN_SPAN = 0.5
# Input that is itself in [0, 1] (raw pixels?) must spread wider still once de-normalised.
_MIN_SPAN_PIXELS = 0.75


def _stats_hint(vit: ViTAdapter) -> str:
    return f"mean={list(vit.mean)}, std={list(vit.std)}"


_ADVICE = (
    "if they are pixels in [0, 1], pass image_space='pixel'; if they were normalised with other "
    "statistics, pass those as mean=/std="
)


def _patch_means_within(pixels: torch.Tensor, patch_size: int) -> tuple[bool, float, float, float]:
    """Whether the patch means of ``pixels`` leave [0, 1] by no more than a perturbation's noise explains.

    Returns (within, lowest patch mean, highest patch mean, the smallest tolerance of the images).
    """
    pixels = pixels.float()
    height, width = pixels.shape[-2:]
    if height % patch_size or width % patch_size:  # the model refuses the size later, with its own message
        patch_size = 1
    means = torch.nn.functional.avg_pool2d(pixels, patch_size).flatten(1)  # (B, C Gh Gw)
    steps = (pixels[..., :, 1:] - pixels[..., :, :-1]).abs().flatten(1)
    sigma = steps.median(dim=1).values / (0.6745 * math.sqrt(2))  # (B,): white noise's sigma from its MAD
    tolerance = _PATCH_TOL + 5 * sigma / patch_size
    beyond = torch.maximum(-means, means - 1).amax(dim=1)  # (B,): how far the patch means leave [0, 1]
    return bool((beyond <= tolerance).all()), float(means.min()), float(means.max()), float(tolerance.min())


def check_model_space(vit: ViTAdapter, images: torch.Tensor, need_pixels: bool = True) -> torch.Tensor | None:
    """Pixels in [0, 1] behind finite model-space ``images`` (None unless ``need_pixels``); an error when they
    cannot be normalised ones.

    One pass takes every channel's minimum and maximum in every image (NaN
    propagates, so it settles finiteness too); ``x * std + mean`` is monotone
    in float arithmetic as well, so the pixel range and the channel spans
    follow from them exactly, without a pass over the pixels.

    Refused (certainly wrong): de-normalised values outside [0, 1] whose
    patch means (per image and channel) leave [0, 1] too, by more than
    0.05 + 5 sigma / P, sigma the image's noise level (estimated from the
    median neighbour difference): 0..255 values, other statistics over a
    photo with bright or dark regions. Values outside [0, 1] within that
    are a perturbation's noise (Captum's NoiseTunnel, ``sensitivity_max``,
    ``infidelity``) or a resize's ringing: the pixels are clipped to [0, 1].
    A batch whose widest channel spans < 0.5 (< 0.75 when the input itself
    lies in [0, 1]) only warns, once per statistics: raw pixels or other
    statistics squeeze it so, but so can a dark or hazy photo. Statistics
    close to the right ones (CLIP's for ImageNet's) pass unseen.
    """
    if images.numel() == 0:
        raise CaptumSiftError(f"expected non-empty images, got shape {tuple(images.shape)}")
    images = images.detach()
    mean, std = vit.stats(images)
    flat = images.flatten(2)
    lo, hi = flat.amin(2), flat.amax(2)  # (B, C): NaN propagates
    if not (all_finite(lo) and all_finite(hi)):
        raise CaptumSiftError("expected finite floating-point images")
    m, s = mean.view(1, -1), std.view(1, -1)
    ends = torch.stack([lo * s + m, hi * s + m])  # the pixels' per-channel ends, as the pixels round them
    p_lo, p_hi = ends.amin(0), ends.amax(0)
    lo_all, hi_all = float(p_lo.min()), float(p_hi.max())
    span = float((p_hi - p_lo).max())  # the widest channel of the widest image
    pixels = None
    if lo_all < -_TOL or hi_all > 1 + _TOL:
        pixels = (images * std).add_(mean)
        within, mean_lo, mean_hi, tolerance = _patch_means_within(pixels, vit.patch_size)
        if not within:
            raise CaptumSiftError(
                f"images given as model input (image_space='model') are not normalised with the model's statistics "
                f"({_stats_hint(vit)}): undoing that normalisation gives values in [{lo_all:.3g}, {hi_all:.3g}] and "
                f"patch means in [{mean_lo:.3g}, {mean_hi:.3g}], not [0, 1] (a perturbation's noise averages out "
                f"over a patch: its patch means leave [0, 1] by less than ~{tolerance:.2g} here); " + _ADVICE
            )
    looks_like_pixels = float(lo.min()) >= 0.0 and float(hi.max()) <= 1.0
    bar = _MIN_SPAN_PIXELS if looks_like_pixels else _MIN_SPAN
    if span < bar:
        # One text per statistics and bar: Python's warning registry shows it once, not once per batch.
        warnings.warn(
            f"images given as model input (image_space='model') may be un-normalised or normalised with other "
            f"statistics than the model's ({_stats_hint(vit)}): undoing that normalisation leaves every channel "
            f"of every image in a band narrower than {bar:g} (raw pixels passed as model input land in "
            f"[mean, mean + std]; a dark or hazy photo can be that narrow too); " + _ADVICE,
            UserWarning,
            stacklevel=2,
        )
    if not need_pixels:
        return None
    if pixels is None:
        pixels = (images * std).add_(mean)
    return pixels.clamp_(0, 1)


def _check_pixel_input(vit: ViTAdapter, images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] for keypoints; values a perturbation pushed out of [0, 1] are clipped (the model sees
    them as given), values no perturbation explains are refused, see :func:`check_model_space`."""
    if not images.is_floating_point() or images.numel() == 0:
        return check_images(images)  # its messages for integer and empty input
    lo, hi = (float(v) for v in torch.aminmax(images))
    if lo >= 0.0 and hi <= 1.0:
        return images
    if not all_finite(images):
        return check_images(images)  # names the NaN / Inf values
    within, mean_lo, mean_hi, tolerance = _patch_means_within(images, vit.patch_size)
    if within:
        return images.clamp(0, 1)
    hint = "; this looks like a 0..255 image: divide it by 255" if lo >= 0.0 and hi > 2.0 else ""
    raise CaptumSiftError(
        f"expected pixel images (image_space='pixel') with values in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
        f"and patch means in [{mean_lo:.3g}, {mean_hi:.3g}] (a perturbation's noise averages out over a patch: "
        f"its patch means leave [0, 1] by less than ~{tolerance:.2g} here){hint}"
    )


def _check_shape(vit: ViTAdapter, images: object) -> torch.Tensor:
    """``images`` as a (B, C, H, W) tensor with data and the model's channels (detached)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise CaptumSiftError(f"expected images of shape (B, C, H, W), got {shape_of(images)}")
    if images.device.type == "meta":
        raise CaptumSiftError("expected images with data (on a CPU or an accelerator), got a tensor on the meta device")
    if images.shape[1] != vit.in_chans:
        raise CaptumSiftError(f"expected {vit.in_chans}-channel images for this model, got shape {tuple(images.shape)}")
    return images.detach()


def _convert(
    vit: ViTAdapter, images: torch.Tensor, image_space: str, need_pixels: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(model input, pixels or None) of shape-checked ``images``: their values checked in ``image_space``."""
    if image_space == "pixel":
        pixels = _check_pixel_input(vit, images)
        mean, std = vit.stats(images)
        return ((images - mean) / std).to(vit.dtype), pixels
    if not images.is_floating_point():
        raise CaptumSiftError("expected finite floating-point images")
    return images, check_model_space(vit, images, need_pixels)


def to_model_and_pixels(
    vit: ViTAdapter, images: torch.Tensor, image_space: str, need_pixels: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(model input, pixel images in [0, 1] or None when not needed) for images in ``image_space``.

    Both spaces are checked the same way whether pixels are needed or not
    (:func:`check_model_space`). Pixel input becomes model input in the
    model's dtype (a float64, half or bfloat16 model gets its own dtype).
    """
    check_image_space(image_space)
    return _convert(vit, _check_shape(vit, images), image_space, need_pixels)


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch of images, checked once: what keypoint counting, attention capture, masking and logits read.

    Build it with :meth:`Batch.build`; everything downstream reads its fields
    and checks nothing again (:meth:`ViTAdapter.iter_attention
    <captum_sift.vit.adapter.ViTAdapter.iter_attention>` and
    :meth:`~captum_sift.vit.adapter.ViTAdapter.capturing` take a Batch in
    place of model input).

    Attributes:
        model_input: (B, C, H, W), normalised as the model expects; pixel
            input is normalised into the model's dtype, model input is kept
            as given (detached).
        pixels: (B, C, H, W) in [0, 1] (values a perturbation pushed slightly
            out of [0, 1] clipped), or None when not asked for.
        grid: the patch grid (Gh, Gw); N = Gh * Gw.
        keypoint_counts: t_j of every patch, (B, N) int64 on the images'
            device, or None when none were given.

    Example:
        >>> import timm
        >>> from captum_sift.vit import as_vit
        >>> vit = as_vit(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1))
        >>> batch = Batch.build(vit, torch.rand(2, 3, 32, 32), "pixel", torch.tensor([[1, 0, 0, 2], [0, 3, 0, 0]]))
        >>> batch.grid, batch.keypoint_counts.shape, batch.pixels.shape
        ((2, 2), torch.Size([2, 4]), torch.Size([2, 3, 32, 32]))
    """

    model_input: torch.Tensor
    pixels: torch.Tensor | None
    grid: tuple[int, int]
    keypoint_counts: torch.Tensor | None = None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def build(
        cls,
        vit: ViTAdapter,
        images: torch.Tensor,
        image_space: str,
        keypoint_counts: torch.Tensor | None = None,
        *,
        need_pixels: bool = True,
    ) -> Batch:
        """Check ``images`` (in ``image_space``) and ``keypoint_counts`` once, as :func:`to_model_and_pixels`
        and :meth:`with_counts` do, and hold the model input, the pixels (when ``need_pixels``), the grid and
        the counts.

        The shape (B, C, H, W), the channels and the grid (H and W multiples
        of the patch size) are checked before any value is read.
        """
        check_image_space(image_space)
        images = _check_shape(vit, images)
        grid = vit.grid(images)
        model_input, pixels = _convert(vit, images, image_space, need_pixels)
        batch = cls(model_input, pixels, grid)
        return batch if keypoint_counts is None else batch.with_counts(keypoint_counts)

    def with_counts(self, keypoint_counts: torch.Tensor) -> Batch:
        """This batch with ``keypoint_counts`` (B, N) or (B, Gh, Gw): non-negative integral values, checked."""
        counts = check_counts(keypoint_counts, self.model_input.shape[0], self.num_patches)
        return dataclasses.replace(self, keypoint_counts=counts.to(self.model_input.device).long())
