"""Attribution methods side by side: deletion/insertion against Quantus, every method on every family."""

import time

import numpy as np
import pytest
import torch
import torchvision
from helpers import failure_of

from captum_sift import CaptumSiftError
from captum_sift.attr.patches import patch_scores_to_pixels
from captum_sift.data import default_dataset, default_model
from captum_sift.faithfulness import (
    METHODS,
    compare,
    deletion_insertion,
    deletion_insertion_curves,
    explain,
    patch_attribution,
)
from captum_sift.vit.adapter import as_vit

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
    table = compare(model, x, y, methods=METHODS, true_patch=truth, steps=4, ig_steps=4, progress=False,
                    timing_rounds=1)  # fmt: skip
    rows = table.rows()
    metrics = {r["metric"] for r in rows}
    assert metrics == {"deletion_auc", "insertion_auc", "faithfulness_correlation", "mprt_complexity_change",
                       "true_patch_rank", "pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
                       "top_k_intersection", "seconds_per_image", "forwards_per_image"}  # fmt: skip
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
        assert len(table.timing["rollout"]) == 6  # 3 timed rounds in each of the 2 parts
        np.testing.assert_allclose(table.curves["rollout"]["deletion"], whole.curves["rollout"]["deletion"], rtol=1e-5)
    with pytest.raises(CaptumSiftError, match="expected a comparison table"):
        ComparisonTable.from_dict({"values": 3})


def test_shortcut_markers_are_where_they_say():
    from captum_sift.data.shortcut import marker_textures, plant_markers

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
    from captum_sift.cli.main import main

    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--quick", "--limit", "4", "--quiet", "--methods",
                 "theta,rollout,gradcam,random"]) == 0  # fmt: skip
    names = {"compare.csv", "compare.json", "deletion.png", "insertion.png", "sanity.png", "overlays.png", "index.html"}
    assert names <= {p.name for p in out.iterdir()}
    import json

    document = json.loads((out / "compare.json").read_text())
    assert document["num_images"] == 4
    assert {r["method"] for r in document["rows"]} == {"theta", "rollout", "gradcam", "random"}
    assert main(["compare", "--out", str(tmp_path / "bad"), "--quick", "--methods", "theta,lime"]) == 2
    assert "expected distinct --methods" in capsys.readouterr().err


def test_cli_compare_under_torchrun_equals_one_process(tmp_path, image_folder):
    import json
    import subprocess
    import sys

    from captum_sift.cli.main import main

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
    a = compare(model, x, y, methods=("rollout",), steps=2, timing_rounds=0)
    assert np.array_equal(np.random.get_state()[1], before)
    b = compare(model, x, y, methods=("rollout",), steps=2, timing_rounds=0)
    assert a.values["rollout"]["faithfulness_correlation"] == b.values["rollout"]["faithfulness_correlation"]


def _tiny_timm(seed: int = 0, num_classes: int = 3):
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, embed_dim=16,
                             num_heads=2, num_classes=num_classes).eval()  # fmt: skip


def _tiny_batch(n: int = 6):
    from captum_sift.data import sample_images

    pixels = sample_images(["astronaut", "coffee", "chelsea"], size=32)
    pixels = torch.cat([pixels, pixels.flip(-1)])[:n]
    return pixels, torch.arange(n) % 3


def test_cost_pairs_each_method_with_the_forwards_of_its_batch(monkeypatch):
    """A first call that sets something up must not be a per-image cost, for the forward nor for the method.

    Every forward of the model sleeps 10 ms (so that anything that runs the
    model costs at least about one forward, whatever the machine's load),
    0.5 s more at the first forward of each batch size (as a per-shape
    set-up would). One forward of the first batch timed once after a
    one-image warm-up counts those 0.5 s as 0.25 s per image and gives θ
    ~0.06 forwards, below the one forward it runs; then θ sleeps 2 s at its
    first call, which θ's seconds summed over the batches spread as 0.33 s
    per image. Forwards timed around every round and a first untimed call
    of each method count neither.
    """
    from captum_sift.attr import SIFTInterrelation

    pixels, labels = _tiny_batch(6)
    attribute = SIFTInterrelation.attribute
    for first_theta_sleep in (0.0, 2.0):
        model = _tiny_timm()
        seen, first = set(), []

        def slow_forward(_module, args, seen=seen):
            time.sleep(0.01 + 0.5 * (args[0].shape[0] not in seen))
            seen.add(args[0].shape[0])

        def slow_first_theta(self, *args, first=first, sleep=first_theta_sleep, **kwargs):
            if not first:
                first.append(True)
                time.sleep(sleep)
            return attribute(self, *args, **kwargs)

        model.patch_embed.register_forward_pre_hook(slow_forward)
        monkeypatch.setattr(SIFTInterrelation, "attribute", slow_first_theta)
        table = compare(model, pixels, labels, methods=("theta", "random"), image_space="pixel", steps=2,
                        quantus_metrics=False, batch_size=2, progress=False)  # fmt: skip
        cost = table.cost
        assert len(table.timing["theta"]) == 9  # 3 rounds on each of 3 batches
        assert 0.9 <= cost["theta"]["forwards_per_image"] < 20  # θ runs the model once (and counts keypoints)
        assert cost["random"]["forwards_per_image"] < 0.5  # no forward at all
        assert cost["theta"]["seconds_per_image"] < 0.2  # the 2 s set-up is not spread over the images
        assert 0.005 <= table.forward_seconds < 0.1  # 10 ms per batch of 2; the 0.5 s of a new size is not counted
        rows = {(r["method"], r["metric"]): r for r in table.rows()}
        assert rows[("theta", "forwards_per_image")]["n"] == 9
        assert rows[("theta", "forwards_per_image")]["better"] == "lower"
    untimed = compare(_tiny_timm(), pixels, labels, methods=("random",), image_space="pixel", steps=2,
                      quantus_metrics=False, progress=False, timing_rounds=0)  # fmt: skip
    assert untimed.timing == {} and {r["metric"] for r in untimed.rows()} == {"deletion_auc", "insertion_auc"}


def test_cost_is_the_median_over_rounds_of_paired_ratios():
    from captum_sift.faithfulness import ComparisonTable

    table = ComparisonTable()
    for seconds, forward in ((0.2, 0.1), (9.0, 0.1), (0.3, 0.1)):  # one slow round (9 s) is an outlier
        table.add_time("theta", seconds, 2, forward)
    assert table.cost["theta"] == pytest.approx({"seconds_per_image": 0.15, "forwards_per_image": 3.0})
    assert table.forward_seconds == pytest.approx(0.05)
    back = ComparisonTable.from_dict(table.merge(ComparisonTable()).to_dict())
    assert back.timing == table.timing and back.cost == table.cost
    with pytest.raises(CaptumSiftError, match="forward seconds > 0"):
        table.add_time("theta", 0.1, 2, 0.0)
    with pytest.raises(CaptumSiftError, match="expected a comparison table"):
        ComparisonTable.from_dict({"values": {}, "curves": {}, "timing": {"theta": [[0.1, 2]]}})


def test_table_text_has_whole_names_and_which_way_is_better(embedded):
    model, x, y = embedded
    table = compare(model, x[:2], y[:2], methods=("integrated_gradients", "random"), steps=2, ig_steps=2,
                    true_patch=torch.tensor([3, 4]), progress=False, timing_rounds=1)  # fmt: skip
    text = str(table)
    for metric, better in (("deletion_auc", "lower"), ("insertion_auc", "higher"), ("faithfulness_correlation",
                           "higher"), ("mprt_complexity_change", "higher"), ("true_patch_rank", "lower"),
                           ("pointing_game", "higher"), ("seconds_per_image", "lower"),
                           ("forwards_per_image", "lower")):  # fmt: skip
        assert f"{metric} ({better} is better)" in text
    assert text.splitlines()[0].split() == ["metric", "integrated_gradients", "random"]
    line = next(t for t in text.splitlines() if t.startswith("deletion_auc"))
    assert line.split()[-2:] == [f"{table.mean(m, 'deletion_auc'):.4f}" for m in ("integrated_gradients", "random")]


def test_non_finite_logits_are_an_error_naming_the_step():
    pixels, labels = _tiny_batch(2)
    model = _tiny_timm()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(CaptumSiftError, match="non-finite logits from the model on the unmasked images"):
        compare(model, pixels, labels, methods=("rollout",), image_space="pixel", quantus_metrics=False)
    # finite on the images, NaN once a patch holds the fill value: the error names the method and the step
    model = _tiny_timm()
    nan_if_filled = lambda _m, args, out: out * float("nan") if bool((args[0] == -7.0).any()) else out  # noqa: E731
    model.register_forward_hook(nan_if_filled)
    with pytest.raises(CaptumSiftError, match=r"method 'rollout', images 0..1: non-finite logits .* top 0 of 4 "
                                              r"patches revealed \(insertion\)"):  # fmt: skip
        compare(model, pixels, labels, methods=("rollout",), image_space="pixel", quantus_metrics=False, fill=-7.0)
    vit = as_vit(model)
    mean, std = vit.stats(pixels)
    with pytest.raises(CaptumSiftError, match=r"non-finite logits .* top 0 of 4 patches revealed \(insertion\)"):
        deletion_insertion(vit, (pixels - mean) / std, labels, torch.rand(2, 4), steps=4, fill=-7.0)


def test_deletion_insertion_and_compare_refuse_bad_input(embedded):
    model, x, y = embedded
    vit = as_vit(model)
    x, y = x[:2], y[:2]
    scores = torch.rand(2, 49)
    del_auc, _ = deletion_insertion(vit, x, y, scores, steps=np.int64(2))  # numpy ints are ints
    assert del_auc.shape == (2,)
    bad = scores.clone()
    bad[1, 5] = float("nan")
    for kwargs, message in (
        ({"scores": bad}, "expected finite real scores, got 1 NaN"),
        ({"scores": torch.rand(2, 48)}, r"expected scores of shape \(2, 49\)"),
        ({"steps": 0}, "expected steps to be an int >= 1, got 0"),
        ({"steps": 2.0}, "expected steps to be an int >= 1, got 2.0"),
        ({"targets": torch.tensor([0, 10])}, r"expected targets in \[0, 10\)"),
        ({"targets": torch.tensor([0, -1])}, "expected targets >= 0, got values in \\[-1, 0\\]"),
        ({"targets": y.float()}, "expected integer targets"),
    ):
        args = {"scores": scores, "targets": y, "steps": 2} | kwargs
        with pytest.raises(CaptumSiftError, match=message):
            deletion_insertion(vit, x, args["targets"], args["scores"], steps=args["steps"])
    for kwargs, message in (
        ({"steps": 0}, "expected steps to be an int >= 1, got 0"),
        ({"ig_steps": 0}, "expected ig_steps to be an int >= 1"),
        ({"batch_size": torch.tensor(0)}, "expected batch_size to be an int >= 1"),
        ({"labels": torch.tensor([1, 10])}, r"expected labels in \[0, 10\)"),
        ({"labels": torch.tensor([1.0, 2.0])}, "expected integer labels"),
        ({"true_patch": torch.tensor([0, 49])}, r"expected true_patch in \[0, 49\)"),
        ({"true_patch": torch.tensor([0])}, r"expected true_patch of shape \(2,\)"),
    ):
        args = {"labels": y} | kwargs
        labels = args.pop("labels")
        with pytest.raises(CaptumSiftError, match=message):
            compare(model, x, labels, methods=("random",), quantus_metrics=False, progress=False, **args)
    table = compare(model, x, y, methods=("random",), quantus_metrics=False, steps=torch.tensor(2), progress=False)
    assert table.curves["random"]["points"] == [0.0, 24 / 49, 1.0]  # steps 2 (0-d tensor); round(24.5) = 24


def test_cli_compare_writes_what_it_says(tmp_path, capsys, image_folder):
    import json

    from captum_sift.cli.main import main

    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "--images", str(image_folder), "--model", "vit_tiny_patch16_224",
            "--img-size", "32", "--model-kwargs", "depth=2", "--limit", "3", "--quick", "--quiet", "--no-quantus",
            "--methods", "rollout,random"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    wrote = next(line for line in printed.splitlines() if line.startswith("wrote "))
    for name in ("compare.csv", "compare.json", "deletion.png", "insertion.png", "overlays.png", "index.html"):
        assert name in wrote and (out / name).exists()
    assert "sanity.png" not in wrote and not (out / "sanity.png").exists()  # no Quantus, no sanity check
    assert "deletion_auc (lower is better)" in printed
    document = json.loads((out / "compare.json").read_text())
    assert document["num_images"] == 3
    assert document["settings"]["images_compared"] == 3 and document["settings"]["images_in_data"] == 7
    page = (out / "index.html").read_text()
    assert "<p>3 images.</p>" in page and "<th>images_compared</th><td>3</td>" in page
    assert "<th>images</th>" not in page
    header = (out / "compare.csv").read_text().splitlines()[0]
    assert header == "method,metric,mean,ci_low,ci_high,n,better"


def test_cli_compare_refuses_nan_weights(tmp_path, capsys, image_folder):
    from captum_sift.cli.main import main

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    state = model.state_dict()
    state["head.bias"][3] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    args = ["compare", "--out", str(tmp_path / "cmp"), "--images", str(image_folder), "--model",
            "vit_tiny_patch16_224", "--img-size", "32", "--model-kwargs", "depth=2", "--weights",
            str(tmp_path / "nan.pt"), "--quick", "--quiet", "--no-quantus", "--methods", "random"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "non-finite logits from the model on the batch from image 0 (its predicted classes)" in err
    assert not (tmp_path / "cmp" / "compare.json").exists()
