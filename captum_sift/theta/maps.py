"""θ_i per layer and head (SPEC §2-3, eqs. 2-3) as maps: the (B, L, h, N) tensor the analysis averages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from .._checks import as_int, check_index
from ..errors import CaptumSiftError
from ..vit import ViTAdapter, as_vit
from ..vit.inputs import Batch
from .analysis import PatchThetas, _prepare, _stream
from .functional import interrelation
from .settings import ThetaSettings

__all__ = ["ThetaMaps", "patch_theta_maps", "theta_maps"]


class ThetaMaps(NamedTuple):
    """θ_i of every analysed layer and head (:func:`theta_maps`)."""

    layers: list[int]  # the analysed layers, sorted
    theta: torch.Tensor  # (B, L, h, N); NaN where S_i is empty
    keypoint_counts: torch.Tensor  # (B, N)

    def patch_thetas(self, head: int | None = None, min_keypoints: int = 1, with_kk: bool = False) -> PatchThetas:
        """What the SPEC §7 scores need: θ of the mean over heads (None, as :func:`patch_thetas`) or of one head.

        ``with_kk``: θ_KK (B, L, h) of every head too, which a stage-name layer
        choice needs (the stages are found on the head-mean θ_KK curve either way).
        """
        theta = torch.nanmean(self.theta, dim=2) if head is None else self.theta[:, :, head]
        kk = None
        if with_kk:
            flat = interrelation(self.theta.flatten(1, 2), self.keypoint_counts, min_keypoints).kk
            kk = flat.view(self.theta.shape[:3])
        return PatchThetas(self.layers, theta, kk, self.keypoint_counts)


def theta_maps(
    vit: ViTAdapter,
    images: torch.Tensor | Batch,
    keypoint_counts: torch.Tensor | None,
    settings: ThetaSettings,
    image_space: Literal["model", "pixel"] = "model",
) -> ThetaMaps:
    """:func:`patch_theta_maps` on an adapter and resolved settings, with the layers and the counts it used.

    The same streamed computation as :func:`~captum_sift.theta.analyze_batch`
    (one non-fused forward, one layer's attention alive at a time), kept per head.
    """
    layers = settings.layer_list(vit.depth)
    batch, _ = _prepare(vit, images, keypoint_counts, settings, image_space, None)
    theta, _, _ = _stream(vit, batch, settings, layers, None)
    return ThetaMaps(layers, theta, batch.keypoint_counts)


def patch_theta_maps(
    model: nn.Module | ViTAdapter,
    images: torch.Tensor | Batch,
    keypoint_counts: torch.Tensor | None = None,
    settings: ThetaSettings | None = None,
    *,
    heads: int | Sequence[int] | None = None,
    image_space: Literal["model", "pixel"] = "model",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> torch.Tensor:
    """θ_i of every image, layer, head and patch (eqs. 2-3, SPEC §2-3): a (B, L, H, N) tensor.

    Entry ``[b, l, h, i]`` is θ_i of image b's patch i under head h of the
    l-th analysed layer: the share (weighted by t_j, or by count) of Key
    patches in the set S_i that patch i attends above its row's detection
    line. It is NaN where S_i is empty (possible only for gamma > 1), never
    0. The mean over heads ignoring NaN is the report's ``patch_theta``
    (:func:`~captum_sift.theta.analyze`), and eq. 4 over the patches of one
    (layer, head) its θ_KK / θ_NK.

    Args:
        model, images, keypoint_counts, settings, image_space, mean, std,
            options: as :func:`~captum_sift.theta.analyze`. The layers
            (``settings.layers`` or ``layers=``) are None (every block),
            layer indices (the output's L axis holds them sorted and
            de-duplicated, negative ones counting from the end), or a stage
            name (every block, as for ``analyze``).
        heads: None (every head), a head index, or a sequence of head
            indices (the H axis in the given order); negative ones count from
            the end; each is checked against the model's heads.

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3)
        >>> counts = torch.tensor([[1, 0, 2, 0], [0, 0, 0, 3]])
        >>> maps = patch_theta_maps(model, torch.rand(2, 3, 32, 32) * 2 - 1, counts, layers=[0, -1], heads=[2, 0])
        >>> maps.shape  # (B, L, H, N)
        torch.Size([2, 2, 2, 4])
    """
    vit = as_vit(model, mean=mean, std=std)
    theta_settings = ThetaSettings.resolve(settings, **options)
    theta_settings.layer_list(vit.depth)  # the layers and the heads are checked before any work
    chosen = _heads(heads, vit.num_heads)
    return theta_maps(vit, images, keypoint_counts, theta_settings, image_space).theta[:, :, chosen]


def _heads(heads: int | Iterable[int] | None, num_heads: int) -> list[int]:
    """Head indices, checked against the model's ``num_heads``, in the given order."""
    if heads is None:
        return list(range(num_heads))
    if as_int(heads) is not None:
        return [check_index(heads, "head", num_heads, "heads")]
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise CaptumSiftError(f"expected heads to be None, a head index or a sequence of them, got {heads!r}")
    chosen = [check_index(head, "every head", num_heads, "heads") for head in heads]
    if not chosen:
        raise CaptumSiftError("expected at least one head, got an empty selection")
    if len(set(chosen)) != len(chosen):  # -1 and num_heads - 1 are the same head
        raise CaptumSiftError(f"expected distinct heads, got {list(heads)} (heads {chosen})")
    return chosen
