"""The embedded default model and data set."""

import json
import shutil

import pytest
import torch

from captum_sift import CaptumSiftError, count_keypoints
from captum_sift.data import (
    DEFAULT_PATCH_SIZE,
    FASHION_MNIST_ROOT,
    default_dataset,
    default_model,
    fashion_mnist_to_model_size,
    load_fashion_mnist,
)
from captum_sift.data.embedded import _MANIFEST


def test_default_model_reaches_the_documented_accuracy_on_the_shipped_subset():
    manifest = json.loads(_MANIFEST.read_text())
    model = default_model()
    images, labels = default_dataset()
    assert images.shape == (1000, 1, 112, 112) and labels.shape == (1000,)
    assert torch.bincount(labels).tolist() == [100] * 10
    mean, std = manifest["normalization"]["mean"][0], manifest["normalization"]["std"][0]
    with torch.no_grad():
        pred = torch.cat([model((images[i : i + 250] - mean) / std).argmax(1) for i in range(0, 1000, 250)])
    accuracy = float((pred == labels).float().mean())
    assert accuracy == pytest.approx(manifest["subset_accuracy"], abs=1e-3)
    assert manifest["test_accuracy"] >= 0.88 and accuracy >= 0.85
    assert sum(p.numel() * 2 for p in model.parameters()) <= 10 * 2**20  # fp16 file <= 10 MB


def test_key_patch_share_is_between_15_and_85_percent():
    images, _ = default_dataset(limit=300)
    share = float((count_keypoints(images, DEFAULT_PATCH_SIZE) > 0).float().mean())
    assert 0.15 <= share <= 0.85


def test_sha256_is_checked(tmp_path, monkeypatch):
    import captum_sift.data.embedded as data

    fake = tmp_path / "_data"
    shutil.copytree(data._PACKAGE_DATA, fake)
    weights = fake / json.loads(_MANIFEST.read_text())["files"]["weights"]["name"]
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data_bytes))
    monkeypatch.setattr(data, "_PACKAGE_DATA", fake)
    monkeypatch.setattr(data, "_MANIFEST", fake / "manifest.json")
    with pytest.raises(CaptumSiftError, match="sha256 does not match"):
        default_model()


def test_upsampling_keeps_8_bit_steps():
    x = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    up = fashion_mnist_to_model_size(x)
    assert up.shape == (2, 1, 112, 112)
    assert torch.equal(up * 255, (up * 255).round())


@pytest.mark.skipif(not FASHION_MNIST_ROOT.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_full_test_set_from_debian_matches_the_subset():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    full, full_labels = default_dataset(full=True, limit=20)
    import numpy as np

    with np.load(_MANIFEST.parent / json.loads(_MANIFEST.read_text())["files"]["subset"]["name"]) as d:
        index = d["index"]
    assert torch.equal(default_dataset()[0][0], fashion_mnist_to_model_size(images[index[:1]])[0])
    assert torch.equal(full_labels, torch.as_tensor(labels[:20]).long()) and full.shape == (20, 1, 112, 112)


def test_bad_arguments():
    with pytest.raises(CaptumSiftError, match="limit"):
        default_dataset(limit=0)
    with pytest.raises(CaptumSiftError, match="split"):
        load_fashion_mnist("val")
    with pytest.raises(CaptumSiftError, match="idx files not found"):
        load_fashion_mnist("test", root="/no/such/folder")
