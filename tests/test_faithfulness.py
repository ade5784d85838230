"""Attribution methods side by side: deletion/insertion against Quantus, every method on every family."""

import numpy as np
import pytest
import torch
import torchvision
from conftest import failure_of

from captum_sift import CaptumSiftError
from captum_sift.data import default_dataset, default_model
from captum_sift.faithfulness import (
    METHODS,
    compare,
    deletion_insertion,
    deletion_insertion_curves,
    explain,
    patch_attribution,
)
from captum_sift.patches import patch_scores_to_pixels
from captum_sift.vit import as_vit

quantus = pytest.importorskip("quantus")
MEAN, STD = 0.2860, 0.3530  # the embedded model's statistics


@pytest.fixture(scope="module")
def embedded():
    images, labels = default_dataset(limit=6)
    return default_model(), (images - MEAN) / STD, labels


def test_deletion_curve_equals_quantus_region_perturbation(embedded):
    model, x, y = embedded
    scores = torch.rand(6, 49, generator=torch.Generator().manual_seed(0))  # no ties
    points, deletion, insertion = deletion_insertion_curves(as_vit(model), x, y, scores, steps=49, fill=0.0)
    assert points == list(range(50))
    metric = quantus.RegionPerturbation(patch_size=16, order="morf", regions_evaluation=49, normalise=False,
                                        perturb_baseline=0.0, disable_warnings=True)  # fmt: skip
    attributions = patch_scores_to_pixels(scores, x.shape, 16).numpy()
    theirs = np.array(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=attributions,
                             channel_first=True, softmax=True, device="cpu"))  # fmt: skip
    np.testing.assert_allclose((deletion[:, :1] - deletion[:, 1:]).numpy(), theirs, atol=1e-6)
    # insertion starts from the fully masked image and ends on the original
    torch.testing.assert_close(insertion[:, -1], deletion[:, 0])
    torch.testing.assert_close(insertion[:, 0], deletion[:, -1])
    auc_del, auc_ins = deletion_insertion(as_vit(model), x, y, scores, steps=49)
    expected = ((deletion[:, 1:] + deletion[:, :-1]) / 2 / 49).sum(1)
    torch.testing.assert_close(auc_del, expected)
    assert auc_ins.shape == (6,)


def test_patch_attribution_sums_each_patch():
    a = torch.zeros(1, 3, 32, 32)
    a[0, :, :16, 16:] = 1.0  # patch 1: 3 x 16 x 16 ones
    a[0, 0, 20, 3] = 5.0  # patch 2
    assert patch_attribution(a, 16).tolist() == [[0.0, 768.0, 5.0, 0.0]]


def test_compare_runs_every_method_and_metric(embedded):
    model, x, y = embedded
    truth = torch.tensor([0, 10, 20, 30, 40, 48])
    table = compare(model, x, y, methods=METHODS, true_patch=truth, steps=4, ig_steps=4, progress=False)
    rows = table.rows()
    metrics = {r["metric"] for r in rows}
    assert metrics == {"deletion_auc", "insertion_auc", "faithfulness_correlation",
                       "mprt_complexity_change",
                       "true_patch_rank", "pointing_game", "seconds_per_image", "forwards_per_image"}  # fmt: skip
    assert {r["method"] for r in rows} == set(METHODS)
    for r in rows:
        if r["metric"] in ("deletion_auc", "insertion_auc"):
            assert 0.0 <= r["mean"] <= 1.0 and r["n"] == 6
        if r["metric"] == "true_patch_rank":
            assert 0 <= r["mean"] < 49
    for method in ("theta", "rollout", "random"):  # Quantus's PointingGame: the maximum lies in the true patch
        per_image = table.values[method]
        assert per_image["pointing_game"] == [float(v == 0) for v in per_image["true_patch_rank"]]
    assert "theta" in str(table)


@pytest.mark.parametrize("method", ["theta", "rollout", "raw_attention", "saliency", "integrated_gradients", "gradcam"])
def test_explain_works_on_torchvision_and_hf(method):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(32, 16, 2, 2, 16, 32, num_classes=3).eval()
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
        patch_size=16, num_labels=3)).eval()  # fmt: skip
    from captum_sift.data import sample_images

    pixels = sample_images(["astronaut", "coffee"], size=32)
    for model in (tv, hf):
        vit = as_vit(model)
        mean, std = vit.stats(pixels)
        out = explain(method, vit, (pixels - mean) / std, torch.tensor([0, 2]), ig_steps=4)
        assert out.shape == pixels.shape and bool(torch.isfinite(out).all())


def test_bad_plans_are_refused(embedded):
    model, x, y = embedded
    with pytest.raises(CaptumSiftError, match="expected methods among"):
        compare(model, x, y, methods=("theta", "lime"))
    with pytest.raises(CaptumSiftError, match="expected distinct methods"):
        compare(model, x, y, methods=("theta", "theta"))
    with pytest.raises(CaptumSiftError, match="expected labels of shape"):
        compare(model, x, y[:2], methods=("theta",))


def test_comparison_tables_merge_and_round_trip(embedded):
    model, x, y = embedded
    whole = compare(model, x, y, methods=("rollout", "random"), steps=4, quantus_metrics=False, batch_size=6)
    parts = compare(model, x[:2], y[:2], methods=("rollout", "random"), steps=4, quantus_metrics=False).merge(
        compare(model, x[2:], y[2:], methods=("rollout", "random"), steps=4, quantus_metrics=False)
    )
    from captum_sift.faithfulness import ComparisonTable

    back = ComparisonTable.from_dict(parts.to_dict())
    for table in (parts, back):
        np.testing.assert_allclose(
            table.values["rollout"]["deletion_auc"], whole.values["rollout"]["deletion_auc"], rtol=1e-5
        )  # batch size changes float rounding only
        assert table.curves["rollout"]["n"] == 6
        np.testing.assert_allclose(table.curves["rollout"]["deletion"], whole.curves["rollout"]["deletion"], rtol=1e-5)
    with pytest.raises(CaptumSiftError, match="expected a comparison table"):
        ComparisonTable.from_dict({"values": 3})


def test_shortcut_markers_are_where_they_say():
    from captum_sift.shortcut import marker_textures, plant_markers

    textures = marker_textures(12)
    assert textures.shape == (10, 12, 12) and len({t.flatten().tolist().__str__() for t in textures}) == 10
    images = torch.full((20, 1, 112, 112), 0.3)
    labels = torch.arange(20) % 10
    marked, position, kind = plant_markers(images, labels, correlated=True, seed=3)
    assert torch.equal(kind, labels)
    for b in range(20):
        row, col = divmod(int(position[b]), 7)
        patch = marked[b, 0, row * 16 + 2 : row * 16 + 14, col * 16 + 2 : col * 16 + 14]
        assert torch.equal(patch, textures[int(kind[b])])
        rest = marked[b].clone()
        rest[0, row * 16 + 2 : row * 16 + 14, col * 16 + 2 : col * 16 + 14] = 0.3
        assert torch.equal(rest, images[b])  # nothing else changed
    _, same_position, random_kind = plant_markers(images, labels, correlated=False, seed=3)
    assert torch.equal(same_position, position) and not torch.equal(random_kind, labels)
    with pytest.raises(CaptumSiftError, match="labels"):
        plant_markers(images, labels + 5)


def test_cli_compare_quick(tmp_path, capsys):
    from captum_sift.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--quick", "--quiet", "--methods", "theta,rollout,gradcam,random"]) == 0
    names = {"compare.csv", "compare.json", "deletion.png", "insertion.png", "sanity.png", "overlays.png", "index.html"}
    assert names <= {p.name for p in out.iterdir()}
    import json

    document = json.loads((out / "compare.json").read_text())
    assert document["num_images"] == 16
    assert {r["method"] for r in document["rows"]} == {"theta", "rollout", "gradcam", "random"}
    assert main(["compare", "--out", str(tmp_path / "bad"), "--quick", "--methods", "theta,lime"]) == 2
    assert "expected distinct --methods" in capsys.readouterr().err


def test_cli_compare_under_torchrun_equals_one_process(tmp_path, image_folder):
    import json
    import subprocess
    import sys

    from captum_sift.cli import main

    common = ["--images", str(image_folder), "--model", "vit_tiny_patch16_224", "--img-size", "32",
              "--model-kwargs", "depth=2", "--batch-size", "2", "--quick", "--quiet", "--no-quantus",
              "--methods", "rollout,saliency"]  # fmt: skip
    assert main(["compare", "--out", str(tmp_path / "one"), *common]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "captum_sift", "compare", "--out", str(tmp_path / "two"), *common]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, failure_of(result)
    one, two = (json.loads((tmp_path / n / "compare.json").read_text()) for n in ("one", "two"))
    assert one["num_images"] == two["num_images"] == 6
    for a, b in zip(one["rows"], two["rows"], strict=True):
        if b["metric"].endswith("_auc"):
            assert (a["method"], a["metric"], a["n"]) == (b["method"], b["metric"], b["n"])
            assert abs(a["mean"] - b["mean"]) < 1e-6


def test_quantus_metrics_are_reproducible_and_leave_numpy_alone(embedded):
    model, x, y = embedded
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = compare(model, x, y, methods=("rollout",), steps=2)
    assert np.array_equal(np.random.get_state()[1], before)
    b = compare(model, x, y, methods=("rollout",), steps=2)
    assert a.values["rollout"]["faithfulness_correlation"] == b.values["rollout"]["faithfulness_correlation"]
