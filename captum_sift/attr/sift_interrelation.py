"""SIFTInterrelation: the paper's per-patch θ score as a Captum attribution (SPEC §7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.log import log_usage
from torch import nn

from .._checks import check_index
from ..errors import CaptumSiftError
from ..keypoints import count_keypoints
from ..theta.analysis import analyze_batch, patch_scores_from_report, patch_thetas
from ..theta.maps import theta_maps
from ..theta.settings import LayerChoice, ThetaSettings
from ..vit.adapter import ViTAdapter
from ..vit.inputs import Batch
from .patches import _PatchAttribution

__all__ = ["SIFTInterrelation"]


#: What :class:`SIFTInterrelation` returns per patch.
OUTPUTS = ("theta", "centered", "rank")


def _transform(scores: torch.Tensor, output: str) -> torch.Tensor:
    """θ as is, minus each image's mean θ (signed), or each image's ranks scaled to [-1, 1]."""
    if output == "centered":
        return scores - torch.nanmean(scores, dim=1, keepdim=True)
    if output == "rank":
        n = scores.shape[1]
        if bool(torch.isnan(scores).any()):
            raise CaptumSiftError(
                "expected scores without NaN to rank patches, got NaN (gamma > 1 can leave S_i empty)"
            )
        order = torch.sort(scores, dim=1, stable=True).indices
        ranks = torch.empty_like(scores).scatter_(1, order, torch.arange(n, dtype=scores.dtype, device=scores.device)
                                                  .expand_as(scores).contiguous())  # fmt: skip
        return 2 * ranks / max(n - 1, 1) - 1
    return scores


def _expand_counts(counts: torch.Tensor | None, images: torch.Tensor, repeat: bool) -> torch.Tensor | None:
    """Counts for the images: as given, or (``repeat``) those of B' images each repeated k = B / B' times in a
    row, the order in which Captum's NoiseTunnel and ``sensitivity_max`` expand the inputs."""
    if not isinstance(repeat, bool):
        raise CaptumSiftError(f"expected repeat_counts to be True or False, got {repeat!r}")
    batch = images.shape[0]
    if not isinstance(counts, torch.Tensor) or counts.dim() < 1 or counts.shape[0] == batch:
        return counts  # the shape checks of the analysis name what is wrong
    given = counts.shape[0]
    if repeat and given > 0 and batch % given == 0:
        # A tiled batch (x.repeat(k, 1, 1, 1)) has image 0 again at B', not in a row: caught when the copies are exact.
        if given > 1 and torch.equal(images[0], images[given]) and not torch.equal(images[0], images[1]):
            raise CaptumSiftError(
                f"expected the {batch} inputs to be each of the {given} counted images repeated in a row "
                f"(repeat_interleave), got image 0 again at position {given}: a tiled batch (x.repeat) pairs "
                "counts with the wrong images; use x.repeat_interleave(k, dim=0)"
            )
        return counts.repeat_interleave(batch // given, dim=0)
    how = (
        f"{batch} is no multiple of {given}"
        if repeat
        else "pass repeat_counts=True when the inputs are each counted image repeated k times in a row "
        "(repeat_interleave, as Captum's NoiseTunnel and sensitivity_max expand them)"
    )
    raise CaptumSiftError(
        f"expected keypoint_counts for the {batch} input images, got counts for {given} images "
        f"(shape {tuple(counts.shape)}); {how}"
    )


class SIFTInterrelation(_PatchAttribution):
    """θ-based patch attribution of a ViT (paper §5.1, SPEC §7), as a Captum method.

    The attribution of every pixel is the score of its patch: θ_i (eq. 3)
    averaged over heads and the chosen layers (or of one ``layer`` and/or
    one ``head``), the same for all channels. It
    measures how much the patch's attention goes to keypoint patches; it does
    not depend on the class, so ``target`` is accepted (for drop-in use in
    Captum loops) and ignored.

    Args:
        model: a timm, torchvision or Hugging Face ViT, or a
            :class:`~captum_sift.vit.adapter.ViTAdapter`; its logits are Captum's
            ``forward_func``.
        settings: a :class:`~captum_sift.ThetaSettings`; its fields may also
            be given as keyword options: ``layers`` — None (all layers,
            default), layer indices, or a stage name ``"retrieval"`` /
            ``"capture"`` / ``"coach"`` (found per image; see
            :func:`~captum_sift.theta.analysis.patch_scores_from_report`) —,
            ``gamma``, ``weighted``, ``include_self``, ``min_keypoints``,
            ``keypoint_backend``.
        layer: None (default: the layers above) or one block, negative
            counting from the end: ``layer=l`` is ``layers=[l]``; giving
            both is refused.
        head: None (default: the mean over heads) or one head's index,
            negative counting from the end: θ_i of that head averaged over
            the chosen layers (for a stage name, the stages are still found
            on the head-mean θ_KK curve). ``return_report=True`` with a head
            runs one more forward for the report.
        image_space: ``"model"`` (inputs normalised as the model expects,
            Captum's usual case) or ``"pixel"`` (inputs in [0, 1]; Captum's
            ``forward_func`` then normalises them too, for ``infidelity``).
        mean, std: the model's input statistics (default: the adapter's).
        output: ``"theta"`` (default: θ itself, positive in a narrow band,
            e.g. 0.44-0.76 — use ``viz.overlay(minmax=True)``),
            ``"centered"`` (θ minus the image's mean θ: signed, so Captum's
            ``visualize_image_attr(..., sign="all")`` and the
            ``"masked_image"`` panel with ``sign="positive"`` show which
            patches look more at keypoints than the image's average), or
            ``"rank"`` (each image's ranks scaled to [-1, 1], lowest -1:
            what Top/Bottom masking uses, independent of θ's band).

    θ is no importance map: it says how much a patch's attention goes to
    keypoint patches, not how much the prediction depends on the patch. To
    find the patches a model relies on wrongly, use the spurious selection
    (paper §5.1: Key patches with the lowest θ; ``select_patches(...,
    mode="spurious")``). On a small ViT trained to rely only on a planted
    texture patch, that patch had the lowest θ in 82 % of the images where it
    held keypoints, while θ's top-1 was the planted patch in only 14 %
    (attention rollout: 97 %).

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
        >>> explainer = SIFTInterrelation(model, image_space="pixel")
        >>> x = torch.rand(2, 3, 32, 32)
        >>> attr = explainer.attribute(x, keypoint_counts=torch.tensor([[1, 0, 0, 2], [0, 3, 0, 0]]))
        >>> attr.shape == x.shape
        True

    Captum's wrappers and metrics (perturbed copies of every image, in a row):

        >>> from captum.attr import NoiseTunnel
        >>> counts = explainer.count_keypoints(x)  # once, on the clean images
        >>> smooth = NoiseTunnel(explainer).attribute(x, nt_type="smoothgrad", nt_samples=2, stdevs=0.05,
        ...                                           keypoint_counts=counts, repeat_counts=True)
        >>> smooth.shape == x.shape
        True
    """

    def __init__(
        self,
        model: nn.Module | ViTAdapter,
        settings: ThetaSettings | None = None,
        *,
        image_space: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        output: str = "theta",
        layer: int | None = None,
        head: int | None = None,
        **options: Any,
    ) -> None:
        if output not in OUTPUTS:
            raise CaptumSiftError(f"expected output in {OUTPUTS}, got {output!r}")
        self.output = output
        super().__init__(model, image_space=image_space, mean=mean, std=std)
        self.settings = ThetaSettings.resolve(settings, **options)
        if layer is not None:
            if self.settings.layers is not None:
                raise CaptumSiftError(
                    f"expected layer= or layers=, not both, got layer={layer!r} and layers={self.settings.layers!r}"
                )
            self.settings = ThetaSettings.resolve(
                self.settings, layers=(check_index(layer, "layer", self.vit.depth, "blocks"),)
            )
        self.settings.check_for(self.vit.depth)  # validate now, not at the first attribute()
        self.head = None if head is None else check_index(head, "head", self.vit.num_heads, "heads")

    @property
    def layers(self) -> LayerChoice:
        return self.settings.layers

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: torch.Tensor | tuple[torch.Tensor],
        keypoint_counts: torch.Tensor | None = None,
        target: Any = None,
        *,
        repeat_counts: bool = False,
        return_report: bool = False,
    ) -> Any:
        """Attribution of exactly ``inputs.shape`` (constant within each patch).

        Args:
            inputs: (B, C, H, W) images, or a 1-tuple of them (Captum style).
            keypoint_counts: t_j per patch, (B, N) or (B, Gh, Gw); counted on
                the images when None (on perturbed images too: values a
                perturbation pushed slightly out of [0, 1] are clipped for
                the count, see :func:`~captum_sift.vit.check_model_space`).
            target: ignored (θ does not depend on the class).
            repeat_counts: ``keypoint_counts`` are of B' images and the
                inputs are each of them repeated k = B / B' times in a row
                (``repeat_interleave``): the order in which Captum's
                NoiseTunnel and ``sensitivity_max`` expand the inputs, so
                counts of the clean images (:meth:`count_keypoints`) go
                through them. Without it, counts for another number of
                images than B are refused; with it, a batch tiled with
                ``x.repeat`` (image 0 exactly again at B') is refused.
            return_report: also return the :class:`~captum_sift.InterrelationReport`.

        Returns:
            The attribution (a tensor, or a 1-tuple if ``inputs`` was one), and
            the report if ``return_report``.
        """
        images, as_tuple = self._images(inputs)
        keypoint_counts = _expand_counts(keypoint_counts, images.detach(), repeat_counts)
        # The report (classes, focus index, query rows, sums) is only built when it is returned.
        layers = self.settings.layers
        if self.head is not None:
            maps = theta_maps(self.vit, images, keypoint_counts, self.settings, self.image_space)  # type: ignore[arg-type]
            one_head = maps.patch_thetas(self.head, self.settings.min_keypoints, with_kk=isinstance(layers, str))
            scores = one_head.scores(layers)
            if return_report:  # the report holds no per-head θ: its own forward, with the counts just used
                counts = maps.keypoint_counts
                report = analyze_batch(self.vit, images, counts, self.settings, self.image_space)  # type: ignore[arg-type]
        elif return_report:
            report = analyze_batch(self.vit, images, keypoint_counts, self.settings, self.image_space)  # type: ignore[arg-type]
            scores = patch_scores_from_report(report, layers)
        else:
            scores = patch_thetas(self.vit, images, keypoint_counts, self.settings, self.image_space).scores(layers)  # type: ignore[arg-type]
        out = self._spread(_transform(scores.to(images.device, images.dtype), self.output), images, as_tuple)
        return (out, report) if return_report else out

    def count_keypoints(self, inputs: torch.Tensor | tuple[torch.Tensor]) -> torch.Tensor:
        """Keypoint counts (B, Gh, Gw) of the images behind ``inputs`` (un-normalised first in model space).

        Count once on the clean images and pass the counts with
        ``repeat_counts=True`` through Captum's NoiseTunnel or
        ``sensitivity_max``: θ then measures the attention on the perturbed
        images against the clean images' keypoints.
        """
        images, _ = self._images(inputs)
        batch = Batch.build(self.vit, images, self.image_space)
        return count_keypoints(batch.pixels, self.vit.patch_size, backend=self.settings.keypoint_backend)
