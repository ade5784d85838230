"""Models named on the command line: Hugging Face folders, loader options, --pretrained offline (issue 25.2)."""

import json
import os

import pytest
import torch

from captum_sift.cli.main import main

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "1", "--quiet", "--model-kwargs",
        "depth=1"]  # fmt: skip


def _one_line_error(capsys, message):
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    return err


def _hf_folder(path, *, layers=3, seed=0, classifier=True, mae=False):
    """A tiny save_pretrained folder: a ViT classifier (or its base model, or a ViT-MAE encoder)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    options = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                   image_size=32, patch_size=16)  # fmt: skip
    if mae:
        model = transformers.ViTMAEModel(transformers.ViTMAEConfig(**options))
    elif classifier:
        model = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=10, **options))
    else:
        model = transformers.ViTModel(transformers.ViTConfig(**options))
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(path)
    transformers.utils.logging.enable_progress_bar()
    return path


# -- 25.2: hf folders ----------------------------------------------------------------------------
def test_resume_refuses_an_hf_folder_whose_weights_changed(tmp_path, monkeypatch, capsys):
    from captum_sift.cli.sources import InMemory

    folder = _hf_folder(tmp_path / "hf")
    out = tmp_path / "out"
    args = ["analyze", "--out", str(out), "--model", f"hf:{folder}", "--limit", "3", "--batch-size", "1",
            "--save-every", "1", "--quiet"]  # fmt: skip
    real_load, calls = InMemory.load, {"n": 0}

    def killed(self, indices):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_load(self, indices)

    monkeypatch.setattr(InMemory, "load", killed)
    capsys.readouterr()
    assert main(args) == 130
    assert capsys.readouterr().err == "captum-sift: interrupted; resume with --resume\n"
    monkeypatch.setattr(InMemory, "load", real_load)
    _hf_folder(tmp_path / "other", seed=1)
    os.replace(tmp_path / "other" / "model.safetensors", folder / "model.safetensors")
    assert main([*args, "--resume"]) == 2
    assert "model_files_sha256" in _one_line_error(capsys, "these settings differ")


def test_hf_folder_without_the_head_its_config_names_is_refused(tmp_path, capsys):
    folder = _hf_folder(tmp_path / "hf", classifier=False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["ViTForImageClassification"]}))
    assert main(["analyze", "--out", str(tmp_path / "out"), "--model", f"hf:{folder}", "--limit", "1"]) == 2
    err = _one_line_error(capsys, "missing keys")
    assert "classifier.weight" in err


def test_hf_model_kwargs_that_drop_weights_are_refused(tmp_path, capsys):
    folder = _hf_folder(tmp_path / "hf", layers=3)
    args = ["analyze", "--out", str(tmp_path / "out"), "--model", f"hf:{folder}", "--limit", "1"]
    assert main([*args, "--model-kwargs", "num_hidden_layers=1"]) == 2
    assert "layers.1." in _one_line_error(capsys, "unexpected keys (")
    assert main([*args, "--model-kwargs", "no_such_field=1"]) == 2
    _one_line_error(capsys, "it has no ['no_such_field']")


@pytest.mark.parametrize("option", ["trust_remote_code=True", "revision='main'", "checkpoint_path='/etc/x'"])
def test_loader_options_in_model_kwargs_are_refused(tmp_path, capsys, option):
    folder = _hf_folder(tmp_path / "hf")
    (folder / "evil.py").write_text("open('PWNED', 'w').write('x')\n")
    args = ["analyze", "--out", str(tmp_path / "out"), "--model", f"hf:{folder}", "--model-kwargs", option]
    assert main(args) == 2
    _one_line_error(capsys, "not loader options")
    assert main(["analyze", "--out", str(tmp_path / "o2"), *TINY[:-1], "depth=1", option]) == 2
    _one_line_error(capsys, "not loader options")


def test_hf_folder_not_found_and_mae_encoders(tmp_path, capsys):
    assert main(["analyze", "--out", str(tmp_path / "out"), "--model", "hf:/nonexistent/vit"]) == 2
    _one_line_error(capsys, "Hugging Face model folder not found: /nonexistent/vit")
    folder = _hf_folder(tmp_path / "mae", mae=True)
    assert main(["analyze", "--out", str(tmp_path / "out"), "--model", f"hf:{folder}", "--limit", "1"]) == 2
    _one_line_error(capsys, "MAE encoders are not supported")


def test_pretrained_offline_fails_at_once_without_the_network(tmp_path, monkeypatch, capsys):
    import socket
    import time

    import huggingface_hub.constants
    import torch.hub

    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: attempts.append(a) or 1 / 0)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    start = time.perf_counter()
    for model in ("vit_tiny_patch16_224", "torchvision:vit_b_16"):
        assert main(["analyze", "--out", str(tmp_path / "out"), "--model", model, "--pretrained"]) == 2
        _one_line_error(capsys, "are not in the local cache")
    assert attempts == [] and time.perf_counter() - start < 20
