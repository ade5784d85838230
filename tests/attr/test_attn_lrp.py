"""AttnLRP: the re-implemented forward is the model's, relevance is conserved up to what the softmax rule
absorbs, each rule equals a loop written here, the map follows the target, unsupported blocks are refused."""

import pytest
import timm
import torch
import torchvision
from family_models import CLASSES, SIZE, families, timm_vit, to_hf, to_torchvision  # noqa: F401 - fixtures

from captum_sift import CaptumSiftError
from captum_sift.attr import AttnLRP
from captum_sift.attr.attn_lrp import _Epsilon, _Half, _LayerNormRule, _SoftmaxRule, lrp_logits
from captum_sift.vit import as_vit
from captum_sift.vit.parts import Dense, Norm, vit_parts


@pytest.fixture(scope="module")
def images():
    """Model input spread like normalised photos (a (3, 3, 32, 32) standard normal draw)."""
    torch.manual_seed(1)
    return torch.randn(3, 3, SIZE, SIZE)


def _state(model):
    """Every module's training flag and hooks, and every parameter's grad and requires_grad."""
    modules = [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
               for m in model.modules()]  # fmt: skip
    params = [(p.grad is None, p.requires_grad) for p in model.parameters()]
    return modules, params


def _unbiased(model):
    """The same timm network with every bias zero (the stem's included)."""
    clone = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, embed_dim=32, depth=3, num_heads=4,
        mlp_ratio=2, num_classes=CLASSES,
    ).eval()  # fmt: skip
    clone.load_state_dict(model.state_dict())
    for name, p in clone.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
    return clone


def _relevance_and_absorbed(model, images, target, epsilon):
    ledger = []
    tokens = AttnLRP(model, epsilon=epsilon).token_relevance(images, target, _ledger=ledger)
    return tokens, torch.stack(ledger).sum(0)


@pytest.mark.parametrize("family", ["timm", "torchvision", "hf"])
def test_functional_forward_is_the_model(families, images, family):  # noqa: F811
    vit = as_vit(families[family])
    with torch.no_grad():
        expected = vit.logits(images)
        got = lrp_logits(vit.stem(images)[0], vit_parts(vit), 1e-6)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [dict(init_values=0.1), dict(global_pool="avg", class_token=False), dict(global_pool="avg", reg_tokens=2)]
)
def test_functional_forward_layer_scale_and_pooling(kwargs):
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, embed_dim=32, num_heads=2, num_classes=3,
        **kwargs,
    ).eval()  # fmt: skip
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    images = torch.randn(2, 3, 32, 32)
    vit = as_vit(model)
    with torch.no_grad():
        torch.testing.assert_close(lrp_logits(vit.stem(images)[0], vit_parts(vit), 1e-6), model(images), rtol=0,
                                   atol=1e-5)  # fmt: skip


def test_functional_forward_hf_deit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     image_size=32, patch_size=16, num_labels=3)  # fmt: skip
    vit = as_vit(transformers.DeiTForImageClassification(config).eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(lrp_logits(vit.stem(x)[0], vit_parts(vit), 1e-6), vit.logits(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("to_family", [lambda m: m, to_torchvision, to_hf], ids=["timm", "torchvision", "hf"])
def test_conservation_without_biases(timm_vit, images, to_family):  # noqa: F811
    """Σ relevance of the tokens + what the softmax rule's bias term absorbs = the target logit."""
    model = to_family(_unbiased(timm_vit))
    tokens, absorbed = _relevance_and_absorbed(model, images, 2, 1e-9)
    logit = as_vit(model).logits(images).detach()[:, 2]
    torch.testing.assert_close(tokens.sum(1) + absorbed, logit, rtol=1e-4, atol=1e-6)
    assert absorbed.abs().min() > 1e-3  # the softmax term is not negligible here: the ledger is what closes the sum


def test_biases_break_conservation(timm_vit, images):  # noqa: F811
    """With the biases (random, as large as the weights) the same sum misses the logit by what they keep."""
    tokens, absorbed = _relevance_and_absorbed(timm_vit, images, 2, 1e-9)
    logit = timm_vit(images).detach()[:, 2]
    assert ((tokens.sum(1) + absorbed - logit).abs() > 1e-2).all()


def test_families_give_the_same_relevance(families, images):  # noqa: F811
    maps = [AttnLRP(families[f]).patch_scores(images, target=1) for f in ("timm", "torchvision", "hf")]
    torch.testing.assert_close(maps[1], maps[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps[2], maps[0], rtol=1e-4, atol=1e-6)


def test_map_changes_with_target(timm_vit, images):  # noqa: F811
    lrp = AttnLRP(timm_vit)
    maps = torch.stack([lrp.patch_scores(images, target=c) for c in range(CLASSES)])
    for a in range(CLASSES):
        for b in range(a + 1, CLASSES):
            assert (maps[a] - maps[b]).abs().max() > 1e-3
    predicted = timm_vit(images).argmax(1)
    torch.testing.assert_close(lrp.patch_scores(images), lrp.patch_scores(images, target=predicted))


def test_epsilon_rule_of_a_linear_layer_equals_a_loop():
    torch.manual_seed(0)
    x, weight, bias, relevance = torch.randn(4), torch.randn(3, 4), torch.randn(3), torch.randn(3)
    eps = 0.1
    x = x.requires_grad_()
    z = _Epsilon.apply(torch.nn.functional.linear(x, weight, bias), eps)
    (grad,) = torch.autograd.grad(z, x, relevance / z.detach())  # relevance R_z = z ⊙ g_z
    expected = torch.zeros(4)
    for i in range(4):
        for j in range(3):
            zj = z[j].item()
            expected[i] += x[i].item() * weight[j, i].item() * relevance[j].item() / (zj + eps * (1 if zj >= 0 else -1))
    torch.testing.assert_close(x.detach() * grad, expected)


def test_softmax_rule_equals_the_formula_by_hand():
    """R_in,i = x_i (R_i - s_i Σ_j R_j) (AttnLRP Prop. 3.1), written as a loop."""
    torch.manual_seed(0)
    x, relevance = torch.randn(1, 5, requires_grad=True), torch.randn(1, 5)
    ledger = []
    s = _SoftmaxRule.apply(x, ledger)
    (grad,) = torch.autograd.grad(s, x, relevance / s.detach())
    total = float(relevance.sum())
    expected = torch.tensor([[x[0, i].item() * (relevance[0, i].item() - s[0, i].item() * total) for i in range(5)]])
    torch.testing.assert_close(x.detach() * grad, expected)
    torch.testing.assert_close(ledger[0], (relevance.sum() - expected.sum()).view(1))


def test_uniform_rule_halves_a_product():
    """A V with the uniform rule: each factor gets half of the output's relevance, spread as the LRP-0 rule does."""
    torch.manual_seed(0)
    a, v, relevance = torch.rand(3, 4, requires_grad=True), torch.randn(4, 2, requires_grad=True), torch.randn(3, 2)
    out = _Half.apply(a) @ _Half.apply(v)
    grad_a, grad_v = torch.autograd.grad(out, (a, v), relevance / out.detach())
    expected_a = torch.zeros(3, 4)
    for i in range(3):
        for k in range(4):
            for j in range(2):
                expected_a[i, k] += a[i, k].item() * v[k, j].item() * relevance[i, j].item() / out[i, j].item() / 2
    torch.testing.assert_close(a.detach() * grad_a, expected_a)
    torch.testing.assert_close((v.detach() * grad_v).sum(), relevance.sum() / 2)


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, qk_norm=True, num_classes=3),
        lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, global_pool="map", num_classes=3),
        lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=0),
        lambda: timm.create_model(
            "vit_small_patch16_224", img_size=32, depth=1, num_classes=3, mlp_layer=timm.layers.SwiGLU
        ),  # fmt: skip
        lambda: torchvision.models.VisionTransformer(32, 16, 1, 2, 16, 32, num_classes=3, representation_size=8),
        lambda: timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1, num_classes=3),
        lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1, num_classes=3),
    ],
    ids=["qk_norm", "attention_pool", "no_head", "swiglu", "pre_logits", "eva", "distilled"],
)
def test_unsupported_models_are_refused(build):
    with pytest.raises(CaptumSiftError, match="unsupported|expected a classifier"):
        AttnLRP(build())


def test_model_untouched_also_on_error(timm_vit, images):  # noqa: F811
    timm_vit.train()
    timm_vit.blocks[1].training = False  # a mixed state, restored as it was
    before = _state(timm_vit)
    try:
        lrp = AttnLRP(timm_vit)
        lrp.attribute(images, target=1)
        assert _state(timm_vit) == before
        with pytest.raises(CaptumSiftError, match="target"):
            lrp.attribute(images, target=CLASSES)
        assert _state(timm_vit) == before
    finally:
        timm_vit.eval()


def test_batch_equals_single_images_and_shape(timm_vit, images):  # noqa: F811
    lrp = AttnLRP(timm_vit)
    targets = torch.tensor([0, 3, 1])
    batch = lrp.attribute(images, target=targets)
    assert batch.shape == images.shape
    singles = torch.cat([lrp.attribute(images[i : i + 1], target=int(targets[i])) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-6)
    (as_tuple,) = lrp.attribute((images,), target=[0, 3, 1])
    torch.testing.assert_close(as_tuple, batch)


def test_epsilon_is_checked(timm_vit):  # noqa: F811
    for bad in (0.0, -1.0, float("nan"), "1e-6"):
        with pytest.raises(CaptumSiftError, match="epsilon"):
            AttnLRP(timm_vit, epsilon=bad)


def test_dense_holds_detached_weights(timm_vit):  # noqa: F811
    blocks, head = vit_parts(as_vit(timm_vit))
    assert isinstance(head.classifier, Dense) and not head.classifier.weight.requires_grad
    assert blocks[0].query.weight.data_ptr() == timm_vit.blocks[0].attn.qkv.weight.data_ptr()  # a view, not a copy


def test_layer_norm_rule_holds_the_denominator():
    """The LayerNorm rule's gradient is that of (x - mean) / σ ⊙ w + b with σ a constant; without a bias it keeps
    the relevance: Σ x ⊙ g_x = Σ y ⊙ g."""
    torch.manual_seed(0)
    x, grad = torch.randn(2, 6, requires_grad=True), torch.randn(2, 6)
    norm = Norm(torch.randn(6), None, 1e-5)
    y = _LayerNormRule.apply(x, norm)
    (got,) = torch.autograd.grad(y, x, grad)
    sigma = torch.sqrt(x.detach().var(dim=-1, unbiased=False, keepdim=True) + 1e-5)
    x2 = x.detach().clone().requires_grad_()
    y2 = (x2 - x2.mean(dim=-1, keepdim=True)) / sigma * norm.weight
    (expected,) = torch.autograd.grad(y2, x2, grad)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (6,), norm.weight, None, 1e-5))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close((x.detach() * got).sum(1), (y.detach() * grad).sum(1))
