"""One tiny network in timm, torchvision and Hugging Face layouts: the converters map a timm ViT's weights
into torchvision's ``VisionTransformer`` and transformers' ``ViTForImageClassification``, with fixtures for
the tests that compare the three families."""

import pytest
import timm
import torch
import torchvision

transformers = pytest.importorskip("transformers")

DIM, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 32, 3, 4, 64, 8, 32, 5


@pytest.fixture(scope="module")
def timm_vit():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=PATCH, embed_dim=DIM, depth=DEPTH,
        num_heads=HEADS, mlp_ratio=MLP / DIM, num_classes=CLASSES,
    )  # fmt: skip
    for p in model.parameters():  # timm zero-inits some biases and the tokens: make every weight matter
        p.data.normal_(0, 0.2)
    return model.eval()


def to_torchvision(model):
    """timm ViT -> torchvision VisionTransformer with the same weights."""
    tv = torchvision.models.VisionTransformer(SIZE, PATCH, DEPTH, HEADS, DIM, MLP, num_classes=CLASSES)
    s = model.state_dict()
    state = {
        "conv_proj.weight": s["patch_embed.proj.weight"], "conv_proj.bias": s["patch_embed.proj.bias"],
        "class_token": s["cls_token"], "encoder.pos_embedding": s["pos_embed"],
        "encoder.ln.weight": s["norm.weight"], "encoder.ln.bias": s["norm.bias"],
        "heads.head.weight": s["head.weight"], "heads.head.bias": s["head.bias"],
    }  # fmt: skip
    for i in range(DEPTH):
        t, b = f"encoder.layers.encoder_layer_{i}.", f"blocks.{i}."
        state |= {
            t + "ln_1.weight": s[b + "norm1.weight"], t + "ln_1.bias": s[b + "norm1.bias"],
            t + "self_attention.in_proj_weight": s[b + "attn.qkv.weight"],
            t + "self_attention.in_proj_bias": s[b + "attn.qkv.bias"],
            t + "self_attention.out_proj.weight": s[b + "attn.proj.weight"],
            t + "self_attention.out_proj.bias": s[b + "attn.proj.bias"],
            t + "ln_2.weight": s[b + "norm2.weight"], t + "ln_2.bias": s[b + "norm2.bias"],
            t + "mlp.0.weight": s[b + "mlp.fc1.weight"], t + "mlp.0.bias": s[b + "mlp.fc1.bias"],
            t + "mlp.3.weight": s[b + "mlp.fc2.weight"], t + "mlp.3.bias": s[b + "mlp.fc2.bias"],
        }  # fmt: skip
    tv.load_state_dict(state)
    return tv.eval()


def hf_config(**extra):
    return transformers.ViTConfig(
        hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=MLP,
        image_size=SIZE, patch_size=PATCH, layer_norm_eps=1e-6, hidden_act="gelu", num_labels=CLASSES, **extra,
    )  # fmt: skip


def to_hf(model, attn_implementation="sdpa"):
    """timm ViT -> transformers ViTForImageClassification with the same weights."""
    hf = transformers.ViTForImageClassification._from_config(hf_config(), attn_implementation=attn_implementation)
    s = model.state_dict()
    state = {
        "vit.embeddings.cls_token": s["cls_token"], "vit.embeddings.position_embeddings": s["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
        "vit.layernorm.weight": s["norm.weight"], "vit.layernorm.bias": s["norm.bias"],
        "classifier.weight": s["head.weight"], "classifier.bias": s["head.bias"],
    }  # fmt: skip
    for i in range(DEPTH):
        h, b = f"vit.layers.{i}.", f"blocks.{i}."
        q, k, v = s[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = s[b + "attn.qkv.bias"].chunk(3)
        state |= {
            h + "layernorm_before.weight": s[b + "norm1.weight"], h + "layernorm_before.bias": s[b + "norm1.bias"],
            h + "attention.q_proj.weight": q, h + "attention.q_proj.bias": qb,
            h + "attention.k_proj.weight": k, h + "attention.k_proj.bias": kb,
            h + "attention.v_proj.weight": v, h + "attention.v_proj.bias": vb,
            h + "attention.o_proj.weight": s[b + "attn.proj.weight"],
            h + "attention.o_proj.bias": s[b + "attn.proj.bias"],
            h + "layernorm_after.weight": s[b + "norm2.weight"], h + "layernorm_after.bias": s[b + "norm2.bias"],
            h + "mlp.fc1.weight": s[b + "mlp.fc1.weight"], h + "mlp.fc1.bias": s[b + "mlp.fc1.bias"],
            h + "mlp.fc2.weight": s[b + "mlp.fc2.weight"], h + "mlp.fc2.bias": s[b + "mlp.fc2.bias"],
        }  # fmt: skip
    hf.load_state_dict(state)
    return hf.eval()


@pytest.fixture(scope="module")
def families(timm_vit):
    return {"timm": timm_vit, "torchvision": to_torchvision(timm_vit), "hf": to_hf(timm_vit)}


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(1)
    return torch.rand(3, 3, SIZE, SIZE)


@pytest.fixture(scope="module")
def counts():
    torch.manual_seed(2)
    return torch.randint(0, 3, (3, (SIZE // PATCH) ** 2))
