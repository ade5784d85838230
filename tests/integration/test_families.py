"""One network in timm, torchvision and Hugging Face layouts gives the same numbers everywhere.

The converters below map a timm ViT's weights into torchvision's
``VisionTransformer`` and transformers' ``ViTForImageClassification``; the
logits agree, and then so must every report, score, attribution and table.
"""

import copy
import json
import warnings

import pytest
import torch
import torchvision
from family_models import DEPTH, DIM, HEADS, MLP, PATCH, SIZE, to_hf, to_torchvision, transformers

from captum_sift import CaptumSiftError, SIFTInterrelation, ThetaSettings, analyze, count_keypoints
from captum_sift.cli.main import main
from captum_sift.masking import drop_tokens, evaluate_masking, patch_scores, select_patches
from captum_sift.vit import iter_attention
from captum_sift.vit.adapter import ViTAdapter, as_vit


def _logits(model, x):
    out = model(x) if not hasattr(model, "config") else model(pixel_values=x).logits
    return out


def test_the_converters_give_one_network(families, pixels):
    x = (pixels - 0.5) / 0.5  # timm's default statistics for this architecture
    ref = _logits(families["timm"], x)
    for name in ("torchvision", "hf"):
        torch.testing.assert_close(_logits(families[name], x), ref, atol=1e-5, rtol=1e-5, msg=name)


def test_adapters_read_the_same_geometry(families):
    for name, model in families.items():
        vit = as_vit(model)
        assert (vit.family, vit.depth, vit.num_heads, vit.patch_size, vit.num_prefix_tokens, vit.in_chans) == (
            name,
            DEPTH,
            HEADS,
            PATCH,
            1,
            3,
        )
    assert as_vit(families["timm"]).mean == (0.5, 0.5, 0.5)  # timm's pretrained config
    assert as_vit(families["torchvision"]).mean == (0.485, 0.456, 0.406)  # torchvision's weights transforms
    assert as_vit(families["hf"]).mean == (0.5, 0.5, 0.5)  # ViTImageProcessor's default


@pytest.mark.parametrize("settings", [ThetaSettings(), ThetaSettings(gamma=2.0, weighted=False, include_self=False)])
def test_reports_are_equal_across_families(families, pixels, counts, settings):
    stats = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # one normalisation for the one network
    reports = {n: analyze(m, pixels, counts, settings, image_space="pixel", **stats) for n, m in families.items()}
    ref = reports["timm"]
    for name in ("torchvision", "hf"):
        report = reports[name]
        for field in ("kk", "nk", "focus", "patch_theta", "query_attention"):
            torch.testing.assert_close(getattr(report, field), getattr(ref, field), atol=2e-5, rtol=1e-4,
                                       equal_nan=True, msg=f"{name} {field}")  # fmt: skip
        for quantity in ("kk", "kn", "nk", "nn", "focus"):
            torch.testing.assert_close(report.mean(quantity), ref.mean(quantity), atol=2e-5, rtol=1e-4, equal_nan=True)


def test_every_entry_point_gives_the_same_numbers(families, pixels, counts):
    stats = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    x = (pixels - 0.5) / 0.5
    labels = _logits(families["timm"], x).argmax(1)
    out = {}
    for name, model in families.items():
        vit = as_vit(model, **stats)
        scores = patch_scores(vit, x, counts, layers=[0, 2])
        attr = SIFTInterrelation(vit, layers=[0, 2]).attribute(x, keypoint_counts=counts)
        selected = select_patches(scores, 0.5, "top")
        dropped = drop_tokens(vit, x, selected)
        table = evaluate_masking(vit, pixels, labels, ratios=(0.25, 0.5), modes=("random",), image_space="pixel",
                                 progress=False)  # fmt: skip
        out[name] = (scores, attr, dropped, [r["accuracy"] for r in table.rows()])
    for name in ("torchvision", "hf"):
        for a, b in zip(out[name][:3], out["timm"][:3], strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
        assert out[name][3] == out["timm"][3]


def _qk_attention(q, k, heads):
    b, t, d = q.shape
    q = q.view(b, t, heads, d // heads).transpose(1, 2)
    k = k.view(b, t, heads, d // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)


def _block_inputs(blocks, run):
    """The tokens entering every block during one forward of the model."""
    seen = []
    handles = [blk.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(
        args[0] if args else kwargs["hidden_states"]), with_kwargs=True) for blk in blocks]  # fmt: skip
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_captured_attention_equals_a_recomputation_from_q_and_k(families, pixels):
    x = (pixels - 0.5) / 0.5
    tv, hf = families["torchvision"], families["hf"]
    tv_in = _block_inputs(list(tv.encoder.layers), lambda: tv(x))
    for i, attn in iter_attention(tv, x):
        blk = tv.encoder.layers[i]
        h = blk.ln_1(tv_in[i])
        w, b = blk.self_attention.in_proj_weight, blk.self_attention.in_proj_bias
        q, k, _ = torch.nn.functional.linear(h, w, b).chunk(3, dim=-1)
        torch.testing.assert_close(attn, _qk_attention(q, k, HEADS), atol=1e-5, rtol=1e-4)
    hf_in = _block_inputs(list(hf.vit.layers), lambda: hf(pixel_values=x))
    for i, attn in iter_attention(hf, x):
        blk = hf.vit.layers[i]
        h = blk.layernorm_before(hf_in[i])
        expected = _qk_attention(blk.attention.q_proj(h), blk.attention.k_proj(h), HEADS)
        torch.testing.assert_close(attn, expected, atol=1e-5, rtol=1e-4)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
def test_model_untouched_after_an_exception(families, pixels, name):
    model = families[name]
    model.train()
    modes = [m.training for m in model.modules()]
    attn_impl = model.config._attn_implementation if name == "hf" else None
    fused = [b.attn.fused_attn for b in model.blocks] if name == "timm" else None
    x = (pixels - 0.5) / 0.5
    with pytest.raises(RuntimeError, match="caller"):
        for i, _ in iter_attention(model, x):
            assert _hooks(model) == 0 and model.training  # between yields: as given (eval only inside)
            if i == 1:
                raise RuntimeError("caller")
    assert _hooks(model) == 0
    assert [m.training for m in model.modules()] == modes
    if name == "hf":
        assert model.config._attn_implementation == attn_impl == "sdpa"
    if name == "timm":
        assert [b.attn.fused_attn for b in model.blocks] == fused
    model.eval()


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
def test_the_last_block_stops_at_its_attention(families, pixels, name):
    """``last=k``: the same first k+1 maps; block k's MLP and every later block never run; the model as given."""
    model = families[name]
    vit = as_vit(model)
    x = (pixels - 0.5) / 0.5
    full = [attn for _, attn in iter_attention(model, x)]
    mlps = [blk.mlp for blk in vit.blocks]
    calls = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, i=i: calls.append(i)) for i, m in enumerate(mlps)]
    try:
        cut = list(iter_attention(model, x, last=1))
    finally:
        for handle in handles:
            handle.remove()
    assert [i for i, _ in cut] == [0, 1] and calls == [0]  # block 1 stopped after its attention
    for (_, attn), ref in zip(cut, full, strict=False):
        torch.testing.assert_close(attn, ref, rtol=0, atol=0)
    assert _hooks(model) == 0 and not model.training
    if name == "hf":
        assert model.config._attn_implementation == "sdpa"
    if name == "timm":
        assert all(b.attn.fused_attn for b in model.blocks)
    assert [i for i, _ in iter_attention(model, x, last=-2)] == [0, 1]  # negative counts from the end
    for bad in (DEPTH, -DEPTH - 1, True, 1.0):
        with pytest.raises(CaptumSiftError, match=rf"expected last in \[-{DEPTH}, {DEPTH}\).*got {bad!r}"):
            list(iter_attention(model, x, last=bad))


@pytest.mark.parametrize(
    ("build", "prefix"),
    [
        (lambda: transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**_small())), 2),
        (lambda: transformers.DeiTModel(transformers.DeiTConfig(**_small())), 2),
        (lambda: transformers.ViTModel(transformers.ViTConfig(**_small())), 1),
        (lambda: transformers.Dinov2Model(transformers.Dinov2Config(**_small(mlp=False))), 1),
        (
            lambda: transformers.Dinov2WithRegistersModel(
                transformers.Dinov2WithRegistersConfig(**_small(mlp=False), num_register_tokens=4)
            ),
            5,
        ),
    ],
)
def test_hf_models_match_their_own_eager_attentions(build, prefix, pixels):
    torch.manual_seed(0)
    model = build().eval()
    vit = as_vit(model)
    assert vit.num_prefix_tokens == prefix and model.config._attn_implementation == "sdpa"
    x = (pixels - 0.5) / 0.5
    ours = [a for _, a in iter_attention(model, x)]
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            theirs = model(pixel_values=x, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = "sdpa"
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape[-1] == prefix + 16
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    report = analyze(model, pixels, image_space="pixel")
    assert report.kk.shape == (3, 2, 2)


def _small(mlp=True):
    config = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": SIZE,
              "patch_size": PATCH, "num_labels": 3}  # fmt: skip
    if mlp:
        config["intermediate_size"] = 32
    return config


def test_not_a_vit_names_the_three_families():
    with pytest.raises(CaptumSiftError, match="timm, torchvision or Hugging Face transformers.*got ResNet"):
        as_vit(torchvision.models.resnet18(weights=None))
    with pytest.raises(CaptumSiftError, match="expected a ViT .torch.nn.Module. or a ViTAdapter, got str"):
        as_vit("vit_b_16")


def test_a_custom_adapter_follows_the_protocol(families, pixels, counts):
    """A ViT no family knows, wrapped by hand: the torchvision network seen through a custom capture."""
    tv = families["torchvision"]
    from contextlib import contextmanager

    @contextmanager
    def capture(block, store):
        def ask(_m, args, kwargs):
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

        handles = [block.self_attention.register_forward_pre_hook(ask, with_kwargs=True),
                   block.self_attention.register_forward_hook(lambda _m, _i, out: store.append(out[1]))]  # fmt: skip
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    custom = ViTAdapter(model=tv, family="mine", blocks=tuple(tv.encoder.layers), num_prefix_tokens=1,
                        patch_size=PATCH, in_chans=3, num_heads=HEADS, mean=(0.5,) * 3, std=(0.5,) * 3,
                        capture=capture, forward_logits=lambda m, x: m(x))  # fmt: skip
    ours = analyze(custom, pixels, counts, image_space="pixel")
    ref = analyze(families["timm"], pixels, counts, image_space="pixel")
    torch.testing.assert_close(ours.patch_theta, ref.patch_theta, atol=2e-5, rtol=1e-4, equal_nan=True)


def test_wrong_normalisation_is_caught(families, pixels):
    """What no normalised image gives is refused; a narrow batch (raw pixels? a dark photo?) warns, naming the
    statistics, for every entry point and family."""
    from captum_sift.attr import AttentionRollout, RawAttention
    from captum_sift.data import sample_images
    from captum_sift.masking import MaskAsPrompt

    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    photos = sample_images(["astronaut", "chelsea"], size=SIZE)
    tv = families["torchvision"]  # ImageNet statistics
    with pytest.warns(UserWarning, match=r"image_space='pixel'.*"):
        analyze(families["timm"], pixels)  # raw [0, 1] pixels passed as model input (0.5 / 0.5 model)
    with pytest.warns(UserWarning, match=r"mean=\[0.485, 0.456, 0.406\], std=\[0.229, 0.224, 0.225\]"):
        analyze(tv, (pixels - 0.5) / 0.5)  # 0.5/0.5 instead of ImageNet's: squeezed into a band
    imagenet = (photos - imagenet_mean) / imagenet_std
    for name in ("timm", "hf"):  # 0.5 / 0.5 models, ImageNet-normalised photos: bright, dark patches leave [0, 1]
        for call in (lambda m: analyze(m, imagenet), lambda m: AttentionRollout(m).attribute(imagenet),
                     lambda m: RawAttention(m).attribute(imagenet), lambda m: MaskAsPrompt(m)(imagenet)):  # fmt: skip
            with pytest.raises(CaptumSiftError, match="not normalised with the model.s statistics"):
                call(families[name])
    analyze(tv, imagenet)  # the right statistics pass
    analyze(tv, (pixels - 0.5) / 0.5, mean=(0.5,) * 3, std=(0.5,) * 3)  # or say which
    # Correct input of dark and hazy photos (issue 23.8) passes, with a warning at most, and gives the numbers
    # of the same photos in pixel space.
    for photo in (0.4 * photos, 0.35 + 0.45 * photos):
        x = (photo - imagenet_mean) / imagenet_std
        for call in (lambda m, i, **k: analyze(m, i, **k).kk, lambda m, i, **k: SIFTInterrelation(m, **k).attribute(i),
                     lambda m, i, **k: MaskAsPrompt(m, mode="top", **k)(i)):  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = call(tv, x)
            torch.testing.assert_close(got, call(tv, photo, image_space="pixel"), equal_nan=True, rtol=1e-4,
                                       atol=1e-5)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:  # once per statistics, not once per batch
        warnings.simplefilter("default")
        for scale in (0.4, 0.3, 0.2):
            analyze(tv, (scale * photos - imagenet_mean) / imagenet_std)
    assert len(caught) == 1 and "std=[0.229, 0.224, 0.225]" in str(caught[0].message)


def test_default_model_with_pixel_data_is_caught():
    from captum_sift.data import default_dataset, default_model

    images, labels = default_dataset()
    with pytest.warns(UserWarning, match=r"image_space='pixel'.*mean=\[0\.286\], std=\[0\.353\]|mean=\[0\.28"):
        evaluate_masking(default_model(), images[:8], labels[:8], ratios=(0.1,), modes=("random",), progress=False)
    table = evaluate_masking(default_model(), images[:64], labels[:64], ratios=(0.1,), modes=("random",),
                             image_space="pixel", progress=False)  # fmt: skip
    assert table.baseline["accuracy"] > 0.8


def test_cli_analyzes_a_saved_hf_model_offline(families, tmp_path, image_folder, capsys):
    folder = tmp_path / "hf_vit"
    families["hf"].save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    out = tmp_path / "out"
    assert main(["analyze", "--out", str(out), "--model", f"hf:{folder}", "--images", str(image_folder),
                 "--batch-size", "4", "--quiet"]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 6 and report["grid_size"] == [SIZE // PATCH] * 2 and report["warnings"] == []
    assert report["settings"]["random_weights"] is False and "WARNING" not in capsys.readouterr().out
    # the same folder read as torchvision and timm networks gives the same numbers
    tv_weights = tmp_path / "tv.pt"
    torch.save(families["torchvision"].state_dict(), tv_weights)
    out_tv = tmp_path / "out_tv"
    assert main(["analyze", "--out", str(out_tv), "--model", "torchvision:vit_b_16", "--images", str(image_folder),
                 "--weights", str(tv_weights), "--img-size", str(SIZE), "--batch-size", "4", "--quiet",
                 "--model-kwargs", f"patch_size={PATCH}", f"num_layers={DEPTH}", f"num_heads={HEADS}",
                 f"hidden_dim={DIM}", f"mlp_dim={MLP}"]) == 2  # fmt: skip
    assert "vit_b_16" in capsys.readouterr().err  # vit_b_16 fixes its sizes: a one-line error, not a crash


def test_cli_gives_the_same_report_for_the_network_in_timm_and_hf_layouts(families, tmp_path, image_folder):
    folder = tmp_path / "hf_vit"
    families["hf"].save_pretrained(folder)
    weights = tmp_path / "timm.pt"
    torch.save(families["timm"].state_dict(), weights)
    common = ["--images", str(image_folder), "--img-size", str(SIZE), "--batch-size", "4", "--quiet"]
    assert main(["analyze", "--out", str(tmp_path / "hf"), "--model", f"hf:{folder}", *common]) == 0
    timm_kwargs = [f"patch_size={PATCH}", f"embed_dim={DIM}", f"depth={DEPTH}", f"num_heads={HEADS}",
                   f"mlp_ratio={MLP / DIM}"]  # fmt: skip
    assert main(["analyze", "--out", str(tmp_path / "timm"), "--model", "vit_tiny_patch16_224", "--weights",
                 str(weights), "--model-kwargs", *timm_kwargs, "--mean", "0.5", "0.5", "0.5",
                 *common]) == 0  # fmt: skip
    hf_report, timm_report = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("hf", "timm"))
    for name in ("kk", "nk", "focus"):
        a, b = torch.tensor(hf_report["means"][name], dtype=torch.float64), torch.tensor(timm_report["means"][name])
        torch.testing.assert_close(a, b.double(), atol=1e-5, rtol=1e-4, equal_nan=True)
    for stage in ("retrieval", "capture", "coach"):
        assert hf_report["stages"][stage] == timm_report["stages"][stage]


def test_import_needs_no_docstrings():
    import subprocess
    import sys

    code = "import captum_sift, captum_sift.cli.main, captum_sift.theta.stages as s; assert s.RULE; print('ok')"
    result = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    result = subprocess.run([sys.executable, "-OO", "-m", "captum_sift", "--help"], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0 and "analyze" in result.stdout


def test_cli_random_weights_warn_everywhere(tmp_path, image_folder, capsys):
    out = tmp_path / "out"
    assert main(["analyze", "--out", str(out), "--model", "vit_tiny_patch16_224", "--img-size", "32",
                 "--model-kwargs", "depth=3", "class_token=False", "global_pool=avg", "reg_tokens=2",
                 "--images", str(image_folder), "--quiet"]) == 0  # fmt: skip
    assert "WARNING: the model has random weights" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["warnings"] and "random weights" in report["warnings"][0]
    assert report["layers"] == [0, 1, 2] and report["settings"]["model_kwargs"][0] == ["depth", 3]
    assert "random weights" in (out / "index.html").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "hf:/no/such/folder"], "Hugging Face model folder not found: /no/such/folder"),
        (["--model", "torchvision:no_such_net"], "cannot create torchvision model 'no_such_net'"),
        (["--model", "vit_tiny_patch16_224", "--model-kwargs", "depth"], "expected --model-kwargs as key=value"),
        (["--model", "vit_tiny_patch16_224", "--model-kwargs", "a=1", "a=2"], "gives 'a' twice"),
        (["--pretrained"], "--pretrained needs --model"),
    ],
)
def test_cli_model_errors_are_one_line(tmp_path, capsys, args, message):
    assert main(["analyze", "--out", str(tmp_path), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_pretrained_offline_fails_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "captum_sift", "analyze", "--out", str(tmp_path), "--model", "vit_tiny_patch16_224",
         "--pretrained", "--quiet"], capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "captum-sift: error: --pretrained: the weights of vit_tiny_patch16_224 are not in the local cache"
    )
    assert result.stderr.count("\n") == 1


def test_wrapped_models_are_unwrapped(families, pixels):
    model = families["timm"]
    x = (pixels - 0.5) / 0.5
    ref = analyze(model, x, torch.zeros(3, 16, dtype=torch.long)).focus
    for wrapped in (torch.nn.DataParallel(model), torch.compile(model)):
        assert as_vit(wrapped).model is model
        torch.testing.assert_close(analyze(wrapped, x, torch.zeros(3, 16, dtype=torch.long)).focus, ref)


# -- Captum's wrappers and metrics perturb the inputs: every attribution class, family and image space --------
def _explainers():
    from captum_sift.attr import AttentionRollout, RawAttention

    return {"theta": SIFTInterrelation, "rollout": AttentionRollout, "raw": RawAttention}


@pytest.fixture(scope="module")
def photos():
    from captum_sift.data import sample_images

    return sample_images(["astronaut", "chelsea"], size=SIZE)


@pytest.mark.parametrize("space", ["model", "pixel"])
@pytest.mark.parametrize("method", ["theta", "rollout", "raw"])
@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
def test_noise_tunnel_sensitivity_and_infidelity_run_on_perturbed_inputs(families, photos, name, method, space):
    """NoiseTunnel, sensitivity_max and infidelity on every class, family and space (issue 23.9): the noise
    leaves [0, 1] (by 0.1-0.2), and the smoothed map is the mean of the maps of the noisy copies."""
    from captum.attr import NoiseTunnel
    from captum.metrics import infidelity, sensitivity_max

    model = families[name]
    explainer = _explainers()[method](model, image_space=space)
    mean, std = explainer.vit.stats(photos)
    x = photos if space == "pixel" else (photos - mean) / std
    stdev = 0.05 if space == "pixel" else 0.1  # 0.1 in model space: the case
    torch.manual_seed(0)
    smooth = NoiseTunnel(explainer).attribute(x, nt_type="smoothgrad", nt_samples=2, stdevs=stdev, target=0)
    torch.manual_seed(0)  # Captum's noise, drawn again: the copies of each image in a row
    noisy = x.repeat_interleave(2, dim=0) + torch.normal(0, torch.tensor(stdev).repeat(4, 3, SIZE, SIZE))
    pixels_seen = noisy if space == "pixel" else noisy * std + mean
    assert float(pixels_seen.min()) < -0.05 or float(pixels_seen.max()) > 1.05  # the noise does leave [0, 1]
    by_hand = torch.stack([explainer.attribute(noisy[i : i + 1])[0] for i in range(4)]).view(2, 2, 3, SIZE, SIZE)
    torch.testing.assert_close(smooth, by_hand.mean(dim=1), rtol=1e-5, atol=1e-6)
    sens = sensitivity_max(explainer.attribute, x, target=0, n_perturb_samples=2)
    assert sens.shape == (2,) and bool(torch.isfinite(sens).all()) and bool((sens >= 0).all())

    def perturb(inputs):
        noise = torch.randn_like(inputs) * stdev
        return noise, inputs - noise

    infid = infidelity(explainer.forward_func, perturb, x, explainer.attribute(x), target=0, n_perturb_samples=2)
    assert infid.shape == (2,) and bool(torch.isfinite(infid).all())
    # forward_func takes what attribute() takes: in pixel space it normalises first
    torch.testing.assert_close(explainer.forward_func(x), _logits(model, (photos - mean) / std))


@pytest.mark.parametrize("space", ["model", "pixel"])
def test_counts_of_the_clean_images_go_through_captums_wrappers(families, photos, space):
    """Counted once on the clean images, passed with repeat_counts=True: NoiseTunnel's copies use them (issue 23.9)."""
    from captum.attr import NoiseTunnel
    from captum.metrics import sensitivity_max

    explainer = SIFTInterrelation(families["torchvision"], image_space=space)
    mean, std = explainer.vit.stats(photos)
    x = photos if space == "pixel" else (photos - mean) / std
    counts = explainer.count_keypoints(x)
    assert torch.equal(counts, count_keypoints(photos, PATCH))  # on the pixels behind model-space input
    torch.manual_seed(0)
    smooth = NoiseTunnel(explainer).attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.1,
                                              keypoint_counts=counts, repeat_counts=True)  # fmt: skip
    torch.manual_seed(0)
    noisy = x.repeat_interleave(3, dim=0) + torch.normal(0, torch.tensor(0.1).repeat(6, 3, SIZE, SIZE))
    by_hand = [explainer.attribute(noisy[i : i + 1], counts[i // 3 : i // 3 + 1])[0] for i in range(6)]
    torch.testing.assert_close(smooth, torch.stack(by_hand).view(2, 3, 3, SIZE, SIZE).mean(dim=1))
    sens = sensitivity_max(explainer.attribute, x, n_perturb_samples=2, keypoint_counts=counts, repeat_counts=True)
    assert sens.shape == (2,) and bool((sens >= 0).all())


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
def test_0_255_model_input_is_refused_by_every_class(families, photos, name):
    """0..255 images as model input (issue 25.5): refused by θ, rollout and raw attention alike."""
    for cls in _explainers().values():
        with pytest.raises(CaptumSiftError, match="not normalised with the model.s statistics"):
            cls(families[name]).attribute(photos * 255)
        with pytest.raises(CaptumSiftError, match="divide it by 255"):
            cls(families[name], image_space="pixel").attribute(photos * 255)


def test_noise_in_pixel_space_is_not_called_a_0_255_image(families, photos):
    torch.manual_seed(0)
    noisy = photos + torch.randn_like(photos) * 0.06  # values ~[-0.2, 1.2]
    for cls in _explainers().values():
        assert cls(families["timm"], image_space="pixel").attribute(noisy).shape == photos.shape
    with pytest.raises(CaptumSiftError, match=r"values in \[0, 1\]") as caught:
        count_keypoints(noisy, PATCH)  # keypoints themselves still want [0, 1]
    assert "255" not in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_pixel_input_is_cast_to_the_models_dtype(families, photos, dtype):
    """A float64 or bfloat16 model with image_space='pixel' (issue 25.14): every entry point casts the pixels."""
    from captum_sift.attr import AttentionRollout, RawAttention
    from captum_sift.masking import MaskAsPrompt

    counts = count_keypoints(photos, PATCH)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float64 else {"rtol": 0.1, "atol": 0.05}
    for name in ("timm", "torchvision", "hf"):
        ref_model = families[name]
        model = (to_torchvision(families["timm"]) if name == "torchvision" else
                 to_hf(families["timm"]) if name == "hf" else copy.deepcopy(families["timm"])).to(dtype)  # fmt: skip
        calls = [
            lambda m: analyze(m, photos, counts, image_space="pixel").patch_theta,
            lambda m: SIFTInterrelation(m, image_space="pixel").attribute(photos, counts),
            lambda m: AttentionRollout(m, image_space="pixel").attribute(photos),
            lambda m: RawAttention(m, image_space="pixel").attribute(photos),
            lambda m: MaskAsPrompt(m, ratio=0.25, mode="top", image_space="pixel")(photos, counts),
        ]
        for call in calls:
            got = call(model)
            torch.testing.assert_close(got.float(), call(ref_model).float(), equal_nan=True, **tol)
