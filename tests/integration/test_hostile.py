"""Wrong but plausible input: an error or a correct number, never a silent wrong one (issue: nothing silently wrong)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from captum_sift import CaptumSiftError, InterrelationReport, SIFTInterrelation, analyze, count_keypoints, find_stages
from captum_sift.attr.patches import patch_feature_mask
from captum_sift.cli.main import main
from captum_sift.data import ImageFolder, decode_image, load_sample_photo, sample_images
from captum_sift.keypoints import detect_keypoints, keypoints_to_counts
from captum_sift.masking import evaluate_masking, mcnemar_exact, wilson_interval

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "64", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3, num_classes=5).eval()


@pytest.fixture(scope="module")
def pixels():
    return sample_images(["astronaut", "coffee"], size=64)


def _one_line_error(capsys, message):
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    return err


# -- 1. duplicated ratios or modes -------------------------------------------------------------
def test_duplicated_ratios_or_modes_are_refused(model, pixels, tmp_path, capsys):
    labels = torch.tensor([0, 1])
    for kwargs in ({"ratios": (0.4, 0.4)}, {"modes": ("top", "top")}):
        with pytest.raises(CaptumSiftError, match="expected distinct"):
            evaluate_masking(model, pixels, labels, image_space="pixel", progress=False, **kwargs)
    assert main(["mask-eval", "--out", str(tmp_path), *TINY, "--ratios", "0.4", "0.4", "--modes", "top"]) == 2
    _one_line_error(capsys, "expected distinct ratios")
    assert main(["mask-eval", "--out", str(tmp_path), *TINY, "--modes", "top,top"]) == 2
    _one_line_error(capsys, "expected distinct --modes")


# -- 2, 3, 14. resume identity, damaged partial files, clean-up -----------------------------------
def _interrupted(monkeypatch, args):
    """Run the command but keep its partial sums, as an interrupted run would."""
    from captum_sift.cli import runner

    with monkeypatch.context() as m:
        m.setattr(runner, "finish", lambda run: None)
        assert main(args) == 0


def test_resume_refuses_another_run(tmp_path, image_folder, monkeypatch, capsys):
    out = tmp_path / "out"
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    torch.save(net.state_dict(), weights)
    base = ["analyze", "--out", str(out), "--images", str(image_folder), "--model", "vit_tiny_patch16_224",
            "--model-kwargs", "depth=2", "--batch-size", "2", "--quiet"]  # fmt: skip
    _interrupted(monkeypatch, [*base, "--img-size", "32"])
    assert list(out.glob(".partial-*.json"))
    assert main([*base, "--img-size", "64", "--resume"]) == 2
    assert "img_size" in _one_line_error(capsys, "was written by another run")
    base += ["--weights", str(weights)]
    _interrupted(monkeypatch, [*base, "--img-size", "32"])
    torch.save({k: v + 1 for k, v in net.state_dict().items()}, weights)  # other weights, same file
    assert main([*base, "--img-size", "32", "--resume"]) == 2
    assert "weights_sha256" in _one_line_error(capsys, "these settings differ")


def test_damaged_partial_files_are_refused(tmp_path, image_folder, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["analyze", "--out", str(out), "--images", str(image_folder), *TINY, "--model-kwargs", "depth=2"]
    _interrupted(monkeypatch, args)
    (partial,) = out.glob(".partial-*.json")
    good = partial.read_text()
    document = json.loads(good)
    document["state"]["batches_done"] = -3  # edited: the checksum no longer matches
    edited = json.dumps(document)
    for text, message in ((good[: len(good) // 2], "is damaged"), ("", "is damaged"), ("garbage", "is damaged"),
                          (edited, "does not match its checksum")):  # fmt: skip
        partial.write_text(text)
        assert main([*args, "--resume"]) == 2
        assert "delete" in _one_line_error(capsys, message)
    partial.write_text(good)
    assert main([*args, "--resume"]) == 0
    assert not list(out.glob(".partial-*")) and not list(out.glob(".lock*"))  # 14: cleaned up on success


def test_pretrain_resume_on_other_data_is_refused(tmp_path):
    from captum_sift.mae.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(epochs=2, batch_size=8, img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2,
                            decoder_dim=16)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 32, 32, generator=g)
    counts = torch.randint(0, 3, (16, 4), generator=g)
    probe = (images[:8], torch.arange(8) % 2)
    pretrain(config, images, counts, probe, probe, tmp_path, stop_after_epoch=1)
    with pytest.raises(CaptumSiftError, match="trained on other images"):
        pretrain(config, images.flip(0), counts, probe, probe, tmp_path, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CaptumSiftError, match="cannot read .*checkpoint.pt"):
        pretrain(config, images, counts, probe, probe, tmp_path, resume=True)


# -- 4, 9. image decoding, odd names ----------------------------------------------------------------
def test_images_decode_like_a_reference(tmp_path):
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65536, (20, 24), dtype=np.uint16)
    rgb = load_sample_photo("astronaut")[:20, :24]
    cases = {
        "gray16.png": (Image.fromarray(gray16), np.repeat((gray16 / 65535.0)[None], 3, 0)),
        "gray8.png": (Image.fromarray(rgb[..., 0]), np.repeat(rgb[None, ..., 0] / 255.0, 3, 0)),
        "rgb.png": (Image.fromarray(rgb), rgb.transpose(2, 0, 1) / 255.0),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full((20, 24), 128, np.uint8)])), rgb.transpose(2, 0, 1) / 255),
        "palette.png": (Image.fromarray(rgb).quantize(16), None),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), None),
        "bit.png": (Image.fromarray(rgb[..., 0] > 128), np.repeat((rgb[None, ..., 0] > 128).astype(float), 3, 0)),
    }
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for name, (im, _) in cases.items():
        im.save(folder / name)
    loader = ImageFolder(tmp_path / "imgs", 20, 3)
    images, _, read, skipped = loader.load(list(range(len(loader))))
    assert not skipped and len(read) == len(cases)
    names = [p.name for p in loader.files]
    for name, (_, expected) in cases.items():
        got = images[names.index(name)].numpy()  # resize keeps 20 x 24, the centre crop takes columns 2..21
        if expected is None:  # PIL's own conversion is the reference
            with Image.open(folder / name) as im:
                expected = np.asarray(im.convert("RGB")).transpose(2, 0, 1) / 255.0
        np.testing.assert_allclose(got, expected[:, :, 2:22], atol=1e-6, err_msg=name)
    with Image.open(folder / "gray16.png") as im:
        assert im.mode.startswith("I")
        gray = decode_image(im, 1)
    assert abs(float(gray.mean()) - gray16.mean() / 65535) < 1e-6  # not clipped to two values


def test_odd_file_names_and_dangling_links_are_listed(tmp_path, capsys):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    Image.fromarray(load_sample_photo("coffee")).save(root / "a" / "good.png")
    bad_name = os.fsdecode(b"broken-\xff.jpg")
    (root / "a" / bad_name).write_bytes(b"not an image")
    os.symlink(root / "a" / "missing.png", root / "a" / "dangling.png")
    out = tmp_path / "out"
    assert main(["analyze", "--out", str(out), "--images", str(root), *TINY, "--model-kwargs", "depth=2"]) == 0
    report = json.loads((out / "report.json").read_text())
    listed = sorted(os.path.basename(p) for p, _ in report["skipped_files"])
    assert listed == ["broken-\\xff.jpg", "dangling.png"]
    assert "broken-\\xff.jpg" in (out / "index.html").read_text()


# -- 5. non-finite weights ---------------------------------------------------------------------------
def test_nan_weights_raise_naming_the_layer(model, pixels, tmp_path, capsys):
    import copy

    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.blocks[1].mlp.fc2.weight.fill_(float("nan"))  # block 1's output, so block 2's attention
    with pytest.raises(CaptumSiftError, match="non-finite attention in block 2"):
        SIFTInterrelation(broken, image_space="pixel").attribute(pixels)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    with pytest.raises(CaptumSiftError, match="non-finite attention in block 0"):
        analyze(broken, pixels, image_space="pixel")
    weights = tmp_path / "nan.pt"
    torch.save(broken.state_dict(), weights)
    assert main(["analyze", "--out", str(tmp_path / "o"), "--model", "vit_tiny_patch16_224", "--img-size", "64",
                 "--model-kwargs", "depth=3", "--weights", str(weights), "--quiet"]) == 2  # fmt: skip
    _one_line_error(capsys, "non-finite attention in block 0")


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_one_non_finite_patch_entry_raises_naming_the_layer(model, pixels, value):
    """The analysis checks each map through its patch rows' means: one bad entry is enough."""

    def spoil(_module, _inputs, attn):
        attn = attn.clone()
        attn[1, 2, 5, 7] = value  # image 1, head 2, patch 4 -> patch 6 (after the class token)
        return attn

    def state():
        flags = [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()]
        return flags, sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    handle = model.blocks[1].attn.attn_drop.register_forward_hook(spoil)
    before = state()
    try:
        with pytest.raises(CaptumSiftError, match="non-finite attention in block 1"):
            analyze(model, pixels, image_space="pixel")  # raised inside block 1's forward, where θ is taken
        assert state() == before  # flags and hooks restored on the way out
        with pytest.raises(CaptumSiftError, match="non-finite attention in block 1"):
            analyze(model, pixels, image_space="pixel", layers=[2])  # a block not analysed is checked too
        assert state() == before
    finally:
        handle.remove()


# -- 6, 10. output folder and CLI values --------------------------------------------------------------
def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    from captum_sift.cli.runner import prepare_out

    lock = prepare_out(tmp_path / "out")
    try:
        assert main(["analyze", "--out", str(tmp_path / "out"), *TINY]) == 2
        _one_line_error(capsys, "is in use by another captum-sift run")
    finally:
        lock.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "bogus"], "expected --device cpu, cuda or cuda:N, got 'bogus'"),
        (["--img-size", "-16"], "expected --img-size to be an int >= 1, got -16"),
        (["--img-size", "0"], "expected --img-size to be an int >= 1, got 0"),
        (["--weights", "EMPTY"], "cannot read weights file"),
    ],
)
def test_bad_cli_values_are_one_line(tmp_path, capsys, args, message):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    assert main(["analyze", "--out", str(tmp_path / "out"), "--quiet", *args]) == 2
    err = _one_line_error(capsys, message)
    assert not err.rstrip().endswith(":")  # a reason is given


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["analyze", "--out", str(afile), "--quiet"]) == 2
    _one_line_error(capsys, "exists and is not a folder")
    assert main(["analyze", "--out", str(afile / "sub"), "--quiet"]) == 2
    _one_line_error(capsys, "cannot write to the output folder")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--patch-size", "0"], "expected patch_size to be an int >= 1, got 0"),
        (["--probe-every", "0"], "expected probe_every to be an int >= 1, got 0"),
        (["--lr", "nan"], "expected lr to be a finite number > 0, got nan"),
        (["--lr", "-1"], "expected lr to be a finite number > 0, got -1.0"),
        (["--img-size", "0"], "expected img_size to be an int >= 1, got 0"),
        (["--device", "bogus"], "expected --device cpu, cuda or cuda:N"),
    ],
)
def test_bad_pretrain_values_are_refused_first(tmp_path, capsys, args, message):
    assert main(["pretrain", "--masking", "guided", "--out", str(tmp_path / "out"), "--quiet", *args]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "out").exists()  # refused before any work


# -- 7, 8. Captum conformance -----------------------------------------------------------------------
def test_inputs_that_require_grad(model, pixels):
    x = pixels.clone().requires_grad_(True)
    counts = count_keypoints(x, 16)
    assert torch.equal(counts, count_keypoints(pixels, 16))
    assert len(detect_keypoints(x)) == 2
    analyze(model, x, image_space="pixel")
    inputs = ((pixels - 0.5) / 0.5).requires_grad_(True)
    attr = SIFTInterrelation(model).attribute(inputs)
    assert attr.shape == inputs.shape and not attr.requires_grad


def test_captum_wrappers_and_metrics(model, pixels):
    from captum.attr import NoiseTunnel
    from captum.metrics import infidelity, sensitivity_max

    inputs = (pixels - 0.5) / 0.5
    counts = count_keypoints(pixels, 16)
    explainer = SIFTInterrelation(model)
    smooth = NoiseTunnel(explainer).attribute(inputs, nt_type="smoothgrad", nt_samples=3, stdevs=0.05,
                                              keypoint_counts=counts, repeat_counts=True)  # fmt: skip
    assert smooth.shape == inputs.shape and bool(torch.isfinite(smooth).all())
    # with no noise, the smoothed attribution is the attribution itself
    still = NoiseTunnel(explainer).attribute(inputs, nt_type="smoothgrad", nt_samples=2, stdevs=0.0,
                                             keypoint_counts=counts, repeat_counts=True)  # fmt: skip
    torch.testing.assert_close(still, explainer.attribute(inputs, counts))
    sens = sensitivity_max(explainer.attribute, inputs, n_perturb_samples=2, keypoint_counts=counts,
                           repeat_counts=True)  # fmt: skip
    assert sens.shape == (2,) and bool((sens >= 0).all())

    def perturb(x):
        noise = torch.randn_like(x) * 0.01
        return noise, x - noise

    infid = infidelity(model, perturb, inputs, explainer.attribute(inputs, counts), target=0, n_perturb_samples=2)
    assert infid.shape == (2,) and bool(torch.isfinite(infid).all())
    with pytest.raises(CaptumSiftError, match="expected keypoint_counts for the 4 input images"):
        explainer.attribute(torch.cat([inputs, inputs]), counts[:1].expand(3, -1, -1))


# -- 11. torchrun: one rank's bad input ends every rank with its message -----------------------------
def test_torchrun_ranks_share_one_error(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(load_sample_photo("coffee")).save(root / cls / "x.png")
    Image.fromarray(load_sample_photo("coffee")).save(root / "z.png")  # no class: only rank 0 reads it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "captum_sift", "mask-eval", "--out", str(tmp_path / "out"), "--images", str(root), *TINY,
           "--batch-size", "1", "--model-kwargs", "depth=2", "--ratios", "0.25", "--modes", "random"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.count("captum-sift: error: mask-eval needs labels") == 2, result.stderr[-3000:]
    assert "Connection closed" not in result.stderr


# -- 12. API values ------------------------------------------------------------------------------------
def test_numpy_and_tensor_numbers_are_numbers(model, pixels):
    counts = count_keypoints(pixels, 16)
    ref = analyze(model, pixels, counts, image_space="pixel", gamma=1.0, min_keypoints=1, layers=1)
    got = analyze(model, pixels, counts, image_space="pixel", gamma=np.float32(1.0), min_keypoints=np.int64(1),
                  layers=np.int64(1))  # fmt: skip
    torch.testing.assert_close(got.kk, ref.kk, equal_nan=True)
    got = analyze(model, pixels, counts, image_space="pixel", gamma=torch.tensor(1.0), layers=[torch.tensor(1)])
    torch.testing.assert_close(got.kk, ref.kk, equal_nan=True)
    assert analyze(model, pixels, counts, image_space="pixel", layers="capture").layers == [0, 1, 2]
    with pytest.raises(CaptumSiftError, match="stage name .* got 'captur'"):
        analyze(model, pixels, counts, image_space="pixel", layers="captur")


def test_bad_api_values_raise_the_one_error(model, pixels, tmp_path):
    counts = count_keypoints(pixels, 16)
    report = analyze(model, pixels, counts, image_space="pixel")
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "garbage.csv").write_text("a,b\n1,2\n")
    (tmp_path / "idx").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    empty_folder = tmp_path / "f" / "a"
    empty_folder.mkdir(parents=True)
    Image.fromarray(load_sample_photo("coffee")).save(empty_folder / "x.png")
    calls = [
        (lambda: analyze(model, pixels, counts.to(torch.complex64), image_space="pixel"), "real-valued"),
        (lambda: analyze(model, pixels, counts.to("meta"), image_space="pixel"), "real-valued"),
        (lambda: InterrelationReport.load_json(tmp_path / "garbage.json"), "cannot read a report"),
        (lambda: InterrelationReport.load_json(tmp_path / "missing.json"), "cannot read a report"),
        (lambda: InterrelationReport.load_csv(tmp_path / "garbage.csv"), "expected a CSV written by"),
        (lambda: InterrelationReport.from_dict({"layers": [0]}), "expected a report written by"),
        (lambda: report.merge(5), "expected InterrelationReports to merge, got int"),
        (lambda: find_stages(None), "expected an InterrelationReport, got NoneType"),
        (lambda: patch_feature_mask(32, 32, 0), "expected patch_size to be an int >= 1, got 0"),
        (lambda: evaluate_masking(model, pixels, torch.tensor([0, 1]), batch_size=0, image_space="pixel"),
         "expected batch_size to be an int >= 1, got 0"),
        (lambda: evaluate_masking(model, [pixels], image_space="pixel", progress=False), "expected batch 0 of the"),
        (lambda: evaluate_masking(model, 5, image_space="pixel"), "expected a (B, C, H, W) tensor or an iterable"),
        (lambda: evaluate_masking(model, pixels, torch.tensor([0, 7]), image_space="pixel", modes=("random",),
                                  progress=False), "expected labels in [0, 5), got values in [0, 7]"),
        (lambda: wilson_interval(-1, 3), "expected correct to be an int >= 0 and <= 3, got -1"),
        (lambda: mcnemar_exact(-1, 2), "expected worse to be an int >= 0, got -1"),
        (lambda: ImageFolder(tmp_path / "f", 0), "expected size to be an int >= 1, got 0"),
        (lambda: ImageFolder(tmp_path / "f", 32).load([5]), "expected image indices in [0, 1), got 5"),
        (lambda: keypoints_to_counts(torch.zeros(3, 2), (32, 32), 16), "expected keypoints as a list"),
    ]  # fmt: skip
    for call, message in calls:
        with pytest.raises(CaptumSiftError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            call()
    from captum_sift.data.fashion_mnist import _read_idx

    with pytest.raises(CaptumSiftError, match="expected .* bytes in idx file"):
        _read_idx(tmp_path / "idx")


# -- 13. folder labels that cannot be the model's classes ------------------------------------------
def test_folder_classes_that_differ_from_the_model_outputs(tmp_path, image_folder, capsys):
    out = tmp_path / "out"
    args = ["mask-eval", "--out", str(out), "--images", str(image_folder), *TINY, "--model-kwargs", "depth=2",
            "--ratios", "0.25", "--modes", "random"]  # fmt: skip
    assert main(args) == 0
    assert "the image folder has 2 class sub-folders" in capsys.readouterr().out  # a 1000-class model
    report = json.loads((out / "report.json").read_text())
    assert any("2 class sub-folders" in w for w in report["warnings"])
    class_map = tmp_path / "map.json"
    class_map.write_text(json.dumps({"a": 7, "b": 3}))
    assert main([*args, "--out", str(tmp_path / "mapped"), "--class-map", str(class_map)]) == 0
    assert "class sub-folders" not in capsys.readouterr().out
    class_map.write_text(json.dumps({"a": 7}))
    assert main([*args, "--out", str(tmp_path / "bad"), "--class-map", str(class_map)]) == 2
    _one_line_error(capsys, "missing ['b']")


# ================================================================================================
# masking: the mask-eval command checks every logits tensor it reads, and its figure shows the fill
# (issues 23.7, 25.1)
# ================================================================================================
def test_mask_eval_refuses_a_fill_that_overflows(tmp_path, capsys):
    """--fill 1e30 made every masked logit NaN; it is refused before any work (the logits check itself:
    tests/test_masking.py::test_non_finite_masked_logits_are_refused)."""
    out = tmp_path / "m"
    args = ["mask-eval", "--out", str(out), "--limit", "4", "--fill", "1e30", "--ratios", "0.3", "--modes", "random"]
    assert main([*args, "--quiet"]) == 2
    _one_line_error(capsys, "expected --fill to be a finite number in [-1e+06, 1e+06], got '1e30'")
    assert not (out / "mask_eval.csv").exists()


@pytest.mark.parametrize("fill", ["mean", "drop"])
def test_mask_eval_figure_is_drawn_with_the_fill_of_the_run(tmp_path, monkeypatch, fill):
    from captum_sift import viz
    from captum_sift.data import default_model
    from captum_sift.vit import as_vit

    drawn = []
    original = viz.plot_mask_grid

    def spy(*args, **kwargs):
        drawn.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(viz, "plot_mask_grid", spy)
    out = tmp_path / fill
    args = ["mask-eval", "--out", str(out), "--limit", "2", "--fill", fill, "--ratios", "0.25", "--modes", "random"]
    assert main([*args, "--quiet"]) == 0
    vit = as_vit(default_model())
    assert len(drawn) == 1 and drawn[0]["fill"] == fill
    assert (tuple(drawn[0]["mean"]), tuple(drawn[0]["std"])) == (vit.mean, vit.std)
    assert (out / "masked_examples.png").exists()


# == attr helper's additions: statistics, API edges, numpy numbers (issues 25.3, 25.15, 25.16) ==========
def test_bad_statistics_are_refused_where_given(model, pixels):
    from captum_sift.vit.adapter import ViTAdapter, as_vit

    counts = count_keypoints(pixels, 16)
    x = (pixels - 0.5) / 0.5
    for mean, std, message in [
        (None, [float("inf")] * 3, r"std to be finite numbers > 0, got \[inf, inf, inf\]"),
        (None, [0.5, 0.0, 0.5], r"std to be finite numbers > 0"),
        ([float("nan")] * 3, None, r"mean to be finite numbers, got \[nan, nan, nan\]"),
        ([0.5, 0.5], None, r"mean to be 1 or 3 numbers \(one per input channel\), got \[0.5, 0.5\]"),
        ("0.5", None, r"mean to be 1 or 3 numbers"),
    ]:
        stats = {"mean": mean, "std": std}
        for call in (lambda s: as_vit(model, **s), lambda s: analyze(model, x, counts, **s),
                     lambda s: as_vit(model).with_normalization(**s),
                     lambda s: SIFTInterrelation(model, **s)):  # fmt: skip
            with pytest.raises(CaptumSiftError, match=message):
                call(stats)
    vit = as_vit(model)
    with pytest.raises(CaptumSiftError, match="std to be finite numbers > 0"):
        fields = ("model", "family", "blocks", "num_prefix_tokens", "patch_size", "in_chans", "num_heads", "mean",
                  "capture")  # fmt: skip
        ViTAdapter(**{f: getattr(vit, f) for f in fields}, std=(1, 1, -1))
    # one value for every channel; numpy arrays and tensors as sequences
    assert as_vit(model, mean=[0.5], std=0.5).mean == (0.5, 0.5, 0.5)
    assert as_vit(model, mean=[np.float32(0.25)] * 3, std=[torch.tensor(0.5)] * 3).std == (0.5, 0.5, 0.5)
    assert as_vit(model, mean=np.array([0.4, 0.5, 0.6]), std=torch.tensor([0.2, 0.3, 0.4])).std == (
        pytest.approx(0.2), pytest.approx(0.3), pytest.approx(0.4))  # fmt: skip
    ref = analyze(model, x, counts)
    got = analyze(model, x, counts, mean=np.array([0.5]), std=torch.tensor(0.5))
    torch.testing.assert_close(got.kk, ref.kk, equal_nan=True)


def test_api_edges_raise_the_one_error(model, pixels):
    from captum_sift.attr.patches import patch_scores_to_pixels
    from captum_sift.faithfulness import explain, patch_attribution
    from captum_sift.viz import overlay

    x = (pixels - 0.5) / 0.5
    nan_attr = torch.zeros_like(pixels)
    nan_attr[0, 1, 2, 3] = float("nan")
    calls = [
        (lambda: patch_scores_to_pixels(torch.zeros(1, 4), (1, 3, 32, 32), 0), "patch_size to be an int >= 1, got 0"),
        (lambda: patch_scores_to_pixels(torch.zeros(1, 4), (3, 32, 32), 16), "shape (B, C, H, W) of 4 ints"),
        (lambda: patch_scores_to_pixels(torch.zeros(1, 4), (1, 3, 40, 32), 16), "multiples of patch_size=16, got H=40"),
        (lambda: patch_attribution(torch.zeros(1, 3, 32, 32), 0), "patch_size to be an int >= 1, got 0"),
        (lambda: patch_attribution(torch.zeros(1, 3, 40, 32), 16), "multiples of patch_size=16, got H=40"),
        (lambda: overlay(pixels, nan_attr), "finite attributions to draw, got 1 NaN or Inf values"),
        (lambda: count_keypoints(pixels.to("meta"), 16), "got a tensor on the meta device"),
        (lambda: detect_keypoints(pixels.to("meta")), "got a tensor on the meta device"),
        (lambda: analyze(model, x.to("meta")), "got a tensor on the meta device"),
        (lambda: explain("saliency", model, x, torch.tensor([0, 5])), "targets in [0, 5), got values in [0, 5]"),
        (lambda: explain("integrated_gradients", model, x, torch.tensor([-1, 0])), ">= 0, got values in [-1, 0]"),
        (lambda: explain("saliency", model, x, torch.tensor([0.0, 1.0])), "integer targets, got dtype torch.float32"),
        (lambda: explain("feature_ablation", model, x, torch.tensor([0])), "targets of shape (2,), got (1,)"),
        (lambda: analyze(model, x, query_patch=16), "query_patch to be an int >= 0 and <= 15, got 16"),
    ]  # fmt: skip
    for call, message in calls:
        with pytest.raises(CaptumSiftError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            call()
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    spread = patch_scores_to_pixels(scores, torch.Size([1, 2, 32, 32]), np.int64(16))
    assert spread[0, 1, 20, 3].item() == 3.0 and spread[0, 0, 31, 31].item() == 4.0
    torch.testing.assert_close(patch_attribution(spread, np.int64(16)), scores * 2 * 256)  # summed over 2 x 16 x 16


def test_numpy_and_tensor_ints_where_ints_are_asked(model, pixels):
    from captum_sift.keypoints import KeypointCounter

    counts = count_keypoints(pixels, 16)
    assert torch.equal(count_keypoints(pixels, np.int64(16)), counts)
    assert torch.equal(count_keypoints(pixels, torch.tensor(16), n_octave_layers=np.int32(3)), counts)
    assert torch.equal(KeypointCounter(np.int64(16))(pixels), counts)
    assert torch.equal(patch_feature_mask(np.int64(64), np.int64(64), np.int64(16)), patch_feature_mask(64, 64, 16))
    x = (pixels - 0.5) / 0.5
    got = analyze(model, x, counts, query_patch=np.int64(3))
    assert got.query_patch.tolist() == [3, 3]
    torch.testing.assert_close(got.query_attention, analyze(model, x, counts, query_patch=3).query_attention)
