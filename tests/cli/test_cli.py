"""The ``captum-sift`` command."""

import csv
import json
import subprocess
import sys

import torch

from captum_sift.cli.main import main
from captum_sift.data import sample_images
from captum_sift.keypoints import count_keypoints


def test_keypoints_command_writes_overlay_csv_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["keypoints", "--out", str(out), "--photos", "astronaut", "coffee", "--img-size", "64"]) == 0
    assert (out / "keypoints.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(out / "counts.csv")))
    assert len(rows) == 2 * 4 * 4
    counts = count_keypoints(sample_images(["astronaut", "coffee"], size=64), 16)
    got = torch.tensor([int(r["count"]) for r in rows]).view(2, 4, 4)
    assert torch.equal(got, counts)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["keypoints"] == counts.sum(dim=(1, 2)).tolist()
    assert "astronaut:" in capsys.readouterr().out


def test_bad_option_is_a_one_line_error(tmp_path, capsys):
    assert main(["keypoints", "--out", str(tmp_path), "--photos", "nosuchphoto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captum-sift: error: unknown sample photo 'nosuchphoto'") and "Traceback" not in err
    assert main(["keypoints", "--out", str(tmp_path), "--photos", "astronaut", "--img-size", "60"]) == 2
    assert "multiples of patch_size=16" in capsys.readouterr().err


def test_python_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "captum_sift", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "keypoints" in result.stdout
