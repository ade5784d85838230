"""A small MAE (He et al. 2022) whose encoder is a timm ViT, with random or guided masking."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_number
from ..errors import CaptumSiftError
from .masking import guided_masking, random_masking

__all__ = ["MaskedAutoencoder"]


class MaskedAutoencoder(nn.Module):
    """Masked autoencoder: timm ViT encoder on the visible patches, light decoder, normalised-pixel loss.

    Args:
        encoder: a timm ``VisionTransformer`` with one class token and a
            position embedding that covers it (``patch_embed``, ``cls_token``,
            ``pos_embed``, ``blocks``, ``norm``); any image and patch size it accepts.
        decoder_dim, decoder_depth, decoder_heads: the decoder (timm ``Block`` s).
        mask_ratio: share of patches masked, in (0, 1).
        masking: ``"random"`` (MAE) or ``"guided"`` (SPEC §8: a key share β of
            the masked patches are keypoint patches; pass ``keypoint_counts`` and
            ``key_share`` to :meth:`forward`).
        min_keypoints: the Key bar of guided masking.
        norm_pix_loss: normalise each target patch by its mean and variance (MAE's default).

    Example:
        >>> import timm
        >>> enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, in_chans=1)
        >>> mae = MaskedAutoencoder(enc, decoder_dim=16, decoder_depth=1, masking="guided")
        >>> loss, pred, mask = mae(torch.rand(2, 1, 32, 32), torch.tensor([[1, 0, 0, 2], [0, 0, 3, 0]]), key_share=0.5)
        >>> pred.shape, mask.shape, int(mask.sum())
        (torch.Size([2, 4, 256]), torch.Size([2, 4]), 6)
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        masking: str = "random",
        min_keypoints: int = 1,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        needed = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm")
        if (
            any(getattr(encoder, name, None) is None for name in needed)
            or getattr(encoder, "num_prefix_tokens", 1) != 1
        ):
            raise CaptumSiftError(
                f"expected a timm VisionTransformer with one class token and {needed}, got {type(encoder).__name__}"
            )
        if getattr(encoder, "no_embed_class", False):
            raise CaptumSiftError("expected a position embedding that covers the class token (no_embed_class=False)")
        if masking not in ("random", "guided"):
            raise CaptumSiftError(f"expected masking 'random' or 'guided', got {masking!r}")
        mask_ratio = check_number(mask_ratio, "mask_ratio", 0, 1, low_open=True, high_open=True)
        self.encoder = encoder
        self.masking, self.mask_ratio, self.min_keypoints = masking, mask_ratio, min_keypoints
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.in_chans = int(encoder.patch_embed.proj.in_channels)
        num_patches = int(encoder.patch_embed.num_patches)
        dim = int(encoder.pos_embed.shape[-1])
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.in_chans)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, P*P*C), patches in row-major order, pixels (p, q, c) inside."""
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def forward_encoder(
        self,
        images: torch.Tensor,
        keypoint_counts: torch.Tensor | None = None,
        key_share: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self._patch_tokens(images)
        if self.masking == "guided":
            if keypoint_counts is None or key_share is None:
                raise CaptumSiftError("guided masking needs keypoint_counts and key_share")
            x, mask, ids_restore = guided_masking(
                x, keypoint_counts, self.mask_ratio, key_share, min_keypoints=self.min_keypoints,
                generator=generator, noise=noise,
            )  # fmt: skip
        else:
            x, mask, ids_restore = random_masking(x, self.mask_ratio, generator=generator, noise=noise)
        return self._encode(x), mask, ids_restore

    def _patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus their position embeddings, (B, N, D): what MAE masks."""
        x = self.encoder.patch_embed(images)
        if x.dim() == 4:  # NHWC output formats
            x = x.flatten(1, 2)
        return x + self.encoder.pos_embed[:, 1:]

    def _encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The class token (with its position) in front of the visible tokens, through the blocks and norm."""
        enc = self.encoder
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return enc.norm(enc.blocks(torch.cat([cls, tokens], dim=1)))

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masked], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches (normalised pixels by default)."""
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self,
        images: torch.Tensor,
        keypoint_counts: torch.Tensor | None = None,
        key_share: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, pred (B, N, P*P*C), mask (B, N) with 1 = masked)."""
        latent, mask, ids_restore = self.forward_encoder(images, keypoint_counts, key_share, generator, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(images, pred, mask), pred, mask

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen-encoder features for a linear probe: the mean of the patch tokens, all patches visible."""
        return self._encode(self._patch_tokens(images))[:, 1:].mean(dim=1)
