"""as_vit reads every family's own attributes: prefix tokens, patch grid, heads, statistics, classes."""

import dataclasses

import pytest
import timm
import torch
import torchvision

from captum_sift import CaptumSiftError
from captum_sift.vit import IMAGENET_MEAN, IMAGENET_STD, ViTAdapter, as_vit
from captum_sift.vit.families import adapter_fields, family_of, head_classes, unwrap

transformers = pytest.importorskip("transformers")

TIMM = [
    # name, kwargs
    ("vit_tiny_patch16_224", {"img_size": 32, "num_classes": 7}),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32, "num_classes": 3}),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "embed_dim": 48, "num_heads": 2, "num_classes": 2}),
    ("vit_tiny_patch16_224", {"img_size": 32, "class_token": False, "global_pool": "avg", "num_classes": 4}),
    ("vit_tiny_patch16_224", {"img_size": 32, "num_classes": 0}),
]


@pytest.mark.parametrize(("name", "kwargs"), TIMM, ids=[f"{m[0]}-{i}" for i, m in enumerate(TIMM)])
def test_timm_adapter_reads_the_models_own_attributes(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, depth=2, **kwargs)
    vit = as_vit(model)
    patch = model.patch_embed.patch_size[0]
    assert vit.family == family_of(model) == "timm"
    assert vit.blocks == tuple(model.blocks) and vit.depth == 2
    assert vit.num_prefix_tokens == model.num_prefix_tokens
    assert vit.class_token == (model.cls_token is not None)
    assert (vit.patch_size, vit.in_chans, vit.num_heads) == (patch, 3, model.blocks[0].attn.num_heads)
    assert (vit.mean, vit.std) == (tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"]))
    assert vit.img_size == kwargs["img_size"] and vit.name == model.pretrained_cfg["architecture"]
    assert vit.num_classes == model.num_classes == kwargs["num_classes"]
    size = kwargs["img_size"]
    assert vit.grid(torch.zeros(1, 3, size, 2 * size)) == (size // patch, 2 * size // patch)
    x = torch.rand(2, 3, size, size)
    tokens, _, _ = vit.stem(x)
    assert tokens.shape == (2, model.num_prefix_tokens + (size // patch) ** 2, model.embed_dim)


def test_prefix_tokens_by_hand():
    """CLS 1; CLS + distillation 2; CLS + 4 registers 5; no class token 0."""
    expected = [1, 2, 5, 1, 1]
    for (name, kwargs), want in zip(TIMM, expected, strict=True):
        if not kwargs.get("class_token", True):
            want = 0
        model = timm.create_model(name, pretrained=False, depth=1, **kwargs)
        assert as_vit(model).num_prefix_tokens == want, name


def test_a_timm_model_without_a_head_has_zero_classes_and_is_no_classifier():
    vit = as_vit(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=0))
    assert vit.num_classes == 0
    with pytest.raises(CaptumSiftError, match="without a classification head"):
        vit.check_classifier()


def test_one_channel_timm_model_gets_the_mean_of_timms_three_channel_statistics():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, in_chans=1)
    vit = as_vit(model)
    assert tuple(model.pretrained_cfg["mean"]) == IMAGENET_MEAN and vit.in_chans == 1
    assert vit.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,), abs=1e-15)
    assert vit.std == pytest.approx(((0.229 + 0.224 + 0.225) / 3,), abs=1e-15)


def test_torchvision_adapter_reads_the_models_own_attributes():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(48, 16, 2, 4, 32, 64, num_classes=6)
    vit = as_vit(model)
    assert vit.family == family_of(model) == "torchvision"
    assert vit.blocks == tuple(model.encoder.layers)
    assert (vit.num_prefix_tokens, vit.class_token) == (1, True)
    assert (vit.patch_size, vit.in_chans, vit.num_heads) == (model.patch_size, 3, 4)
    assert (vit.mean, vit.std) == (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert vit.img_size == model.image_size == 48
    assert vit.num_classes == model.heads.head.out_features == 6
    assert vit.grid(torch.zeros(1, 3, 48, 48)) == (3, 3)
    tokens, _, _ = vit.stem(torch.rand(2, 3, 48, 48))
    assert tokens.shape == (2, 1 + 9, 32)


def _hf(kind, **extra):
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    if kind == "vit":
        return transformers.ViTForImageClassification(transformers.ViTConfig(**common, num_labels=5, **extra))
    if kind == "vit-model":
        return transformers.ViTModel(transformers.ViTConfig(**common), add_pooling_layer=False)
    if kind == "deit":
        config = transformers.DeiTConfig(**common, num_labels=3)
        return transformers.DeiTForImageClassificationWithTeacher(config)
    config = transformers.Dinov2WithRegistersConfig(**common, num_register_tokens=3, num_labels=2)
    return transformers.Dinov2WithRegistersForImageClassification(config)


@pytest.mark.parametrize(
    ("kind", "prefix", "mean", "classes"),
    [
        ("vit", 1, (0.5, 0.5, 0.5), 5),
        ("vit-model", 1, (0.5, 0.5, 0.5), None),
        ("deit", 2, IMAGENET_MEAN, 3),
        ("dinov2-registers", 4, IMAGENET_MEAN, 2),
    ],
)
def test_hf_adapter_reads_the_models_own_attributes(kind, prefix, mean, classes):
    model = _hf(kind)
    vit = as_vit(model)
    config = model.config
    assert vit.family == family_of(model) == "hf"
    assert vit.depth == config.num_hidden_layers == 2
    assert (vit.num_prefix_tokens, vit.class_token) == (prefix, True)
    assert (vit.patch_size, vit.in_chans, vit.num_heads) == (config.patch_size, 3, config.num_attention_heads)
    assert vit.mean == mean and vit.std == ((0.5,) * 3 if mean == (0.5,) * 3 else IMAGENET_STD)
    assert vit.num_classes == classes
    if classes is not None:
        assert classes == config.num_labels
    assert vit.img_size == 32 and vit.grid(torch.zeros(1, 3, 32, 32)) == (4, 4)
    tokens, _, _ = vit.stem(torch.rand(2, 3, 32, 32))
    assert tokens.shape == (2, prefix + 16, 32)


def test_a_model_without_a_head_is_no_classifier():
    vit = as_vit(_hf("vit-model"))
    assert vit.num_classes is None and vit.forward_logits is None
    with pytest.raises(CaptumSiftError, match="expected a classifier"):
        vit.check_classifier()


def test_head_classes_per_family():
    assert (
        head_classes(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=9), "timm") == 9
    )
    assert head_classes(torchvision.models.VisionTransformer(32, 16, 1, 2, 16, 32, num_classes=11), "torchvision") == 11
    assert head_classes(_hf("vit"), "hf") == 5
    assert head_classes(torch.nn.Linear(2, 2), "mine") is None


def test_an_image_processor_gives_its_statistics_and_mean_std_replace_them():
    processor = transformers.ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    vit = as_vit(_hf("vit"), image_processor=processor)
    assert (vit.mean, vit.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    other = as_vit(vit, mean=0.25, std=[1, 2, 3])
    assert (other.mean, other.std) == ((0.25, 0.25, 0.25), (1.0, 2.0, 3.0))
    assert other.blocks == vit.blocks and as_vit(vit) is vit


def test_adapter_fields_build_the_adapter_and_a_custom_family_says_no_classes():
    model = torchvision.models.VisionTransformer(32, 16, 1, 2, 16, 32, num_classes=3)
    fields = adapter_fields(model)
    assert fields["family"] == "torchvision" and fields["blocks"] == tuple(model.encoder.layers)
    custom = dataclasses.replace(ViTAdapter(**fields), family="mine")
    assert custom.num_classes is None  # the family says nothing: one forward tells
    custom.check_classifier()
    assert family_of(torch.nn.Linear(2, 2)) is None
    with pytest.raises(CaptumSiftError, match="Vision Transformer from timm, torchvision or Hugging Face"):
        adapter_fields(torch.nn.Linear(2, 2))


def test_wrappers_are_unwrapped():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    wrapped = torch.nn.DataParallel(model)
    assert unwrap(wrapped) is model and unwrap(model) is model
    assert as_vit(wrapped).model is model


def test_a_torchvision_model_built_with_zero_classes_is_no_classifier():
    model = torchvision.models.VisionTransformer(32, 16, 1, 2, 16, 32, num_classes=0)
    vit = as_vit(model)
    assert vit.num_classes == model.heads.head.out_features == 0
    with pytest.raises(CaptumSiftError, match="without a classification head"):
        vit.check_classifier()
