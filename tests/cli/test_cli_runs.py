"""captum-sift analyze / mask-eval: outputs, errors, resume, torchrun."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import failure_of

from captum_sift.cli.main import main

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "64", "--batch-size", "2", "--quiet"]


def _means(path):
    return {k: np.array(v, dtype=float) for k, v in json.loads((path / "report.json").read_text())["means"].items()}


def test_analyze_writes_the_report_folder(tmp_path, image_folder):
    out = tmp_path / "out"
    assert main(["analyze", "--out", str(out), "--images", str(image_folder), *TINY]) == 0
    names = {"report.json", "per_layer_head.csv", "keypoints.png", "interrelation.png", "focus_index.png",
             "stages.png", "heatmaps.png", "index.html"}  # fmt: skip
    assert names <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 6 and report["layers"] == list(range(12)) and report["num_heads"] == 3
    assert [p.endswith("broken.jpg") for p, _ in report["skipped_files"]] == [True]
    assert set(report["stages"]) >= {"retrieval", "capture", "coach", "rule"}
    assert np.array(report["means"]["kk"]).shape == (12, 3)
    assert report["versions"]["captum_sift"] and report["settings"]["weighted"] is True
    assert "broken.jpg" in (out / "index.html").read_text()
    assert len((out / "per_layer_head.csv").read_text().splitlines()) == 1 + 12 * 3


def test_analyze_reports_the_controls_on_the_embedded_default(tmp_path, capsys):
    import csv
    import html

    from matplotlib import image

    out = tmp_path / "out"
    assert main(["analyze", "--out", str(out), "--limit", "24", "--batch-size", "12", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    verdicts = lines[-4:]
    for line, control in zip(verdicts, ("uniform", "locality", "shuffled"), strict=False):
        assert line.startswith(("θ_KK exceeds the ", "θ_KK does not exceed the ")), line
        assert f"the {control} control" in line and line.endswith("(p < 0.01, excess >= 0.1)")
    assert verdicts[-1].startswith("θ_KK exceeds the locality and shuffled controls together at "), verdicts[-1]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["controls"] == "fast" and report["controls"]["verdicts"] == verdicts
    for control in ("uniform", "locality", "shuffled"):
        entry = report["controls"][control]
        assert len(entry["kk"]) == len(report["layers"]) and entry["verdict"] in verdicts
        assert set(entry["excess_kk"]) == {"mean", "low", "high", "p_value", "images"}
        assert entry["excess_kk"]["images"] == [24] * len(report["layers"])
        expected = np.array(report["layer_means"]["kk"]) - np.array(entry["kk"])
        np.testing.assert_allclose(entry["excess_kk"]["mean"], expected, atol=1e-6)  # every image has Key patches
    with open(out / "per_layer_head.csv") as f:
        header = next(csv.reader(f))
    assert {"kk_locality", "nk_shuffled", "excess_kk_uniform", "excess_gap_locality"} <= set(header)
    page = (out / "index.html").read_text()
    assert "A control is a null attention" in page and all(html.escape(v) in page for v in verdicts)
    assert image.imread(out / "interrelation.png").shape[0] > 100
    none = tmp_path / "none"
    assert main(["analyze", "--out", str(none), "--limit", "4", "--quiet", "--controls", "none"]) == 0
    assert "control" not in capsys.readouterr().out
    document = json.loads((none / "report.json").read_text())
    assert document["controls"] is None and document["settings"]["controls"] == "none"
    assert "A control is" not in (none / "index.html").read_text()


def test_mask_eval_writes_table_and_figures(tmp_path, image_folder):
    out = tmp_path / "out"
    args = ["mask-eval", "--out", str(out), "--images", str(image_folder), *TINY, "--ratios", "0.25", "0.5"]
    assert main([*args, "--modes", "top,random", "--fill", "mean"]) == 0
    rows = (out / "mask_eval.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + 4 and rows[1].startswith("none")
    assert {"mask_eval.png", "masked_examples.png", "index.html", "report.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", "/no/such/folder"], "image folder not found: /no/such/folder"),
        (["--model", "vit_no_such_model"], "cannot create timm model 'vit_no_such_model'"),
        (["--model", "vit_tiny_patch16_224", "--img-size", "60"], "multiples of its patch size 16"),
        (["--checkpoint", "/no/such.pt"], "weights file not found"),
        (["--limit", "0"], "expected --limit to be an int >= 1, got 0"),
        (["--model", "resnet18"], "expected a Vision Transformer from timm, torchvision or Hugging Face"),
    ],
)
def test_clear_one_line_errors(tmp_path, capsys, args, message):
    assert main(["analyze", "--out", str(tmp_path), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_checkpoint_that_does_not_fit(tmp_path, capsys):
    import timm
    import torch

    path = tmp_path / "small.pt"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).state_dict(), path)
    assert main(["analyze", "--out", str(tmp_path), "--model", "vit_small_patch16_224", "--checkpoint", str(path)]) == 2
    assert "do not fit vit_small_patch16_224" in capsys.readouterr().err


def test_resume_ends_with_the_numbers_of_an_uninterrupted_run(tmp_path, image_folder, monkeypatch, capsys):
    from captum_sift.data import ImageFolder

    whole = tmp_path / "whole"
    args = ["--images", str(image_folder), *TINY, "--batch-size", "1", "--checkpoint-every", "1"]
    assert main(["analyze", "--out", str(whole), *args]) == 0
    real_load = ImageFolder.load
    calls = {"n": 0}

    def flaky(self, indices):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the run is killed in the middle
        return real_load(self, indices)

    monkeypatch.setattr(ImageFolder, "load", flaky)
    cut = tmp_path / "cut"
    assert main(["analyze", "--out", str(cut), *args]) == 130  # Ctrl-C: one line, partial sums kept
    assert capsys.readouterr().err == "captum-sift: interrupted; resume with --resume\n"
    assert not (cut / "report.json").exists()
    monkeypatch.setattr(ImageFolder, "load", real_load)
    assert main(["analyze", "--out", str(cut), *args, "--resume"]) == 0
    a, b = json.loads((whole / "report.json").read_text()), json.loads((cut / "report.json").read_text())
    assert a["sums"] == b["sums"] and a["counts"] == b["counts"] and a["means"] == b["means"]
    assert a["skipped_files"] == b["skipped_files"]
    assert a["controls"] == b["controls"] and "kk_shuffled" in a["sums"]  # the excess bootstraps the same images
    # a resumed run with other controls is refused: its partial sums hold other quantities
    monkeypatch.setattr(ImageFolder, "load", flaky)
    calls["n"] = 0
    assert main(["analyze", "--out", str(cut), *args]) == 130
    capsys.readouterr()
    monkeypatch.setattr(ImageFolder, "load", real_load)
    assert main(["analyze", "--out", str(cut), *args, "--resume", "--controls", "all"]) == 2
    assert "these settings differ: ['controls']" in capsys.readouterr().err


# report.json fields that differ between 1 and N processes, and why: the process count itself
DIFFERS_WITH_WORLD_SIZE = {("settings", "world_size")}


def _assert_same_document(a, b, path=()):
    """Every field of two report.json documents equal; floats to rounding (sums added in another order)."""
    if path in DIFFERS_WITH_WORLD_SIZE:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for key in a:
            _assert_same_document(a[key], b[key], (*path, key))
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_document(x, y, (*path, i))
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_torchrun_two_processes_give_the_numbers_of_one(tmp_path, image_folder):
    from captum_sift import InterrelationReport, find_stages
    from captum_sift.theta.report_io import nan_to_none

    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--images", str(image_folder), *TINY]
    assert main(["analyze", "--out", str(one), *common]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "captum_sift", "analyze", "--out", str(two), *common]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, failure_of(result)
    a, b = (json.loads((p / "report.json").read_text()) for p in (one, two))
    assert b["num_images"] == 6 and b["settings"]["world_size"] == 2 and a["settings"]["world_size"] == 1
    assert len(b["skipped_files"]) == 1  # gathered from the rank that read it
    assert a["curves"]["image"] == [0, 1, 2, 4, 5, 6]  # data-set order (3 is broken.jpg); rank order is another
    _assert_same_document(a, b)  # stages and their confidence included
    # the report read back gives the stages it was written with
    back = find_stages(InterrelationReport.load_json(one / "report.json"))
    assert json.loads(json.dumps(nan_to_none(back.to_dict()))) == a["stages"]
    masks = [tmp_path / "m1", tmp_path / "m2"]
    assert main(["mask-eval", "--out", str(masks[0]), *common, "--ratios", "0.25"]) == 0
    cmd = [*cmd[:8], "mask-eval", "--out", str(masks[1]), *common, "--ratios", "0.25"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, failure_of(result)
    assert (masks[0] / "mask_eval.csv").read_text() == (masks[1] / "mask_eval.csv").read_text()


def test_torchrun_with_a_rank_that_reads_no_image(tmp_path, image_folder):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--images", str(image_folder), *TINY, "--limit", "1"]  # rank 1 of 2 gets no image
    assert main(["analyze", "--out", str(one), *common]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "captum_sift", "analyze", "--out", str(two), *common]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, failure_of(result)
    a, b = _means(one), _means(two)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6)


def test_no_readable_image_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "bad" / "a"
    folder.mkdir(parents=True)
    (folder / "x.png").write_bytes(b"not a png")
    assert main(["analyze", "--out", str(tmp_path / "out"), "--images", str(folder.parent), *TINY]) == 2
    assert "no image could be analysed" in capsys.readouterr().err
