"""captum-sift pretrain: history, checkpoints, exact resume, DDP equals one process, the experiment."""

import csv
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import failure_of

from captum_sift import CaptumSiftError
from captum_sift.cli.main import main
from captum_sift.cli.pretrain import pretrain_data
from captum_sift.mae.masking import KeyShareSchedule
from captum_sift.mae.pretrain import PretrainConfig, cached_keypoint_counts, pretrain

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--img-size", "32", "--patch-size", "8", "--batch-size", "100", "--schedule-every", "1", "--quiet"]


def _history(path):
    return list(csv.DictReader(open(path / "history.csv")))


def test_pretrain_command_writes_history_checkpoint_and_cache(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--masking", "guided", "--epochs", "2", "--out", str(out), *SMALL]) == 0
    rows = _history(out)
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["key_share"] for r in rows] == ["0.1", "0.2"]
    assert all(0.0 <= float(r["probe_accuracy"]) <= 1.0 and float(r["loss"]) > 0 for r in rows)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["masking"] == "guided"
    assert len(list(out.glob("keypoints-fmnist-embedded-32px-p8-*.pt"))) == 1


def test_resume_equals_uninterrupted(tmp_path):
    _, images, labels, test = pretrain_data("embedded", 32, None)
    images, labels = images[:200], labels[:200]
    counts = cached_keypoint_counts(images, 8, None, "t")
    config = PretrainConfig(masking="guided", epochs=3, batch_size=50, img_size=32, patch_size=8,
                            schedule=asdict(KeyShareSchedule(every=1)))  # fmt: skip
    whole = pretrain(config, images, counts, (images, labels), test, tmp_path / "a")
    pretrain(config, images, counts, (images, labels), test, tmp_path / "b", stop_after_epoch=1)
    assert len(_history(tmp_path / "b")) == 1
    resumed = pretrain(config, images, counts, (images, labels), test, tmp_path / "b", resume=True)
    assert resumed == whole
    with pytest.raises(CaptumSiftError, match="another configuration"):
        pretrain(PretrainConfig(**{**asdict(config), "lr": 0.5}), images, counts, (images, labels), test,
                 tmp_path / "b", resume=True)  # fmt: skip


def test_torchrun_two_processes_give_the_losses_of_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["pretrain", "--masking", "guided", "--epochs", "2", *SMALL]
    assert main([*args, "--out", str(one)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "captum_sift", *args, "--out", str(two)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, failure_of(result)
    for a, b in zip(_history(one), _history(two), strict=True):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4)
        assert float(b["probe_accuracy"]) == pytest.approx(float(a["probe_accuracy"]), abs=0.02)


def test_experiment_quick_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "guided_mae_experiment.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, failure_of(result)
    assert "RATIO guided / random epochs" in result.stdout
    assert (tmp_path / "results.json").exists() and (tmp_path / "fig9_guided_mae.png").exists()


def test_bad_options(tmp_path, capsys):
    assert main(["pretrain", "--masking", "guided", "--out", str(tmp_path), "--img-size", "30"]) == 2
    assert "multiple of patch_size" in capsys.readouterr().err


def test_keypoint_cache_written_by_two_ranks_at_once(tmp_path, monkeypatch):
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = cached_keypoint_counts(images, 8, None, "t")
    real_save, other_rank = torch.save, []

    def save_while_the_other_rank_finishes(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if not other_rank:  # between our write and our rename, the other rank writes and renames
            other_rank.append(None)
            other_rank[0] = cached_keypoint_counts(images, 8, tmp_path, "t")

    monkeypatch.setattr(torch, "save", save_while_the_other_rank_finishes)
    counts = cached_keypoint_counts(images, 8, tmp_path, "t")
    assert torch.equal(counts, expected) and torch.equal(other_rank[0], expected)
    (cached,) = tmp_path.iterdir()  # one cache file, no temporary left
    assert cached.suffix == ".pt" and torch.equal(torch.load(cached, weights_only=True), expected)


def test_config_checks_and_numpy_numbers():
    import json

    import numpy as np

    config = PretrainConfig(epochs=np.int64(2), lr=np.float32(0.5), weight_decay=0, seed=torch.tensor(3))
    assert (config.epochs, config.lr, config.weight_decay, config.seed) == (2, 0.5, 0.0, 3)
    assert type(config.epochs) is int and type(config.seed) is int and type(config.lr) is float
    json.dumps(asdict(config))  # JSON-ready: the checkpoint's config
    bad = [
        ({"epochs": 0}, "expected epochs to be an int >= 1, got 0"),
        ({"batch_size": 2.0}, "expected batch_size to be an int >= 1, got 2.0"),
        ({"lr": 0}, "expected lr to be a finite number > 0, got 0"),
        ({"pixel_std": float("nan")}, "expected pixel_std to be a finite number > 0, got nan"),
        ({"weight_decay": float("inf")}, "expected weight_decay to be a finite number, got inf"),
        ({"seed": 2**30}, "expected seed to be an int >= 0 and <= 1073741823, got 1073741824"),
        ({"mask_ratio": 1}, "expected mask_ratio to be a finite number > 0 and < 1, got 1"),
        ({"img_size": 30}, "expected img_size a multiple of patch_size, got 30 and 16"),
    ]
    for change, message in bad:
        with pytest.raises(CaptumSiftError, match=message):
            PretrainConfig(**change)
