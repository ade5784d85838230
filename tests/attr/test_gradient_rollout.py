"""GradientRollout (Chefer et al. 2021b) against a plain loop written here, for timm, torchvision and HF."""

import dataclasses
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from captum_sift import CaptumSiftError
from captum_sift.attr import GradientRollout
from captum_sift.vit.adapter import as_vit

CLASSES = 4


def tiny_timm(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3, embed_dim=32, num_heads=2,
        num_classes=CLASSES, **kwargs,
    ).eval()  # fmt: skip


def tiny_torchvision():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=CLASSES
    ).eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: every gradient would be 0
    return model


def tiny_hf():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32, patch_size=16, num_hidden_layers=3, num_attention_heads=2, hidden_size=32,
        intermediate_size=64, num_labels=CLASSES,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config).eval()


def _heads(t, heads):  # (B, T, C) -> (B, heads, T, d)
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def timm_maps_and_logits(model, x):
    """timm's forward written out, with the attention computed explicitly."""
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    maps = []
    for blk in model.blocks:
        a, h = blk.attn, blk.norm1(t)
        q, k, v = (_heads(part, a.num_heads) for part in a.qkv(h).chunk(3, dim=-1))
        attn = ((a.q_norm(q) * a.scale) @ a.k_norm(k).transpose(-2, -1)).softmax(-1)
        maps.append(attn)
        o = (attn @ v).transpose(1, 2).reshape(h.shape)
        t = t + blk.ls1(a.proj(a.norm(o)))
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
    return maps, model.forward_head(model.norm(t))


def torchvision_maps_and_logits(model, x):
    t = model._process_input(x)
    t = torch.cat([model.class_token.expand(t.shape[0], -1, -1), t], dim=1) + model.encoder.pos_embedding
    maps = []
    for blk in model.encoder.layers:
        mha, h = blk.self_attention, blk.ln_1(t)
        q, k, v = (
            _heads(part, mha.num_heads) for part in F.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
        )
        attn = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        maps.append(attn)
        t = t + mha.out_proj((attn @ v).transpose(1, 2).reshape(h.shape))
        t = t + blk.mlp(blk.ln_2(t))
    return maps, model.heads(model.encoder.ln(t)[:, 0])


def hf_maps_and_logits(model, x):
    """transformers' own eager attentions (the tensors its product used)."""
    model.config._attn_implementation = "eager"
    out = model(pixel_values=x, output_attentions=True)
    return list(out.attentions), out.logits


def chefer_loop(maps, grads, prefix, class_token, start=0):
    """R = I; R <- R + E_h[(grad * A)+] R per block from ``start``; the class token's row (or the patch rows' mean)."""
    tokens = maps[0].shape[-1]
    r = torch.eye(tokens).expand(maps[0].shape[0], tokens, tokens)
    for a, g in list(zip(maps, grads, strict=True))[start:]:
        r = r + (g * a).clamp(min=0).mean(dim=1) @ r
    return r[:, 0, prefix:] if class_token else r[:, prefix:, prefix:].mean(dim=1)


def reference(model, forward, pixels, target, start=0):
    vit = as_vit(model)
    mean, std = vit.stats(pixels)
    x = (pixels - mean) / std
    maps, logits = forward(model, x)
    chosen = logits.gather(1, torch.as_tensor(target).view(-1, 1)).sum()
    grads = torch.autograd.grad(chosen, maps)
    return chefer_loop([m.detach() for m in maps], grads, vit.num_prefix_tokens, vit.class_token, start)


PIXELS = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
FAMILIES = [
    (tiny_timm, timm_maps_and_logits),
    (tiny_torchvision, torchvision_maps_and_logits),
    (tiny_hf, hf_maps_and_logits),
]


@pytest.mark.parametrize("build, forward", FAMILIES, ids=["timm", "torchvision", "hf"])
def test_equals_the_plain_loop_and_depends_on_the_target(build, forward):
    model = build()
    explainer = GradientRollout(model, image_space="pixel")
    for target in ([0, 1, 3], [2, 2, 2]):
        got = explainer.patch_scores(PIXELS, target)
        want = reference(build(), forward, PIXELS, target)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(explainer.patch_scores(PIXELS, 0), explainer.patch_scores(PIXELS, 1))
    attributions = explainer.attribute(PIXELS, target=torch.tensor([0, 1, 3]))
    assert attributions.shape == PIXELS.shape
    scores = explainer.patch_scores(PIXELS, [0, 1, 3])
    assert torch.equal(attributions[:, :, :16, 16:], scores[:, 1, None, None, None].expand(3, 3, 16, 16))


def test_start_layer_and_pooled_models():
    model = tiny_timm()
    got = GradientRollout(model, image_space="pixel", start_layer=1).patch_scores(PIXELS, 2)
    torch.testing.assert_close(got, reference(tiny_timm(), timm_maps_and_logits, PIXELS, [2, 2, 2], start=1))
    pooled = tiny_timm(class_token=False, global_pool="avg")
    got = GradientRollout(pooled, image_space="pixel").patch_scores(PIXELS, 1)
    want = reference(tiny_timm(class_token=False, global_pool="avg"), timm_maps_and_logits, PIXELS, [1, 1, 1])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_default_target_is_the_predicted_class_and_the_model_is_left_as_it_was():
    model = tiny_timm()
    explainer = GradientRollout(model, image_space="pixel")
    mean, std = as_vit(model).stats(PIXELS)
    with torch.no_grad():
        predicted = model((PIXELS - mean) / std).argmax(1)
    torch.testing.assert_close(explainer.patch_scores(PIXELS), explainer.patch_scores(PIXELS, predicted))
    assert all(p.grad is None for p in model.parameters())
    assert all(blk.attn.fused_attn == model.blocks[0].attn.fused_attn for blk in model.blocks)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training


@pytest.mark.parametrize(
    "target, message",
    [(4, r"expected target in \[0, 4\)"), (-1, r"expected target in \[0, 4\)"),
     ([0, 1], r"expected target of shape \(3,\)"), (0.5, r"expected target to be a class index \(an int\), .* got 0.5"),
     (torch.tensor([0.0, 1.0, 2.0]), "expected integer target")],
)  # fmt: skip
def test_bad_targets_are_refused(target, message):
    with pytest.raises(CaptumSiftError, match=message):
        GradientRollout(tiny_timm(), image_space="pixel").attribute(PIXELS, target=target)


def test_a_model_without_a_head_or_a_start_layer_out_of_range_is_refused():
    with pytest.raises(CaptumSiftError, match="start_layer"):
        GradientRollout(tiny_timm(), start_layer=3)
    with pytest.raises(CaptumSiftError, match="classifier"):
        GradientRollout(dataclasses.replace(as_vit(tiny_timm()), forward_logits=None))


@pytest.mark.parametrize("build", [tiny_timm, tiny_torchvision, tiny_hf], ids=["timm", "torchvision", "hf"])
def test_noise_tunnel_expands_inputs_and_targets_together(build):
    from captum.attr import NoiseTunnel

    explainer = GradientRollout(build(), image_space="pixel")
    pixels = PIXELS.clamp(0.1, 0.9)
    got = NoiseTunnel(explainer).attribute(pixels, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=[0, 1, 3])
    torch.testing.assert_close(got, explainer.attribute(pixels, target=[0, 1, 3]))


def test_a_timm_or_hf_model_with_zero_classes_is_no_classifier():
    transformers = pytest.importorskip("transformers")
    headless = [
        timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=0),
        transformers.ViTForImageClassification(
            transformers.ViTConfig(image_size=32, patch_size=16, num_hidden_layers=1, hidden_size=32,
                                   num_attention_heads=2, intermediate_size=64, num_labels=0)
        ),
    ]  # fmt: skip
    for model in headless:
        with pytest.raises(CaptumSiftError, match="without a classification head"):
            GradientRollout(model)


def test_blocks_the_recompute_does_not_model_take_the_captured_maps():
    # q/k norms: vit_parts refuses the block, so the eager capture serves it, with the same numbers as the loop
    from captum_sift.vit.parts import vit_parts

    model = tiny_timm(qk_norm=True)
    with torch.no_grad():
        for blk in model.blocks:  # LayerNorm starts as the identity up to centring: make it matter
            torch.nn.init.normal_(blk.attn.q_norm.weight, 1.0, 0.5)
    with pytest.raises(CaptumSiftError):
        vit_parts(as_vit(model))
    got = GradientRollout(model, image_space="pixel").patch_scores(PIXELS, [0, 1, 3])
    torch.testing.assert_close(got, reference(model, timm_maps_and_logits, PIXELS, [0, 1, 3]), rtol=1e-4, atol=1e-6)
    assert all(blk.attn.fused_attn == model.blocks[0].attn.fused_attn for blk in model.blocks)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
