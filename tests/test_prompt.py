"""Spurious patches (§5.1), MaskAsPrompt as a drop-in model, and θ outputs Captum's visualiser can show."""

import json

import pytest
import timm
import torch

from captum_sift import CaptumSiftError, InterrelationReport, MaskAsPrompt, SIFTInterrelation, analyze
from captum_sift.cli import main
from captum_sift.data import default_dataset, default_model, sample_images
from captum_sift.evaluation import evaluate_masking
from captum_sift.patches import select_patches, spurious_patches

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
    from captum_sift.analysis import patch_scores_from_report

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
