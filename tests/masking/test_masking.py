"""Top / Bottom / Random masks, fills, token dropping and the masking evaluation."""

import csv

import pytest
import timm
import torch

from captum_sift import CaptumSiftError, analyze, count_keypoints
from captum_sift.data import sample_images
from captum_sift.masking import (
    drop_tokens,
    evaluate_masking,
    mask_images,
    mcnemar_exact,
    num_masked,
    patch_scores,
    random_scores,
    select_patches,
    wilson_interval,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3, num_classes=4).eval()


@pytest.fixture(scope="module")
def pixels():
    return sample_images(["astronaut", "coffee", "chelsea", "camera"], size=64)


def test_num_masked_rounds_half_up():
    assert [num_masked(r, 196) for r in (0.05, 0.1, 0.2, 0.3, 0.4)] == [10, 20, 39, 59, 78]
    assert num_masked(0.125, 4) == 1 and num_masked(0.0, 4) == 0 and num_masked(1.0, 4) == 4


def test_select_top_bottom_ties_by_index_and_exact_counts():
    scores = torch.tensor([[0.5, 0.1, 0.5, 0.9, 0.1, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    top = select_patches(scores, 0.5, "top")  # 3 of 6
    assert top.tolist() == [[True, False, True, True, False, False], [True, True, True, False, False, False]]
    bottom = select_patches(scores, 0.5, "bottom")
    assert bottom.tolist() == [[True, True, False, False, True, False], [True, True, True, False, False, False]]
    for ratio in (0.0, 0.2, 0.7, 1.0):
        for mode in ("top", "bottom", "random"):
            assert (
                select_patches(scores, ratio, mode, torch.Generator().manual_seed(1)).sum(1).tolist()
                == [num_masked(ratio, 6)] * 2
            )


def test_random_mode_is_reproducible_with_a_generator():
    scores = torch.zeros(3, 50)
    a = select_patches(scores, 0.3, "random", torch.Generator().manual_seed(5))
    b = select_patches(scores, 0.3, "random", torch.Generator().manual_seed(5))
    c = select_patches(scores, 0.3, "random", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("fill", [0.0, -1.5, "mean", "blur", "tensor"])
def test_mask_images_fills_selected_patches_only(pixels, fill):
    x = (pixels - 0.5) / 0.5
    selected = torch.zeros(4, 16, dtype=torch.bool)
    selected[:, [0, 5, 15]] = True
    if fill == "tensor":
        fill = torch.tensor([1.0, -1.0, 0.25])
    out = mask_images(x, selected, 16, fill)
    keep = torch.ones(4, 1, 64, 64, dtype=torch.bool)
    for p in (0, 5, 15):
        keep[:, :, (p // 4) * 16 : (p // 4 + 1) * 16, (p % 4) * 16 : (p % 4 + 1) * 16] = False
    keep = keep.expand_as(x)
    assert torch.equal(out[keep], x[keep])  # bit-identical outside the masks
    patch = out[:, :, 16:32, 16:32]  # patch 5
    if fill == "mean":
        torch.testing.assert_close(patch[:, :, 3, 7], x.mean(dim=(2, 3)))
    elif isinstance(fill, torch.Tensor):
        torch.testing.assert_close(patch[:, :, 0, 0], fill.expand(4, 3))
    elif fill == "blur":
        assert (patch.std(dim=(2, 3)) < x[:, :, 16:32, 16:32].std(dim=(2, 3))).all()
    else:
        assert (patch == fill).all()


def test_drop_tokens_equals_the_model_on_the_kept_tokens(model, pixels):
    x = (pixels - 0.5) / 0.5
    with torch.no_grad():
        none = drop_tokens(model, x, torch.zeros(4, 16, dtype=torch.bool))
        torch.testing.assert_close(none, model(x))
        selected = select_patches(torch.arange(16.0).expand(4, 16), 0.25, "top")  # drop patches 12..15
        dropped = drop_tokens(model, x, selected)
        tokens = model._pos_embed(model.patch_embed(x))[:, :13]  # CLS + patches 0..11
        expected = model.forward_head(model.norm(model.blocks(model.norm_pre(tokens))))
    torch.testing.assert_close(dropped, expected)
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(CaptumSiftError, match="same number of selected patches"):
        bad = selected.clone()
        bad[0, 0] = True
        drop_tokens(model, x, bad)


def test_patch_scores_are_head_and_layer_means_of_theta(model, pixels):
    counts = count_keypoints(pixels, 16)
    report = analyze(model, pixels, counts, image_space="pixel")
    scores = patch_scores(model, pixels, counts, image_space="pixel")
    torch.testing.assert_close(scores, report.patch_theta.mean(dim=1))
    torch.testing.assert_close(patch_scores(model, pixels, counts, image_space="pixel", layers=[2]),
                               report.patch_theta[:, 2])  # fmt: skip


def test_evaluate_masking_table_equals_a_manual_loop(model, pixels, tmp_path):
    x = (pixels - 0.5) / 0.5
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        labels = model(x).argmax(1)  # baseline accuracy 1 by construction
    labels[3] = (labels[3] + 1) % 4  # ... except image 3
    table = evaluate_masking(
        model, x, labels, ratios=(0.25, 0.5), modes=("top", "bottom"), batch_size=3, progress=False
    )
    scores = patch_scores(model, x)
    for mode in ("top", "bottom"):
        for ratio in (0.25, 0.5):
            with torch.no_grad():
                pred = model(mask_images(x, select_patches(scores, ratio, mode), 16, 0.0)).argmax(1)
            assert table.accuracy(mode, ratio) == pytest.approx(float((pred == labels).float().mean()))
    assert table.baseline["accuracy"] == 0.75 and table.total == 4
    table.save_csv(tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 1 + 4 and rows[0]["mode"] == "none"
    loader = [(x[:2], labels[:2]), (x[2:], labels[2:])]
    again = evaluate_masking(model, loader, ratios=(0.25, 0.5), modes=("top", "bottom"), progress=False)
    assert again.rows() == table.rows()
    dropped = evaluate_masking(model, x, labels, ratios=(0.25,), modes=("random",), fill="drop", progress=False)
    selected = select_patches(random_scores(torch.arange(4), 16, seed=0), 0.25, "top")  # the same seed
    with torch.no_grad():
        pred = drop_tokens(model, x, selected).argmax(1)
    assert dropped.accuracy("random", 0.25) == pytest.approx(float((pred == labels).float().mean()))
    assert "random" in str(dropped) and "0.25" in str(dropped)


def test_statistics_hand_worked():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 * 0.5**5)  # 0.0625
    assert mcnemar_exact(3, 3) == 1.0


def test_bad_input(model, pixels):
    x = (pixels - 0.5) / 0.5
    with pytest.raises(CaptumSiftError, match="expected ratio to be a finite number >= 0 and <= 1, got 1.5"):
        select_patches(torch.rand(2, 16), 1.5)
    with pytest.raises(CaptumSiftError, match=r"scores of shape \(B, N\), got \(16,\)"):
        select_patches(torch.rand(16), 0.1)
    with pytest.raises(CaptumSiftError, match="NaN"):
        select_patches(torch.tensor([[0.1, float("nan")]]), 0.5)
    with pytest.raises(CaptumSiftError, match=r"selected of shape \(B, N\) = \(4, 16\).*got \(4, 15\)"):
        mask_images(x, torch.zeros(4, 15, dtype=torch.bool), 16)
    with pytest.raises(CaptumSiftError, match=r"fill tensor of shape.*got \(2,\)"):
        mask_images(x, torch.zeros(4, 16, dtype=torch.bool), 16, torch.zeros(2))
    with pytest.raises(CaptumSiftError, match=r"selected of shape \(B, N\) = \(4, 16\)"):
        drop_tokens(model, x, torch.zeros(4, 9, dtype=torch.bool))
    with pytest.raises(CaptumSiftError, match=r"labels of shape \(4,\)"):
        evaluate_masking(model, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(CaptumSiftError, match="modes among"):
        evaluate_masking(model, x, torch.zeros(4, dtype=torch.long), modes=("middle",))


def test_mask_figures(model, pixels):
    from captum_sift import viz

    x = (pixels - 0.5) / 0.5
    labels = torch.zeros(4, dtype=torch.long)
    table = evaluate_masking(model, x, labels, ratios=(0.25, 0.5), progress=False)
    ax = viz.plot_mask_curve(table)
    top = [line for line in ax.get_lines() if line.get_label() == "top"][0]
    assert list(top.get_ydata()) == [table.accuracy("top", 0.25), table.accuracy("top", 0.5)]
    scores = patch_scores(model, x)
    fig = viz.plot_mask_grid(pixels[0], scores[0], 16, ratios=(0.25, 0.5), table=table)
    assert len(fig.axes) == 4 and "acc" in fig.axes[0].get_title() and "Bottom" in fig.axes[2].get_title()
    # the Top 25 % panel shows exactly 4 gray patches
    shown = torch.tensor(fig.axes[0].get_images()[0].get_array())
    gray = (shown == 0.5).all(dim=-1).float().view(4, 16, 4, 16).mean(dim=(1, 3))
    assert int((gray == 1).sum()) == 4


def test_overlay_grid(pixels):
    from captum_sift import viz

    attr = torch.rand_like(pixels)
    fig = viz.overlay(pixels, attr, titles=["a", "b", "c", "d"], ncols=2, minmax=True)
    assert len(fig.axes) >= 4 and fig.axes[0].get_title() == "a"
    with pytest.raises(CaptumSiftError, match="attributions of the images' shape"):
        viz.overlay(pixels, attr[:, :1])


# -- what the figure shows is what the model saw (issue 23.7) --------------------------------------
@pytest.mark.parametrize("fill", [-0.8, "mean", "blur", "drop"])
def test_mask_grid_shows_the_fill_the_model_saw(pixels, fill):
    from captum_sift import viz

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    scores = torch.arange(16.0)
    fig = viz.plot_mask_grid(pixels[1], scores, 16, ratios=(0.25,), fill=fill, mean=mean, std=std)
    stats = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    model_input = (pixels[1:2] - stats[0]) / stats[1]
    for ax, mode in zip(fig.axes, ("top", "bottom"), strict=True):
        shown = torch.tensor(ax.get_images()[0].get_array()).permute(2, 0, 1)  # (3 or 4, H, W)
        selected = select_patches(scores[None], 0.25, mode)
        hidden = mask_images(torch.zeros(1, 1, 64, 64), selected, 16, 1.0)[0, 0].bool()
        assert int(hidden.sum()) == 4 * 16 * 16
        assert torch.equal(shown[:3][:, ~hidden], pixels[1][:, ~hidden])  # the rest exactly as given
        if fill == "drop":  # dropped tokens: nothing shown
            assert shown.shape[0] == 4 and bool((shown[3][hidden] == 0).all()) and bool((shown[3][~hidden] == 1).all())
            continue
        seen = (mask_images(model_input, selected, 16, fill) * stats[1] + stats[0]).clamp(0, 1)[0]
        torch.testing.assert_close(shown[:, hidden], seen[:, hidden])
        if fill == -0.8:  # the number the model saw, in pixels: -0.8 std + mean, per channel
            torch.testing.assert_close(shown[:, hidden], (-0.8 * stats[1] + stats[0]).view(3, 1).expand(3, 1024))
        gray = torch.full_like(shown[:, hidden], 0.5)
        assert not torch.allclose(shown[:, hidden], gray, atol=0.02)  # not the old fixed gray


# -- masked logits that are not finite are refused, never scored (issue 25.1) ----------------------
def test_non_finite_masked_logits_are_refused(model, pixels):
    x = (pixels - 0.5) / 0.5
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        assert not bool(torch.isfinite(model(mask_images(x, torch.ones(4, 16, dtype=torch.bool), 16, 1e30))).any())
    with pytest.raises(CaptumSiftError, match=r"mode 'random', ratio 0.3: non-finite logits .* masked images"):
        evaluate_masking(model, x, labels, ratios=(0.3,), modes=("random",), fill=1e30, progress=False)
    avgpool = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=4,
                                class_token=False, global_pool="avg").eval()  # fmt: skip
    with pytest.raises(CaptumSiftError, match="cannot drop all 16 patch tokens"):
        evaluate_masking(avgpool, x, labels, ratios=(1.0,), modes=("random",), fill="drop", progress=False)
    with pytest.raises(CaptumSiftError, match="cannot drop all 16 patch tokens"):
        drop_tokens(avgpool, x, torch.ones(4, 16, dtype=torch.bool))
    # a class token classifies alone: all patches dropped is scored, with the logits of the class token
    table = evaluate_masking(model, x, labels, ratios=(1.0,), modes=("random",), fill="drop", progress=False)
    with torch.no_grad():
        cls_only = model._pos_embed(model.patch_embed(x))[:, :1]
        alone = model.forward_head(model.norm(model.blocks(model.norm_pre(cls_only))))
    assert table.accuracy("random", 1.0) == float((alone.argmax(1) == labels).float().mean())


# -- bad input to the masks and the evaluation (issues 25.5, 25.10, 25.14, 25.15, 25.16) -------------
def test_mask_images_refuses_non_bool_masks_and_fills_out_of_range(pixels):
    x = (pixels - 0.5) / 0.5
    for selected in (torch.rand(4, 16), -torch.ones(4, 16, dtype=torch.long), torch.ones(4, 16, dtype=torch.uint8)):
        with pytest.raises(CaptumSiftError, match=f"selected to be a bool tensor .*got dtype {selected.dtype}"):
            mask_images(x, selected, 16)
    selected = torch.zeros(4, 16, dtype=torch.bool)
    selected[:, 3] = True
    with pytest.raises(CaptumSiftError, match=r"fill for torch.float32 images to be a finite number .* got 1e\+39"):
        mask_images(x, selected, 16, 1e39)
    assert bool(torch.isfinite(mask_images(x.double(), selected, 16, 1e39)).all())  # float64 holds it
    with pytest.raises(CaptumSiftError, match="fill tensor of finite values"):
        mask_images(x, selected, 16, torch.tensor([1e39, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(CaptumSiftError, match="at least 4 x 4 pixels for fill='blur'.*got 1 x 1"):
        mask_images(torch.rand(1, 3, 1, 1), torch.ones(1, 1, dtype=torch.bool), 1, "blur")
    with pytest.raises(CaptumSiftError, match="generator to be a torch.Generator or None, got 42"):
        select_patches(torch.rand(2, 4), 0.5, "random", 42)
    import numpy as np

    expected = mask_images(x, selected, 16, 0.5)
    assert torch.equal(mask_images(x, selected, np.int64(16), np.float32(0.5)), expected)
    assert torch.equal(mask_images(x, selected, torch.tensor(16), torch.tensor(0.5)), expected)
    with pytest.raises(CaptumSiftError, match="patch_size to be an int >= 1, got 16.0"):
        mask_images(x, selected, 16.0)


def test_drop_tokens_refusals(model, pixels):
    x = (pixels - 0.5) / 0.5
    with pytest.raises(CaptumSiftError, match="selected to be a bool tensor"):
        drop_tokens(model, x, torch.zeros(4, 16))
    with pytest.raises(CaptumSiftError, match="not normalised with the model's statistics"):
        drop_tokens(model, pixels * 255, torch.zeros(4, 16, dtype=torch.bool))
    beit = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=64, depth=1, num_classes=4,
                             embed_dim=32, num_heads=2).eval()  # fmt: skip
    selected = select_patches(torch.arange(16.0).expand(4, 16), 0.25, "top")
    with pytest.raises(CaptumSiftError, match="fill='drop' is not supported for Beit: .*relative position bias"):
        drop_tokens(beit, (pixels - 0.5) / 0.5, selected)
    with pytest.raises(CaptumSiftError, match="fill='drop' is not supported for Beit"):
        evaluate_masking(beit, pixels, torch.zeros(4, dtype=torch.long), fill="drop", image_space="pixel")
    from captum_sift import MaskAsPrompt

    with pytest.raises(CaptumSiftError, match="fill='drop' is not supported for Beit"):
        MaskAsPrompt(beit, fill="drop")
    table = evaluate_masking(beit, pixels, torch.zeros(4, dtype=torch.long), ratios=(0.25,), modes=("random",),
                             fill=0.0, image_space="pixel", progress=False)  # fmt: skip
    assert table.total == 4  # BEiT is fine with a fill value


class _TupleViT(timm.models.vision_transformer.VisionTransformer):
    """A timm ViT whose forward returns (logits, features), as some research models do."""

    def forward(self, x):
        features = self.forward_features(x)
        return self.forward_head(features), features


class _DictViT(timm.models.vision_transformer.VisionTransformer):
    """A timm ViT whose forward returns a dict."""

    def forward(self, x):
        return {"logits": super().forward(x)}


def test_evaluate_masking_refuses_bad_labels_no_images_and_non_logit_outputs(model, pixels):
    x = (pixels - 0.5) / 0.5
    with pytest.raises(CaptumSiftError, match="expected integer labels, got dtype torch.float32"):
        evaluate_masking(model, x, torch.tensor([0.5, 1.5, 2.5, 0.0]), modes=("random",), progress=False)
    with pytest.raises(CaptumSiftError, match="expected integer labels, got dtype torch.float32"):
        evaluate_masking(model, [(x, torch.tensor([0.0, 1.0, 2.0, 3.0]))], modes=("random",), progress=False)
    with pytest.raises(CaptumSiftError, match="at least one image to evaluate, got none"):
        evaluate_masking(model, x[:0], torch.zeros(0, dtype=torch.long), progress=False)
    with pytest.raises(CaptumSiftError, match="at least one image to evaluate, got none"):
        evaluate_masking(model, [], progress=False)
    with pytest.raises(CaptumSiftError, match=r"seed to be an int >= 0 and <= 4294967295, got 1.5"):
        evaluate_masking(model, x, torch.zeros(4, dtype=torch.long), seed=1.5)
    import numpy as np

    kwargs = {"ratios": (0.25,), "modes": ("random",), "progress": False}
    labels = torch.tensor([0, 1, 2, 3])
    assert (
        evaluate_masking(model, x, labels, seed=np.int64(3), **kwargs).rows()
        == evaluate_masking(model, x, labels, seed=3, **kwargs).rows()
    )
    torch.manual_seed(0)
    tuple_vit = _TupleViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=4).eval()
    with pytest.raises(CaptumSiftError, match="forward to return the logits.*got a tuple"):
        evaluate_masking(tuple_vit, pixels, labels, image_space="pixel", **kwargs)
    dict_vit = _DictViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=4).eval()
    with pytest.raises(CaptumSiftError, match="forward to return the logits.*got a dict"):
        evaluate_masking(dict_vit, pixels, labels, image_space="pixel", **kwargs)
