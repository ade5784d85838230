"""Spurious patches (§5.1), MaskAsPrompt as a drop-in model, and θ outputs Captum's visualiser can show."""

import json

import pytest
import timm
import torch

from captum_sift import CaptumSiftError, InterrelationReport, MaskAsPrompt, SIFTInterrelation, analyze
from captum_sift.cli.main import main
from captum_sift.data import default_dataset, default_model, sample_images
from captum_sift.masking import evaluate_masking, select_patches
from captum_sift.theta.spurious import spurious_patches

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "64", "--batch-size", "2", "--quiet"]


def test_spurious_selection_by_hand():
    scores = torch.tensor([[0.2, 0.9, 0.1, 0.4, 0.3, 0.6]])
    counts = torch.tensor([[3, 2, 0, 1, 0, 5]])  # Key: patches 0, 1, 3, 5
    assert spurious_patches(scores, counts).tolist() == [[True, False, False, True, False, False]]
    assert spurious_patches(scores, counts, threshold=0.65, min_keypoints=2).tolist() == [
        [True, False, False, False, False, True]
    ]
    # ratio 0.5 of 6 patches = 3: the three lowest-θ Key patches, Non-key 2 and 4 never
    assert select_patches(scores, 0.5, "spurious", keypoint_counts=counts).tolist() == [
        [True, False, False, True, False, True]
    ]
    # with a threshold, only the flagged ones: fewer than round(r N)
    assert select_patches(scores, 0.5, "spurious", keypoint_counts=counts, threshold=0.5).sum() == 2
    with pytest.raises(CaptumSiftError, match="keypoint_counts of shape"):
        select_patches(scores, 0.5, "spurious")


@pytest.fixture(scope="module")
def embedded():
    images, labels = default_dataset(limit=96)
    return default_model(), images, labels


@pytest.mark.parametrize(("mode", "fill"), [("bottom", 0.0), ("top", "drop"), ("spurious", "mean"), ("bottom", "blur")])
def test_mask_as_prompt_equals_evaluate_masking(embedded, mode, fill):
    model, images, labels = embedded
    table = evaluate_masking(model, images, labels, ratios=(0.1,), modes=(mode,), fill=fill, image_space="pixel",
                             batch_size=32, progress=False)  # fmt: skip
    prompted = MaskAsPrompt(model, ratio=0.1, mode=mode, fill=fill, image_space="pixel").eval()
    correct = 0
    for start in range(0, len(images), 20):  # another batch size than the table's: per-image results
        with torch.no_grad():
            correct += int((prompted(images[start : start + 20]).argmax(1) == labels[start : start + 20]).sum())
    assert correct / len(images) == table.accuracy(mode, 0.1)


def test_mask_as_prompt_in_model_space_with_counts_and_other_families(embedded):
    model, images, labels = embedded
    mean, std = 0.2860, 0.3530  # the embedded model's statistics
    x = (images[:8] - mean) / std
    prompted = MaskAsPrompt(model, ratio=0.2, mode="bottom")
    from captum_sift import count_keypoints

    counts = count_keypoints(images[:8], 16)
    with torch.no_grad():
        a, b = prompted(x), prompted(x, counts)
        masked = prompted.select(x, counts)
    torch.testing.assert_close(a, b)
    assert masked.sum(1).tolist() == [round(0.2 * 49)] * 8
    with pytest.warns(UserWarning, match="image_space='pixel'"):
        prompted(images[:8])  # pixels given as model input: a narrow band, warned about (a dark photo could be)
    import torchvision

    tv = torchvision.models.VisionTransformer(32, 16, 2, 2, 16, 32, num_classes=3).eval()
    out = MaskAsPrompt(tv, 0.25, "top", image_space="pixel")(sample_images(["astronaut", "coffee"], size=32))
    assert out.shape == (2, 3)


def test_outputs_for_captums_visualiser():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    x = sample_images(["astronaut", "coffee"], size=64)
    theta = SIFTInterrelation(model, image_space="pixel").attribute(x)[:, 0, ::16, ::16].flatten(1)
    centered = SIFTInterrelation(model, image_space="pixel", output="centered").attribute(x)[:, 0, ::16, ::16]
    rank = SIFTInterrelation(model, image_space="pixel", output="rank").attribute(x)[:, 0, ::16, ::16].flatten(1)
    torch.testing.assert_close(centered.flatten(1), theta - theta.mean(1, keepdim=True))
    expected = theta.argsort(dim=1, stable=True).argsort(dim=1, stable=True).float() * 2 / 15 - 1
    torch.testing.assert_close(rank, expected)
    with pytest.raises(CaptumSiftError, match="expected output in"):
        SIFTInterrelation(model, output="signed")
    from captum.attr import visualization

    fig, _ = visualization.visualize_image_attr(
        SIFTInterrelation(model, image_space="pixel", output="centered").attribute(x)[0]
        .permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(), method="blended_heat_map", sign="all", use_pyplot=False,
    )  # fmt: skip
    assert fig is not None


def test_report_positions_merge_and_save(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    x = sample_images(["astronaut", "coffee", "chelsea"], size=64)
    whole = analyze(model, x, image_space="pixel")
    parts = analyze(model, x[:1], image_space="pixel").merge(analyze(model, x[1:], image_space="pixel"))
    from captum_sift.theta.analysis import patch_scores_from_report

    flags = spurious_patches(patch_scores_from_report(whole), whole.keypoint_counts)
    assert torch.equal(whole.positions["spurious"], flags.long().sum(0))
    assert torch.equal(whole.positions["key"], (whole.keypoint_counts >= 1).long().sum(0))
    assert torch.equal(parts.positions["spurious"], whole.positions["spurious"])
    whole.without_per_image().save_json(tmp_path / "r.json")
    back = InterrelationReport.load_json(tmp_path / "r.json")
    assert torch.equal(back.positions["key"], whole.positions["key"])
    assert torch.equal(back.curves["kk"], whole.curves["kk"])


def test_cli_spurious_mode_figures_and_stage_confidence(tmp_path, image_folder, capsys):
    out = tmp_path / "a"
    assert main(["analyze", "--out", str(out), "--images", str(image_folder), *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "NO CLEAR STAGES" in stdout and "boundary confidence" in stdout  # random weights
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["clear"] is False and set(report["stages"]["confidence"]) == {
        "capture_start",
        "coach_start",
    }
    assert len(report["spurious_positions"]["key"]) == 4
    assert {"spurious.png", "spurious_positions.png"} <= {p.name for p in out.iterdir()}
    assert "NO CLEAR STAGES" in (out / "index.html").read_text()
    masks = tmp_path / "m"
    assert main(["mask-eval", "--out", str(masks), "--images", str(image_folder), *TINY, "--ratios", "0.25",
                 "--modes", "spurious,bottom", "--fill", "drop", "--class-map", str(_map(tmp_path))]) == 0  # fmt: skip
    rows = (masks / "mask_eval.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["none", "spurious", "bottom"]


def _map(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"a": 1, "b": 2}))
    return path


# -- the random mode: one per-image scheme for MaskAsPrompt and evaluate_masking (issue 23.3) ----------
def test_random_mask_as_prompt_equals_evaluate_masking_in_a_dataloader_loop(embedded):
    from torch.utils.data import DataLoader, TensorDataset

    from captum_sift.masking import random_selection

    model, images, labels = embedded
    table = evaluate_masking(model, images, labels, ratios=(0.2,), modes=("random",), image_space="pixel",
                             batch_size=32, seed=3, progress=False)  # fmt: skip
    prompted = MaskAsPrompt(model, ratio=0.2, mode="random", image_space="pixel", seed=3).eval()
    mean, std = prompted.vit.stats(images)
    correct = worse = better = 0
    with torch.no_grad():
        for x, y in DataLoader(TensorDataset(images, labels), batch_size=20):
            masked_ok = prompted(x).argmax(1) == y
            base_ok = model((x - mean) / std).argmax(1) == y
            correct += int(masked_ok.sum())
            worse += int((base_ok & ~masked_ok).sum())
            better += int((~base_ok & masked_ok).sum())
    assert prompted.images_seen == len(images)
    cell = table.cells[("random", 0.2)]
    assert (correct, worse, better) == (cell["correct"], cell["worse"], cell["better"])
    # the masks themselves: image i's mask depends on (seed, i) only
    ids = torch.arange(40, 60)
    assert torch.equal(prompted.select(images[40:60], image_ids=ids), random_selection(ids, 49, 0.2, 3))
    assert prompted.select(images[:1], image_ids=[7]).sum() == round(0.2 * 49)


def test_random_mask_as_prompt_one_batch_equals_images_one_by_one(embedded):
    model, images, _ = embedded
    x = images[:8]
    whole = MaskAsPrompt(model, ratio=0.3, mode="random", image_space="pixel")
    single = MaskAsPrompt(model, ratio=0.3, mode="random", image_space="pixel")
    with torch.no_grad():
        batch = whole(x)
        one_by_one = torch.cat([single(x[i : i + 1]) for i in range(8)])
        by_ids = torch.cat([whole(x[i : i + 1], image_ids=torch.tensor([i])) for i in (5, 2)])
    torch.testing.assert_close(batch, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_ids, batch[[5, 2]], atol=1e-5, rtol=1e-5)
    masks = [single.select(x[i : i + 1], image_ids=[i]) for i in range(8)]
    assert torch.equal(whole.select(x, image_ids=torch.arange(8)), torch.cat(masks))
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 8  # a different mask for every image
    whole.reset()
    with torch.no_grad():
        torch.testing.assert_close(whole(x), batch)  # numbered from 0 again
    with pytest.raises(CaptumSiftError, match=r"expected image_ids: 8 ints >= 0"):
        whole(x, image_ids=torch.arange(8.0))
    with pytest.raises(CaptumSiftError, match=r"expected image_ids: 8 ints >= 0"):
        whole(x, image_ids=[0, 1])


# -- gradients through MaskAsPrompt, and what it refuses (issues 25.5, 25.14) ------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=4).eval()
    return model, sample_images(["astronaut", "coffee"], size=64)


@pytest.mark.parametrize("image_space", ["pixel", "model"])
def test_saliency_through_mask_as_prompt_is_the_autograd_gradient(tiny, image_space):
    from captum.attr import Saliency

    from captum_sift.attr.patches import patch_scores_to_pixels
    from captum_sift.masking.apply import mask_images

    model, pixels = tiny
    x = pixels if image_space == "pixel" else (pixels - 0.5) / 0.5
    prompted = MaskAsPrompt(model, ratio=0.25, mode="top", fill=0.0, image_space=image_space)
    attribution = Saliency(prompted).attribute(x, target=1, abs=False)
    selected = prompted.select(x)
    # by hand: normalise (pixel space), fill the same patches, differentiate the target logit
    leaf = x.clone().requires_grad_()
    model_input = (leaf - 0.5) / 0.5 if image_space == "pixel" else leaf
    model(mask_images(model_input, selected, 16, 0.0))[:, 1].sum().backward()
    torch.testing.assert_close(attribution, leaf.grad)
    hidden = patch_scores_to_pixels(selected.to(torch.uint8), x.shape, 16).bool()
    assert bool((attribution[hidden] == 0).all())  # filled pixels do not reach the logits
    assert float(attribution[~hidden].abs().min()) >= 0 and float(attribution[~hidden].abs().mean()) > 1e-6


def test_mask_as_prompt_refuses_headless_models_and_0_255_images(tiny):
    model, pixels = tiny
    headless = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=1, num_classes=0)
    with pytest.raises(CaptumSiftError, match="without a classification head"):
        MaskAsPrompt(headless, mode="random")
    with pytest.raises(CaptumSiftError, match="without a classification head"):
        evaluate_masking(headless, pixels, torch.tensor([0, 1]), modes=("random",), image_space="pixel")
    for mode in ("random", "top"):
        with pytest.raises(CaptumSiftError, match="not normalised with the model's statistics"):
            MaskAsPrompt(model, mode=mode)(pixels * 255)
    with pytest.raises(CaptumSiftError, match=r"seed to be an int >= 0 and <= 4294967295, got 1.5"):
        MaskAsPrompt(model, mode="random", seed=1.5)
    with pytest.raises(CaptumSiftError, match="expected fill to be a finite number, got nan"):
        MaskAsPrompt(model, fill=float("nan"))
    import numpy as np

    a = MaskAsPrompt(model, ratio=np.float32(0.25), mode="random", seed=np.int64(3), image_space="pixel")
    b = MaskAsPrompt(model, ratio=0.25, mode="random", seed=3, image_space="pixel")
    assert a.seed == 3 and type(a.seed) is int and a.ratio == 0.25
    assert torch.equal(a.select(pixels), b.select(pixels))
