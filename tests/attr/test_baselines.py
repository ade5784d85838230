"""AttentionRollout and RawAttention equal plain loops, for timm, torchvision and Hugging Face models."""

import pytest
import timm
import torch
from family_models import families, pixels, timm_vit  # noqa: F401 - fixtures

from captum_sift import CaptumSiftError
from captum_sift.attr import AttentionRollout, GradientRollout, RawAttention
from captum_sift.vit import iter_attention
from captum_sift.vit.adapter import as_vit


def loop_rollout(attns, prefix, class_token, head_fusion="mean", discard_ratio=0.0):
    """Rollout written as plain loops over images, rows and columns."""
    batch, _, tokens, _ = attns[0].shape
    out = []
    for b in range(batch):
        joint = [[float(i == j) for j in range(tokens)] for i in range(tokens)]
        for attn in attns:
            heads = attn[b].double()
            fused = {"mean": heads.mean(0), "max": heads.max(0).values, "min": heads.min(0).values}[head_fusion]
            a = fused.tolist()
            k = int(tokens * tokens * discard_ratio)
            if k:
                cells = sorted(((a[i][j], i * tokens + j) for i in range(tokens) for j in range(tokens)
                                if not (class_token and j == 0)), key=lambda c: (c[0], c[1]))  # fmt: skip
                for _, flat in cells[:k]:
                    a[flat // tokens][flat % tokens] = 0.0
            for i in range(tokens):
                row = [0.5 * a[i][j] + 0.5 * (i == j) for j in range(tokens)]
                total = sum(row)
                a[i] = [v / total for v in row]
            joint = [[sum(a[i][m] * joint[m][j] for m in range(tokens)) for j in range(tokens)] for i in range(tokens)]
        if class_token:
            out.append(joint[0][prefix:])
        else:
            rows = joint[prefix:]
            out.append([sum(r[j] for r in rows) / len(rows) for j in range(prefix, tokens)])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
@pytest.mark.parametrize(("head_fusion", "discard_ratio"), [("mean", 0.0), ("max", 0.3), ("min", 0.0)])
def test_rollout_equals_a_loop_for_every_family(families, pixels, name, head_fusion, discard_ratio):  # noqa: F811
    model = families[name]
    x = (pixels - 0.5) / 0.5
    attns = [a for _, a in iter_attention(model, x)]
    expected = loop_rollout(attns, 1, True, head_fusion, discard_ratio)
    rollout = AttentionRollout(model, head_fusion=head_fusion, discard_ratio=discard_ratio)
    got = rollout.attribute(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got[:, 0, ::8, ::8].flatten(1).double(), expected, atol=1e-5, rtol=1e-4)
    raw = RawAttention(model, layer=1).attribute(x)[:, 0, ::8, ::8].flatten(1)
    torch.testing.assert_close(raw, attns[1].mean(1)[:, 0, 1:], atol=1e-6, rtol=1e-5)


def test_same_numbers_across_families(families, pixels):  # noqa: F811
    x = (pixels - 0.5) / 0.5
    ref = AttentionRollout(families["timm"]).attribute(x)
    for name in ("torchvision", "hf"):
        torch.testing.assert_close(AttentionRollout(families[name]).attribute(x), ref, atol=2e-5, rtol=1e-4)


def test_models_without_a_class_token_use_the_patch_rows():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, class_token=False,
                              global_pool="avg", reg_tokens=2).eval()  # fmt: skip
    vit = as_vit(model)
    assert (vit.num_prefix_tokens, vit.class_token) == (2, False)
    x = torch.randn(2, 3, 32, 32)
    attns = [a for _, a in iter_attention(model, x)]
    got = AttentionRollout(model, discard_ratio=0.2).attribute(x)[:, 0, ::16, ::16].flatten(1).double()
    torch.testing.assert_close(got, loop_rollout(attns, 2, False, "mean", 0.2), atol=1e-5, rtol=1e-4)


def test_bad_options():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    with pytest.raises(CaptumSiftError, match="head_fusion"):
        AttentionRollout(model, head_fusion="median")
    with pytest.raises(CaptumSiftError, match=r"discard_ratio in \[0, 1\)"):
        AttentionRollout(model, discard_ratio=1.0)
    with pytest.raises(CaptumSiftError, match=r"layer in \[-2, 2\)"):
        RawAttention(model, layer=2)
    with pytest.raises(CaptumSiftError, match="expected inputs of shape"):
        AttentionRollout(model).attribute(torch.rand(3, 32, 32))


def test_rollout_raises_on_a_non_finite_map_naming_the_block():
    """The heads are fused inside the block; the map is checked before that, as for every other reader."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3).eval()
    with torch.no_grad():
        model.blocks[1].attn.qkv.bias[:] = float("nan")
    with pytest.raises(CaptumSiftError, match="non-finite attention in block 1"):
        AttentionRollout(model).attribute(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
def test_raw_attention_of_one_head_is_that_heads_class_token_row(families, pixels, name):  # noqa: F811
    model = families[name]
    x = (pixels - 0.5) / 0.5
    attns = [a for _, a in iter_attention(model, x)]
    for layer, head in [(0, 0), (1, 3), (-1, -2)]:
        got = RawAttention(model, layer=layer, head=head).attribute(x)[:, 0, ::8, ::8].flatten(1)
        torch.testing.assert_close(got, attns[layer][:, head, 0, 1:], atol=1e-6, rtol=1e-5)
    # the heads differ, so picking one is no head mean in disguise
    assert (attns[1][:, 0, 0, 1:] - attns[1][:, 1, 0, 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
def test_rollout_from_a_start_layer_equals_the_loop_over_the_later_blocks(families, pixels, name):  # noqa: F811
    model = families[name]
    x = (pixels - 0.5) / 0.5
    attns = [a for _, a in iter_attention(model, x)]
    for start in (1, -1):
        rollout = AttentionRollout(model, start_layer=start, head_fusion="max", discard_ratio=0.2)
        got = rollout.attribute(x)[:, 0, ::8, ::8].flatten(1).double()
        torch.testing.assert_close(got, loop_rollout(attns[start:], 1, True, "max", 0.2), atol=1e-5, rtol=1e-4)
    # start_layer=0 is every block, as before; the per-layer scores are the rollout after each block
    per_layer = AttentionRollout(model).patch_scores_per_layer(x).double()
    assert per_layer.shape == (3, len(attns), 16)
    for k in range(len(attns)):
        torch.testing.assert_close(per_layer[:, k], loop_rollout(attns[: k + 1], 1, True), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(AttentionRollout(model, start_layer=0).patch_scores(x), per_layer[:, -1].float())
    assert (per_layer[:, 0] - per_layer[:, -1]).abs().max() > 1e-4  # the blocks change the product


def test_layers_and_heads_out_of_range_are_refused_with_one_message():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_heads=3)
    for make in (lambda s: AttentionRollout(model, start_layer=s), lambda s: GradientRollout(model, start_layer=s)):
        expected = r"expected start_layer in \[-2, 2\) \(the model has 2 blocks\), got 2"
        with pytest.raises(CaptumSiftError, match=expected):
            make(2)
        with pytest.raises(CaptumSiftError, match=r"start_layer in \[-2, 2\).*got -3"):
            make(-3)
        with pytest.raises(CaptumSiftError, match=r"start_layer in \[-2, 2\).*got 1.0"):
            make(1.0)
    assert AttentionRollout(model, start_layer=-1).start_layer == 1
    assert GradientRollout(model, start_layer=-1).start_layer == 1
    with pytest.raises(CaptumSiftError, match=r"expected head in \[-3, 3\) \(the model has 3 heads\), got 3"):
        RawAttention(model, head=3)
    with pytest.raises(CaptumSiftError, match=r"head in \[-3, 3\).*got \[0, 1\]"):
        RawAttention(model, head=[0, 1])
    with pytest.raises(CaptumSiftError, match=r"head in \[-3, 3\).*got True"):
        RawAttention(model, head=True)
    assert RawAttention(model, head=-1).head == 2
