"""SIFTInterrelation: the paper's per-patch θ score as a Captum attribution (SPEC §7)."""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import Attribution
from torch import nn

from .._checks import shape_of
from ..analysis import LayerChoice, analysis_layers, analyze, patch_scores_from_report
from ..attention import _blocks, model_grid, patch_size_of
from ..errors import CaptumSiftError
from ..report import InterrelationReport

__all__ = ["SIFTInterrelation", "patch_feature_mask", "patch_scores_to_pixels"]


def patch_scores_to_pixels(scores: torch.Tensor, shape: torch.Size | tuple[int, ...], patch_size: int) -> torch.Tensor:
    """Spread per-patch scores (B, N) over each patch's pixels and all channels -> ``shape`` (B, C, H, W)."""
    batch, channels, height, width = shape
    grid_h, grid_w = height // patch_size, width // patch_size
    if scores.shape != (batch, grid_h * grid_w):
        raise CaptumSiftError(
            f"expected scores of shape (B, N) = ({batch}, {grid_h * grid_w}), got {tuple(scores.shape)}"
        )
    grid = scores.view(batch, 1, grid_h, grid_w)
    pixels = grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return pixels.expand(batch, channels, height, width).contiguous()


def patch_feature_mask(height: int, width: int, patch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Patch index of every pixel, row-major, as a (1, 1, H, W) long tensor (Captum's ``feature_mask``)."""
    ids = torch.arange((height // patch_size) * (width // patch_size), device=device).view(
        1, 1, height // patch_size, width // patch_size
    )
    return ids.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


class SIFTInterrelation(Attribution):
    """θ-based patch attribution of a timm ViT (paper §5.1, SPEC §7), as a Captum method.

    The attribution of every pixel is the score of its patch: θ_i (eq. 3)
    averaged over heads and the chosen layers, the same for all channels. It
    measures how much the patch's attention goes to keypoint patches; it does
    not depend on the class, so ``target`` is accepted (for drop-in use in
    Captum loops) and ignored.

    Args:
        model: a timm Vision Transformer (also Captum's ``forward_func``).
        layers: None (all layers, default), layer indices, or a stage name
            ``"retrieval"`` / ``"capture"`` / ``"coach"`` (found per image; see
            :func:`~captum_sift.analysis.patch_scores_from_report`).
        gamma: detection-line height (eq. 2).
        weighted: weighted θ (default) or unweighted.
        min_keypoints: Key(j) <=> t_j >= min_keypoints.
        keypoint_backend: backend of :func:`~captum_sift.count_keypoints`.
        image_space: ``"model"`` (inputs normalised as the model expects,
            Captum's usual case) or ``"pixel"`` (inputs in [0, 1]).

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
        >>> explainer = SIFTInterrelation(model, image_space="pixel")
        >>> x = torch.rand(2, 3, 32, 32)
        >>> attr = explainer.attribute(x, keypoint_counts=torch.tensor([[1, 0, 0, 2], [0, 3, 0, 0]]))
        >>> attr.shape == x.shape
        True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: LayerChoice = None,
        gamma: float = 1.0,
        weighted: bool = True,
        min_keypoints: int = 1,
        keypoint_backend: str = "kornia",
        image_space: str = "model",
    ) -> None:
        blocks = _blocks(model)
        analysis_layers(layers, len(blocks))  # validate now, not at the first attribute()
        if isinstance(layers, str) and len(blocks) < 3:
            raise CaptumSiftError(f"expected at least 3 blocks for stage {layers!r}, got {len(blocks)}")
        super().__init__(model)
        self.model = model
        self.layers = layers
        self.options = {
            "gamma": gamma,
            "weighted": weighted,
            "min_keypoints": min_keypoints,
            "keypoint_backend": keypoint_backend,
            "image_space": image_space,
        }

    def has_convergence_delta(self) -> bool:
        return False

    def attribute(  # type: ignore[override]
        self,
        inputs: torch.Tensor | tuple[torch.Tensor],
        keypoint_counts: torch.Tensor | None = None,
        target: Any = None,
        *,
        return_report: bool = False,
    ) -> Any:
        """Attribution of exactly ``inputs.shape`` (constant within each patch).

        Args:
            inputs: (B, C, H, W) images, or a 1-tuple of them (Captum style).
            keypoint_counts: t_j per patch, (B, N) or (B, Gh, Gw); counted on
                the images when None.
            target: ignored (θ does not depend on the class).
            return_report: also return the :class:`~captum_sift.InterrelationReport`.

        Returns:
            The attribution (a tensor, or a 1-tuple if ``inputs`` was one), and
            the report if ``return_report``.
        """
        as_tuple = isinstance(inputs, tuple)
        if as_tuple:
            if len(inputs) != 1:
                raise CaptumSiftError(f"expected one input tensor, got a tuple of {len(inputs)}")
            (images,) = inputs
        else:
            images = inputs
        report = self._report(images, keypoint_counts)
        scores = patch_scores_from_report(report, self.layers).to(images.device, images.dtype)
        attributions = patch_scores_to_pixels(scores, images.shape, patch_size_of(self.model))
        out: Any = (attributions,) if as_tuple else attributions
        return (out, report) if return_report else out

    def _report(self, images: torch.Tensor, keypoint_counts: torch.Tensor | None) -> InterrelationReport:
        return analyze(
            self.model,
            images,
            keypoint_counts,
            layers=analysis_layers(self.layers, len(_blocks(self.model))),
            **self.options,  # type: ignore[arg-type]
        )

    def feature_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """Patch index of every pixel (1, 1, H, W).

        Captum's FeatureAblation, ShapleyValueSampling, Lime and KernelShap take
        it as ``feature_mask``, to perturb the same patches θ scores.
        """
        if isinstance(inputs, tuple):
            inputs = inputs[0]
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise CaptumSiftError(f"expected inputs of shape (B, C, H, W), got {shape_of(inputs)}")
        model_grid(self.model, inputs)
        return patch_feature_mask(inputs.shape[2], inputs.shape[3], patch_size_of(self.model), inputs.device)
