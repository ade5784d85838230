"""Attention capture on stock timm ViTs: shapes, exact values, state restored."""

import pytest
import timm
import torch

from captum_sift import CaptumSiftError
from captum_sift.vit.capture import iter_attention

MODELS = [
    # name, kwargs, prefix tokens
    ("vit_tiny_patch16_224", {"img_size": 32}, 1),
    ("vit_tiny_patch16_224", {"img_size": (32, 48), "qk_norm": True}, 1),  # non-square grid, q/k norm
    ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 2),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "embed_dim": 48, "num_heads": 2}, 5),
    ("vit_small_patch14_dinov2", {"img_size": 42, "embed_dim": 48, "num_heads": 2}, 1),
    ("eva02_tiny_patch14_224", {"img_size": 28}, 1),
    ("beit_base_patch16_224", {"img_size": 32, "embed_dim": 48, "num_heads": 4}, 1),
]


def make(name, kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, depth=2, **kwargs)


def _state(model):
    flags = [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return flags, hooks


@pytest.mark.parametrize(("name", "kwargs", "prefix"), MODELS, ids=[f"{m[0]}-{i}" for i, m in enumerate(MODELS)])
def test_attention_shapes_rows_and_restored_state(name, kwargs, prefix):
    model = make(name, kwargs)
    size = kwargs["img_size"] if isinstance(kwargs["img_size"], tuple) else (kwargs["img_size"],) * 2
    patch = model.patch_embed.patch_size[0]
    tokens = prefix + (size[0] // patch) * (size[1] // patch)
    x = torch.randn(2, 3, *size)
    before = _state(model)
    with torch.no_grad():
        logits = model(x)
    maps = list(iter_attention(model, x))
    assert [i for i, _ in maps] == [0, 1]
    heads = model.blocks[0].attn.num_heads
    for _, attn in maps:
        assert attn.shape == (2, heads, tokens, tokens)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, heads, tokens))
    assert _state(model) == before
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits)


def test_captured_attention_equals_recomputation_from_qkv():
    model = make("vit_tiny_patch16_224", {"img_size": 32, "qk_norm": True}).eval()
    x = torch.randn(3, 3, 32, 32)
    inputs = []
    handles = [blk.norm1.register_forward_hook(lambda _m, _i, out: inputs.append(out)) for blk in model.blocks]
    with torch.no_grad():
        model.forward_features(x)
    for h in handles:
        h.remove()
    for (layer, attn), normed in zip(iter_attention(model, x), inputs, strict=True):
        mod = model.blocks[layer].attn
        b, t, _ = normed.shape
        qkv = mod.qkv(normed).reshape(b, t, 3, mod.num_heads, mod.head_dim).permute(2, 0, 3, 1, 4)
        q, k = mod.q_norm(qkv[0]), mod.k_norm(qkv[1])
        expected = torch.softmax(q @ k.transpose(-2, -1) * mod.scale, dim=-1)
        torch.testing.assert_close(attn, expected, rtol=1e-5, atol=1e-6)


def test_state_restored_when_the_consumer_raises_and_in_train_mode():
    model = make("vit_tiny_patch16_224", {"img_size": 32})
    model.train()
    model.blocks[1].attn.fused_attn = True
    model.blocks[0].attn.fused_attn = False
    reference = make("vit_tiny_patch16_224", {"img_size": 32})
    reference.load_state_dict(model.state_dict())
    reference.train()
    reference.blocks[1].attn.fused_attn = True
    reference.blocks[0].attn.fused_attn = False
    before = _state(model)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="consumer failed"):
        for layer, _ in iter_attention(model, x):
            if layer == 0:
                raise RuntimeError("consumer failed")
    assert _state(model) == before
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_attention_is_computed_in_eval_mode_without_grad():
    model = make("vit_tiny_patch16_224", {"img_size": 32, "attn_drop_rate": 0.5})
    model.train()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    a = [attn for _, attn in iter_attention(model, x)]
    b = [attn for _, attn in iter_attention(model, x)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))  # no dropout
    assert not a[0].requires_grad and model.training


def test_not_a_vit_and_bad_image_size():
    with pytest.raises(CaptumSiftError, match="Vision Transformer from timm, torchvision or Hugging Face.*got Linear"):
        list(iter_attention(torch.nn.Linear(3, 3), torch.rand(1, 3, 32, 32)))
    model = make("vit_tiny_patch16_224", {"img_size": 32})
    before = _state(model)
    with pytest.raises(CaptumSiftError, match="multiples of its patch size 16, got H=40, W=32"):
        list(iter_attention(model, torch.rand(1, 3, 40, 32)))
    with pytest.raises(CaptumSiftError, match=r"does not accept images of shape \(1, 3, 48, 48\)"):
        list(iter_attention(model, torch.rand(1, 3, 48, 48)))
    with pytest.raises(CaptumSiftError, match=r"\(B, C, H, W\), got \(3, 32, 32\)"):
        list(iter_attention(model, torch.rand(3, 32, 32)))
    assert _state(model) == before


def test_unsupported_attention_module_is_named():
    model = make("vit_tiny_patch16_224", {"img_size": 32})

    class Odd(torch.nn.Module):
        def forward(self, x):
            return x

    model.blocks[1].attn = Odd()
    with pytest.raises(CaptumSiftError, match="unsupported attention in block 1: Odd"):
        list(iter_attention(model, torch.rand(1, 3, 32, 32)))
