"""SIFTInterrelation: Captum's contract, and interplay with Captum's methods and metrics."""

import pytest
import timm
import torch
from captum.attr import FeatureAblation, visualization
from captum.metrics import infidelity, sensitivity_max
from family_models import families, timm_vit  # noqa: F401 - fixtures

from captum_sift import CaptumSiftError, analyze, count_keypoints
from captum_sift.attr import SIFTInterrelation
from captum_sift.data import sample_images
from captum_sift.theta import patch_theta_maps


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4, num_classes=5).eval()


@pytest.fixture(scope="module")
def pixels():
    return sample_images(["astronaut", "coffee", "chelsea"], size=64)


@pytest.fixture(scope="module")
def counts(pixels):
    return count_keypoints(pixels, 16)


def test_shape_contract_and_values_per_patch(model, pixels, counts):
    explainer = SIFTInterrelation(model, image_space="pixel")
    attr, report = explainer.attribute(pixels, counts, target=3, return_report=True)
    assert attr.shape == pixels.shape and attr.dtype == pixels.dtype
    expected = report.patch_theta.mean(dim=1)  # (B, N): θ over heads (already) and all layers
    for b in range(3):
        for row in range(4):
            for col in range(4):
                block = attr[b, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]
                assert torch.all(block == expected[b, row * 4 + col])  # constant within the patch, all channels
    assert torch.isfinite(attr).all()  # gamma = 1: every S_i is non-empty
    (attr_tuple,) = explainer.attribute((pixels,), counts)  # no report asked: the focus index is skipped
    assert torch.equal(attr_tuple, attr)
    full = analyze(model, pixels, counts, image_space="pixel")  # the returned report is the whole analysis
    assert torch.isfinite(report.focus).all() and torch.equal(report.focus, full.focus)


def test_batch_equals_single_images_and_target_is_ignored(model, pixels, counts):
    explainer = SIFTInterrelation(model, image_space="pixel", layers=[1, 2])
    batch = explainer.attribute(pixels, counts)
    for b in range(3):
        single = explainer.attribute(pixels[b : b + 1], counts[b : b + 1], target=b)
        torch.testing.assert_close(single[0], batch[b], rtol=1e-5, atol=1e-6)


def test_layer_choices(model, pixels, counts):
    report = analyze(model, pixels, counts, image_space="pixel")
    attr = SIFTInterrelation(model, image_space="pixel", layers=[0, -1]).attribute(pixels, counts)
    torch.testing.assert_close(attr[:, 0, ::16, ::16].flatten(1), report.patch_theta[:, [0, 3]].mean(1))
    capture = SIFTInterrelation(model, image_space="pixel", layers="capture").attribute(pixels, counts)
    assert capture.shape == pixels.shape and torch.isfinite(capture).all()
    with pytest.raises(CaptumSiftError, match="stage name"):
        SIFTInterrelation(model, layers="middle").attribute(pixels, counts)
    with pytest.raises(CaptumSiftError, match=r"layer indices in \[-4, 4\)"):
        SIFTInterrelation(model, layers=[7])


@pytest.mark.parametrize("layers", [None, [3, 0, 1], "retrieval", "capture", "coach"])
def test_attribution_without_a_report_equals_the_report_path(model, pixels, counts, layers):
    """attribute() builds no report unless asked: the same scores, bit for bit, as from the report."""
    from captum_sift.masking import scores_and_counts
    from captum_sift.theta.analysis import patch_scores_from_report
    from captum_sift.theta.settings import ThetaSettings

    explainer = SIFTInterrelation(model, image_space="pixel", layers=layers, output="rank")
    if layers == "coach":  # an image of this random model peaks at the last layer: it has no Coach stage
        with pytest.raises(CaptumSiftError, match="image 0 has no coach stage") as fast_error:
            explainer.attribute(pixels, counts)
        with pytest.raises(CaptumSiftError) as report_error:
            explainer.attribute(pixels, counts, return_report=True)
        assert str(report_error.value) == str(fast_error.value)
        return
    fast = explainer.attribute(pixels, counts)
    attr, report = explainer.attribute(pixels, counts, return_report=True)
    assert torch.equal(fast, attr)
    expected = patch_scores_from_report(report, layers)
    scores, got_counts = scores_and_counts(explainer.vit, pixels, None, ThetaSettings(layers=layers), "pixel")
    assert torch.equal(scores, expected) and torch.equal(got_counts, counts.flatten(1))
    if isinstance(layers, list):
        by_hand = report.patch_theta[:, [report.layers.index(i) for i in layers]].mean(dim=1)
        torch.testing.assert_close(expected, by_hand, rtol=1e-6, atol=1e-7)


def test_model_flags_and_hooks_restored(model, pixels, counts):
    flags = [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()]
    SIFTInterrelation(model, image_space="pixel").attribute(pixels, counts)
    with pytest.raises(CaptumSiftError):
        SIFTInterrelation(model, image_space="pixel").attribute(pixels, counts[:2])
    assert flags == [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_feature_mask_drives_feature_ablation(model, pixels):
    explainer = SIFTInterrelation(model)
    x = (pixels - 0.5) / 0.5
    mask = explainer.feature_mask(x)
    assert mask.shape == (1, 1, 64, 64) and mask.dtype == torch.long
    assert mask[0, 0, 17, 33].item() == 1 * 4 + 2 and mask.unique().numel() == 16
    ablation = FeatureAblation(model).attribute(x, target=0, feature_mask=mask)
    with torch.no_grad():
        base = model(x)[:, 0]
        hole = x.clone()
        hole[:, :, 16:32, 32:48] = 0  # patch (1, 2), Captum's default baseline 0
        expected = base - model(hole)[:, 0]
    torch.testing.assert_close(ablation[:, 0, 20, 40], expected, rtol=1e-4, atol=1e-5)


def test_captum_visualizer_and_metrics_accept_the_output(model, pixels, counts):
    explainer = SIFTInterrelation(model, image_space="pixel")
    attr = explainer.attribute(pixels, counts)
    fig, _ = visualization.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(), pixels[0].permute(1, 2, 0).numpy(), method="blended_heat_map",
        sign="positive", use_pyplot=False,
    )  # fmt: skip
    assert fig is not None

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.01
        return noise, inputs - noise

    x = (pixels - 0.5) / 0.5
    model_attr = SIFTInterrelation(model).attribute(x, counts)
    torch.testing.assert_close(model_attr, attr)  # model space and pixel space agree
    inf = infidelity(model, perturb, x, model_attr, target=0)
    assert inf.shape == (3,) and torch.isfinite(inf).all()

    def explain(inputs):  # sensitivity_max repeats each image n_perturb_samples times, not the counts
        return SIFTInterrelation(model).attribute(inputs, counts.repeat_interleave(inputs[0].shape[0] // 3, dim=0))

    sens = sensitivity_max(explain, x, n_perturb_samples=2)
    assert sens.shape == (3,) and torch.isfinite(sens).all()


def test_counts_for_fewer_images_are_refused_unless_repeat_counts(model, pixels, counts):
    """Counts of other images are never repeated silently (issue 23.4): only with repeat_counts=True, and only
    in Captum's order (each image's copies in a row)."""
    explainer = SIFTInterrelation(model, image_space="pixel")
    x8 = pixels[:2].repeat_interleave(4, dim=0)
    with pytest.raises(CaptumSiftError, match=r"keypoint_counts for the 8 input images, got counts for 1 images"):
        explainer.attribute(x8, counts[:1])
    with pytest.raises(CaptumSiftError, match=r"for the 8 input images, got counts for 2 images.*repeat_counts=True"):
        explainer.attribute(pixels[:2].repeat(4, 1, 1, 1), counts[:2])  # a tiled batch: no guessing
    with pytest.raises(CaptumSiftError, match="got image 0 again at position 2: a tiled batch"):
        explainer.attribute(pixels[:2].repeat(4, 1, 1, 1), counts[:2], repeat_counts=True)
    with pytest.raises(CaptumSiftError, match="8 is no multiple of 3"):
        explainer.attribute(x8, counts, repeat_counts=True)
    with pytest.raises(CaptumSiftError, match="repeat_counts to be True or False"):
        explainer.attribute(x8, counts[:2], repeat_counts=1)
    got = explainer.attribute(x8, counts[:2], repeat_counts=True)
    for i in range(8):  # copy i of image i // 4, with that image's counts
        single = explainer.attribute(pixels[i // 4 : i // 4 + 1], counts[i // 4 : i // 4 + 1])
        torch.testing.assert_close(got[i], single[0])
    assert torch.equal(explainer.attribute(pixels, counts, repeat_counts=True), explainer.attribute(pixels, counts))


def test_not_a_vit():
    with pytest.raises(CaptumSiftError, match="Vision Transformer"):
        SIFTInterrelation(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
def test_one_layer_and_one_head_select_from_the_per_head_maps(families, name):  # noqa: F811
    model = families[name]
    torch.manual_seed(1)
    x, t = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randint(0, 3, (3, 16))
    maps = patch_theta_maps(model, x, t).double()  # (B, L, H, N), checked against loops in tests/theta

    def scores(**kwargs):
        return SIFTInterrelation(model, **kwargs).attribute(x, t)[:, 0, ::8, ::8].flatten(1).double()

    torch.testing.assert_close(scores(), torch.nanmean(maps, dim=(1, 2)))  # the default: every layer, head mean
    torch.testing.assert_close(scores(layer=1), maps[:, 1].mean(1))
    torch.testing.assert_close(scores(layer=1), scores(layers=[1]))
    torch.testing.assert_close(scores(head=2), maps[:, :, 2].mean(1))
    torch.testing.assert_close(scores(layer=-1, head=-1), maps[:, 2, 3])
    torch.testing.assert_close(scores(layers=[0, 2], head=0), maps[:, [0, 2], 0].mean(1))
    assert (maps[:, 2, 3] - maps[:, 2].mean(1)).abs().max() > 1e-3  # one head is not the head mean
    out, report = SIFTInterrelation(model, head=1, output="centered").attribute(x, t, return_report=True)
    torch.testing.assert_close(report.patch_theta.double(), maps.mean(2), atol=1e-6, rtol=1e-5)
    one = maps[:, :, 1].mean(1)
    torch.testing.assert_close(out[:, 0, ::8, ::8].flatten(1).double(), one - one.mean(1, keepdim=True))


def test_a_head_with_a_stage_name_uses_the_head_mean_stages(model, pixels, counts):
    from captum_sift.theta.stages import split_theta_kk

    maps = patch_theta_maps(model, pixels, counts, image_space="pixel")
    report = analyze(model, pixels, counts, image_space="pixel")
    got = SIFTInterrelation(model, image_space="pixel", layers="capture", head=1).attribute(pixels, counts)
    for b in range(pixels.shape[0]):
        start, end = split_theta_kk(torch.nanmean(report.kk[b], dim=1))
        expected = torch.nanmean(maps[b, start : end + 1, 1], dim=0)
        torch.testing.assert_close(got[b, 0, ::16, ::16].flatten(), expected)


def test_bad_layer_and_head_are_refused(model):
    with pytest.raises(CaptumSiftError, match=r"expected head in \[-3, 3\) \(the model has 3 heads\), got 3"):
        SIFTInterrelation(model, head=3)
    with pytest.raises(CaptumSiftError, match=r"expected layer in \[-4, 4\) \(the model has 4 blocks\), got 4"):
        SIFTInterrelation(model, layer=4)
    with pytest.raises(CaptumSiftError, match="layer= or layers=, not both"):
        SIFTInterrelation(model, layer=1, layers=[2])
