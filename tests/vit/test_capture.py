"""Attention capture on stock timm ViTs: shapes, exact values by hand, state restored; the stem, the whole-forward
capture and token dropping by hand."""

import pytest
import timm
import torch

from captum_sift import CaptumSiftError
from captum_sift.vit import as_vit, iter_attention
from captum_sift.vit.capture import (
    capturing,
    dropping_tokens,
    eval_mode,
    non_finite_attention,
    run_stem,
    stream_attention,
)

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


def _hand_tokens(model, x):
    """The tokens entering block 0 of a timm ViT, step by step (eval mode)."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def test_run_stem_gives_the_tokens_entering_the_first_block():
    model = make("vit_tiny_patch16_224", {"img_size": 32}).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens, rest, kwargs = run_stem(as_vit(model), x)
    with torch.no_grad():
        torch.testing.assert_close(tokens, _hand_tokens(model, x), rtol=0, atol=0)
    assert tokens.shape == (2, 1 + 4, model.embed_dim) and rest == () and kwargs == {}


def test_capturing_hands_over_every_map_of_one_forward_with_gradients():
    model = make("vit_tiny_patch16_224", {"img_size": 32, "num_classes": 3}).eval()
    vit = as_vit(model)
    x = torch.randn(2, 3, 32, 32)
    before = _state(model)
    streamed = [attn for _, attn in iter_attention(model, x)]
    with capturing(vit, x, lambda index, attn: (index, attn)) as got:
        logits = vit.logits(x)
    assert [i for i, _ in got] == [0, 1]
    for (_, attn), want in zip(got, streamed, strict=True):
        assert attn.requires_grad
        torch.testing.assert_close(attn.detach(), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(logits.detach(), model(x), rtol=1e-5, atol=1e-6)
    assert _state(model) == before


def test_capturing_refuses_a_forward_that_skips_a_block():
    model = make("vit_tiny_patch16_224", {"img_size": 32}).eval()
    vit = as_vit(model)
    x = torch.randn(1, 3, 32, 32)
    before = _state(model)
    with pytest.raises(CaptumSiftError, match=r"one attention map of 5 tokens from block 0.*got \[\]"):
        with capturing(vit, x, lambda index, attn: None):
            pass  # no forward: no map
    assert _state(model) == before


def test_dropping_tokens_equals_the_forward_on_the_kept_tokens_by_hand():
    model = make("vit_tiny_patch16_224", {"img_size": 32, "num_classes": 3}).eval()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 3], [2, 1]])
    with torch.no_grad():
        tokens = _hand_tokens(model, x)
        kept = torch.stack([torch.cat([tokens[b, :1], tokens[b, 1:][keep[b]]]) for b in range(2)])
        for block in model.blocks:
            kept = block(kept)
        want = model.forward_head(model.norm(kept))
        with dropping_tokens(as_vit(model), keep):
            got = model(x)
        plain = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert not torch.allclose(plain, got)


def test_eval_mode_restores_every_modules_own_flag():
    model = make("vit_tiny_patch16_224", {"img_size": 32})
    model.train()
    model.blocks[0].eval()  # a mixed model: each flag comes back as it was
    flags = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == flags
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError
    assert [m.training for m in model.modules()] == flags


def test_stream_attention_skips_the_check_of_unchecked_blocks_and_consumes_in_place():
    model = make("vit_tiny_patch16_224", {"img_size": 32}).eval()
    vit = as_vit(model)
    x = torch.randn(2, 3, 32, 32)
    maps = [attn for _, attn in stream_attention(vit, x)]
    sums = [s for _, s in stream_attention(vit, x, consume=lambda i, attn: (i, attn.sum().item()))]
    assert [i for i, _ in sums] == [0, 1]
    assert [s for _, s in sums] == pytest.approx([m.sum().item() for m in maps])
    model.blocks[1].attn.qkv.bias.data[0] = float("nan")
    with pytest.raises(CaptumSiftError, match=str(non_finite_attention(1))):
        list(stream_attention(vit, x))
    got = list(stream_attention(vit, x, unchecked={1}))  # the caller checks block 1 itself
    assert torch.isnan(got[1][1]).any() and not torch.isnan(got[0][1]).any()
