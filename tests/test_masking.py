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
    with pytest.raises(CaptumSiftError, match=r"ratio in \[0, 1\], got 1.5"):
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
