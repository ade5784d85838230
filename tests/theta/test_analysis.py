"""analyze(), InterrelationReport and find_stages."""

import math

import pytest
import timm
import torch
from test_functional import loop_classes, loop_focus, loop_theta

from captum_sift import CaptumSiftError, analyze, count_keypoints, find_stages
from captum_sift.data import sample_images
from captum_sift.theta.analysis import analyze_batch, patch_scores_from_report, patch_thetas
from captum_sift.theta.report import InterrelationReport
from captum_sift.theta.settings import ThetaSettings
from captum_sift.theta.stages import split_stages, split_theta_kk
from captum_sift.vit import Batch, as_vit, iter_attention


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4).eval()


@pytest.fixture(scope="module")
def pixels():
    return sample_images(["astronaut", "coffee", "chelsea", "camera", "rocket"], size=64)


@pytest.fixture(scope="module")
def counts(pixels):
    return count_keypoints(pixels, 16)


def test_report_equals_loops_on_captured_attention(model, pixels, counts):
    report = analyze(model, pixels, counts, image_space="pixel", gamma=1.2)
    mean, std = torch.tensor([0.5] * 3).view(1, 3, 1, 1), torch.tensor([0.5] * 3).view(1, 3, 1, 1)
    maps = [a.double() for _, a in iter_attention(model, (pixels - mean) / std)]
    for b in range(2):
        t = counts[b].flatten().tolist()
        for layer in range(4):
            for h in range(3):
                attn = maps[layer][b, h, 1:, 1:]
                theta = loop_theta(attn, t, gamma=1.2)
                kk, kn, nk, nn = loop_classes(theta, t)
                assert float(report.kk[b, layer, h]) == pytest.approx(kk, abs=1e-5, nan_ok=True)
                assert float(report.kn[b, layer, h]) == pytest.approx(kn, abs=1e-5, nan_ok=True)
                assert float(report.nk[b, layer, h]) == pytest.approx(nk, abs=1e-5, nan_ok=True)
                assert float(report.focus[b, layer, h]) == pytest.approx(loop_focus(attn), rel=1e-5)
            heads = [loop_theta(maps[layer][b, h, 1:, 1:], t, gamma=1.2) for h in range(3)]
            expected = torch.tensor(heads, dtype=torch.float64).nanmean(0)
            torch.testing.assert_close(
                report.patch_theta[b, layer].double(), expected, atol=1e-5, rtol=0, equal_nan=True
            )


def test_counts_default_to_count_keypoints_in_both_image_spaces(model, pixels, counts):
    from_pixels = analyze(model, pixels, image_space="pixel")
    normalised = (pixels - 0.5) / 0.5
    from_model_space = analyze(model, normalised)
    assert torch.equal(from_pixels.keypoint_counts, counts.flatten(1))
    assert torch.equal(from_model_space.keypoint_counts, counts.flatten(1))
    torch.testing.assert_close(from_model_space.kk, from_pixels.kk, equal_nan=True)
    with pytest.raises(CaptumSiftError, match="not normalised with the model.s statistics"):
        analyze(model, normalised * 3)


def test_model_space_check_equals_the_pixels_it_reads_off(model):
    """check_model_space reads the range from per-channel ends: refuses what no normalised image (nor noise on
    one) gives, clips a perturbation's overshoot, and only warns about a narrow batch."""
    import warnings

    from captum_sift.vit.adapter import as_vit
    from captum_sift.vit.inputs import check_model_space

    vit = as_vit(model)
    mean, std = vit.stats(torch.zeros(1, 3, 1, 1))
    torch.manual_seed(3)
    outcome = {}
    clean = torch.rand(3, 3, 32, 32)
    cases = {
        "clean": clean,
        "3e-4 over": clean * 1.0003,
        "0.6 wide": clean * 0.6,
        "0.4 wide": clean * 0.4,  # a dark photo, or raw pixels: warns
        "noise": clean + torch.randn(3, 3, 32, 32) * 0.05,  # NoiseTunnel's stdevs=0.1 in this model space
        "x 3": clean * 3,  # patch means ~1.5: no noise does that
    }
    for name, pixels_in in cases.items():
        x = (pixels_in - mean) / std
        pixels = x * std + mean  # what undoing the normalisation gives, element by element
        lo, hi = float(pixels.min()), float(pixels.max())
        patch_means = torch.nn.functional.avg_pool2d(pixels, 16)  # by hand: (3, 3, 2, 2)
        if float(patch_means.min()) < -0.25 or float(patch_means.max()) > 1.25:
            with pytest.raises(CaptumSiftError, match=f"gives values in \\[{lo:.3g}, {hi:.3g}\\]"):
                check_model_space(vit, x)
            outcome[name] = "refused"
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = check_model_space(vit, x)
            assert check_model_space(vit, x, need_pixels=False) is None
        assert torch.equal(got, pixels.clamp(0, 1))
        outcome[name] = "warned" if caught else "passed"
        if caught:
            assert "mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]" in str(caught[0].message)
    assert outcome == {"clean": "passed", "3e-4 over": "passed", "0.6 wide": "passed", "0.4 wide": "warned",
                       "noise": "passed", "x 3": "refused"}  # fmt: skip
    assert float(cases["noise"].min()) < -0.1 and float(cases["noise"].max()) > 1.1  # the noise does leave [0, 1]
    with pytest.raises(CaptumSiftError, match=r"patch means in \[1\.[0-9]+, .*not \[0, 1\]"):
        check_model_space(vit, (torch.rand(1, 3, 32, 32) * 0.5 + 1.3 - mean) / std)  # a whole image above 1
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = (torch.rand(1, 3, 32, 32) - mean) / std
        x[0, 2, 3, 4] = bad
        with pytest.raises(CaptumSiftError, match="expected finite floating-point images"):
            check_model_space(vit, x)


def test_batch_equals_single_images(model, pixels, counts):
    batch = analyze(model, pixels, counts, image_space="pixel")
    for b in range(pixels.shape[0]):
        single = analyze(model, pixels[b : b + 1], counts[b : b + 1], image_space="pixel")
        for name in ("kk", "nk", "focus", "patch_theta", "query_attention"):
            torch.testing.assert_close(getattr(single, name)[0], getattr(batch, name)[b], equal_nan=True,
                                       rtol=1e-4, atol=1e-5)  # fmt: skip


def test_merged_reports_equal_one_big_batch(model, pixels, counts, tmp_path):
    whole = analyze(model, pixels, counts, image_space="pixel")
    parts = [analyze(model, pixels[s], counts[s], image_space="pixel") for s in (slice(0, 2), slice(2, 3), slice(3, 5))]
    merged = parts[0].merge(*parts[1:])
    assert merged.num_images == 5
    for name in ("kk", "kn", "nk", "nn", "focus", "focus_normalized"):
        torch.testing.assert_close(merged.mean(name), whole.mean(name), equal_nan=True, rtol=1e-5, atol=1e-6)
        assert torch.equal(merged.image_count(name), whole.image_count(name))
    torch.testing.assert_close(merged.kk, whole.kk, equal_nan=True, rtol=1e-4, atol=1e-5)
    small = parts[0].without_per_image().merge(parts[1], parts[2])
    assert not small.has_per_image
    torch.testing.assert_close(small.mean("kk"), whole.mean("kk"), equal_nan=True, rtol=1e-5, atol=1e-6)
    # JSON round trip, with and without per-image data; CSV has one row per layer x head
    whole.save_json(tmp_path / "r.json")
    back = InterrelationReport.load_json(tmp_path / "r.json")
    torch.testing.assert_close(back.mean("nk"), whole.mean("nk"), equal_nan=True)
    torch.testing.assert_close(back.kk, whole.kk, equal_nan=True)
    assert back.layers == whole.layers and back.settings == whole.settings
    whole.save_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 * 3 and lines[0].startswith("layer,head,kk,kn,nk,nn")
    from_csv = InterrelationReport.load_csv(tmp_path / "r.csv")
    assert not from_csv.has_per_image and from_csv.settings == whole.settings and from_csv.layers == whole.layers
    for name in ("sums", "counts"):
        for key in ("kk", "nk", "focus"):
            assert torch.equal(getattr(from_csv, name)[key], getattr(whole, name)[key])  # exact round trip
    with pytest.raises(CaptumSiftError, match="same layers"):
        whole.merge(analyze(model, pixels[:1], counts[:1], image_space="pixel", layers=[0, 1]))


def test_nan_images_are_left_out_with_their_count(model, pixels, counts):
    no_key = counts.clone()
    no_key[1] = 0  # image 1: no Key patch -> θ_KK NaN for it
    report = analyze(model, pixels[:2], no_key[:2], image_space="pixel")
    assert torch.isnan(report.kk[1]).all()
    assert (report.image_count("kk") == 1).all() and (report.image_count("nk") == 2).all()
    torch.testing.assert_close(report.mean("kk"), report.kk[0].double())
    torch.testing.assert_close(report.layer_mean("kk"), report.kk[0].double().mean(1))


def test_layers_selection_and_early_stop(model, pixels, counts):
    report = analyze(model, pixels[:2], counts[:2], image_space="pixel", layers=[-1, 1])
    full = analyze(model, pixels[:2], counts[:2], image_space="pixel")
    assert report.layers == [1, 3]
    torch.testing.assert_close(report.kk, full.kk[:, [1, 3]], equal_nan=True)
    with pytest.raises(CaptumSiftError, match=r"layer indices in \[-4, 4\)"):
        analyze(model, pixels[:1], counts[:1], image_space="pixel", layers=[4])


def test_patch_thetas_are_the_report_s_scores_without_the_report(model, pixels, counts):
    vit = as_vit(model)
    for layers in (None, [2, 0], "capture"):
        settings = ThetaSettings(layers=layers)
        report = analyze_batch(vit, pixels[:3], counts[:3], settings, "pixel")
        thetas = patch_thetas(vit, pixels[:3], counts[:3], settings, "pixel")
        assert thetas.layers == report.layers == ([0, 2] if layers == [2, 0] else [0, 1, 2, 3])
        assert torch.equal(thetas.patch_theta, report.patch_theta)
        assert torch.equal(thetas.keypoint_counts, report.keypoint_counts)
        assert (thetas.kk is None) == (layers != "capture")  # θ_KK only for a stage
        if thetas.kk is not None:
            torch.testing.assert_close(thetas.kk, report.kk, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(thetas.scores(layers), patch_scores_from_report(report, layers))
    by_name = analyze(model, pixels[:3], counts[:3], image_space="pixel", query_patch=5)
    assert torch.equal(by_name.query_patch, torch.tensor([5, 5, 5]))
    assert torch.equal(by_name.query_attention, analyze_batch(vit, pixels[:3], counts[:3], ThetaSettings(), "pixel",
                                                              query_patch=5).query_attention)  # fmt: skip


def test_a_batch_built_once_gives_the_numbers_of_the_images(model, pixels, counts):
    """analyze_batch / patch_thetas take a vit.Batch as built: same report, counts counted on its pixels."""
    vit, settings = as_vit(model), ThetaSettings()
    from_images = analyze_batch(vit, pixels[:3], None, settings, "pixel", query_patch=5)
    batch = Batch.build(vit, pixels[:3], "pixel")
    from_batch = analyze_batch(vit, batch, None, settings, "pixel", query_patch=5)
    assert torch.equal(from_batch.keypoint_counts, counts[:3].flatten(1))  # counted on the batch's pixels
    for name in ("kk", "nk", "focus", "patch_theta", "query_attention"):
        torch.testing.assert_close(getattr(from_batch, name), getattr(from_images, name), rtol=0, atol=0,
                                   equal_nan=True)  # fmt: skip
    held = patch_thetas(vit, batch.with_counts(counts[:3]), None, settings, "pixel")
    assert torch.equal(held.patch_theta, from_images.patch_theta)
    mean, std = vit.stats(pixels[:3])
    without_pixels = Batch.build(vit, (pixels[:3] - mean) / std, "model", need_pixels=False)
    assert without_pixels.pixels is None
    with pytest.raises(CaptumSiftError, match="a Batch built with its pixels"):
        patch_thetas(vit, without_pixels, None, settings, "model")
    with pytest.raises(CaptumSiftError, match=r"query_patch .* <= 15, got 16"):
        analyze_batch(vit, batch, None, settings, "pixel", query_patch=16)


def test_bad_input_leaves_the_model_untouched(model, pixels, counts):
    flags = [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()]
    cases = [
        (dict(gamma=0.0), r"gamma > 0, got 0.0"),
        (dict(gamma=-1), r"gamma > 0"),
        (dict(keypoint_counts=torch.zeros(2, 15, dtype=torch.long)), r"\(B, N\) = \(2, 16\).*got \(2, 15\)"),
        (dict(keypoint_counts=torch.zeros(3, 16, dtype=torch.long)), r"got \(3, 16\)"),
        (dict(keypoint_counts=-torch.ones(2, 16)), "keypoint_counts >= 0"),
        (dict(keypoint_counts=torch.full((2, 16), 0.5)), "integral"),
        (dict(keypoint_counts=torch.full((2, 16), float("nan"))), "NaN"),
    ]
    for kwargs, message in cases:
        kwargs = {"keypoint_counts": counts[:2], **kwargs}
        with pytest.raises(CaptumSiftError, match=message):
            analyze(model, pixels[:2], image_space="pixel", **kwargs)
    with pytest.raises(CaptumSiftError, match="multiples of its patch size"):
        analyze(model, torch.rand(1, 3, 60, 64), torch.zeros(1, 15), image_space="pixel")
    with pytest.raises(CaptumSiftError, match="Vision Transformer"):
        analyze(torch.nn.Conv2d(3, 3, 1), pixels[:1])
    report = analyze(model, pixels[:2], counts[:2].double(), image_space="pixel")  # integral floats are fine
    assert report.num_images == 2
    assert flags == [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_split_stages_on_synthetic_curves():
    flat, rise, fall = [0.02, 0.0, 0.01, 0.0], [0.2, 0.3, 0.4, 0.5, 0.6], [0.45, 0.4, 0.38]
    assert split_stages(torch.tensor(flat + rise + fall)) == (4, 8)
    assert split_stages(torch.tensor([0.0, 0.5, 0.2])) == (1, 1)
    # maximum at the last layer: Capture ends one before, so that Coach is non-empty
    assert split_stages(torch.tensor([0.0, 0.0, 0.1, 0.2, 0.3])) == (2, 3)
    with pytest.raises(CaptumSiftError, match="at least 3 layers"):
        split_stages(torch.tensor([0.0, 1.0]))
    with pytest.raises(CaptumSiftError, match=r"NaN at layer positions \[1\]"):
        split_stages(torch.tensor([0.0, math.nan, 1.0, 0.0]))


def _curve_report(kk_curve, nk_curve=None, focus_curve=None, image_curves=None):
    """A report whose head-mean curves are the given ones (1 image unless per-image curves are given)."""
    kk = torch.tensor(kk_curve, dtype=torch.float64).view(-1, 1).expand(-1, 2).contiguous()
    nk = torch.tensor(nk_curve if nk_curve is not None else [0.3] * len(kk_curve), dtype=torch.float64)
    focus = torch.tensor(focus_curve if focus_curve is not None else [1.0] * len(kk_curve), dtype=torch.float64)
    n = 1 if image_curves is None else image_curves.shape[0]
    return InterrelationReport(
        layers=list(range(len(kk_curve))), num_heads=2, grid_size=(2, 2), settings={}, num_images=n,
        sums={"kk": kk * n, "nk": nk.view(-1, 1).expand(-1, 2) * n, "focus": focus.view(-1, 1).expand(-1, 2) * n},
        counts={k: torch.full((len(kk_curve), 2), n, dtype=torch.long) for k in ("kk", "nk", "focus")},
        curves=None if image_curves is None else {"kk": image_curves.float(), "focus": torch.ones_like(image_curves)},
    )  # fmt: skip


# The stage issue's table: a real 12-layer ViT-S/14 (DINOv2 weights), 84 photos at 224 px.
TABLE_KK = [0.601, 0.607, 0.688, 0.729, 0.739, 0.767, 0.747, 0.776, 0.767, 0.745, 0.726, 0.672]
TABLE_NK = [0.465, 0.280, 0.441, 0.446, 0.474, 0.574, 0.479, 0.654, 0.630, 0.661, 0.500, 0.430]
TABLE_FOCUS = [3.737, 3.360, 3.959, 3.054, 3.555, 3.755, 4.332, 4.058, 4.011, 4.208, 4.400, 4.445]


def test_stages_of_the_pretrained_table_follow_the_paper():
    report = _curve_report(TABLE_KK, TABLE_NK, TABLE_FOCUS)
    stages = find_stages(report)
    # Capture spans the rise of θ_KK and ends at its (smoothed) peak; the θ_NK dip at layer 1 does not decide
    assert (stages.retrieval, stages.capture, stages.coach) == ([0, 1], [2, 3, 4, 5, 6, 7], [8, 9, 10, 11])
    assert stages.kk == pytest.approx(TABLE_KK) and "θ_KK" in stages.rule
    assert stages.confidence == {"capture_start": None, "coach_start": None}  # one "image": no bootstrap
    assert not stages.clear and "fewer than 2 images (1)" in stages.verdict
    assert stages.focus_by_stage["coach"] > stages.focus_by_stage["capture"]  # the focus index rebounds in Coach
    old = find_stages(report, rule="gap")  # the earlier rule put Capture at layer 1 alone
    assert (old.retrieval, old.capture) == ([0], [1])


def test_stages_on_synthetic_curves_with_known_boundaries():
    flat, rise, fall = [0.5, 0.5, 0.5, 0.5], [0.6, 0.65, 0.7, 0.75, 0.8], [0.78, 0.76, 0.75]
    assert split_theta_kk(torch.tensor(flat + rise + fall)) == (4, 8)
    assert split_theta_kk(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.72])) == (4, 8)  # a tie
    wiggle = torch.tensor(flat + rise + fall)
    wiggle[1] += 0.04  # one layer's wiggle in Retrieval moves nothing
    assert split_theta_kk(wiggle) == (4, 8)
    wiggle[6] += 0.12  # nor does a one-layer spike inside Capture move the peak
    assert split_theta_kk(wiggle) == (4, 8)
    assert split_theta_kk(torch.tensor([0.0, 0.5, 0.2])) == (1, 1)
    with pytest.raises(CaptumSiftError, match="at least 3 layers"):
        split_theta_kk(torch.tensor([0.0, 1.0]))
    with pytest.raises(CaptumSiftError, match=r"NaN at layer positions \[1\]"):
        split_theta_kk(torch.tensor([0.0, math.nan, 1.0, 0.0]))
    two = InterrelationReport(**{**_curve_report(flat + rise).__dict__, "layers": [0, 1]})
    with pytest.raises(CaptumSiftError, match="at least 3 layers"):
        find_stages(two)


def test_bootstrap_confidence_separates_shape_from_noise():
    g = torch.Generator().manual_seed(0)
    shape = torch.tensor([0.5, 0.5, 0.5, 0.58, 0.63, 0.68, 0.73, 0.7, 0.68, 0.67], dtype=torch.float64)
    images = shape + 0.03 * torch.randn(60, 10, generator=g, dtype=torch.float64)
    stages = find_stages(_curve_report(images.mean(0).tolist(), image_curves=images))
    assert stages.clear and stages.capture == [3, 4, 5, 6]
    assert min(stages.confidence.values()) >= 0.5, stages.confidence
    noise = 0.6 + 0.03 * torch.randn(60, 10, generator=g, dtype=torch.float64)  # no shape at all
    stages = find_stages(_curve_report(noise.mean(0).tolist(), image_curves=noise))
    assert not stages.clear and stages.verdict.startswith("no clear stages")


def test_random_weight_vits_get_no_clear_stages(pixels):
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64).eval()
        stages = find_stages(analyze(model, pixels, image_space="pixel"))
        assert not stages.clear, (seed, stages.verdict, stages.kk)


def test_viz_draws_the_report(model, pixels, counts):
    from captum_sift import viz

    report = analyze(model, pixels, counts, image_space="pixel")
    stages = find_stages(report)
    ax = viz.plot_interrelation(report)
    lines = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    torch.testing.assert_close(torch.tensor(lines[0].get_ydata()), report.layer_mean("kk"))
    torch.testing.assert_close(torch.tensor(lines[1].get_ydata()), report.layer_mean("nk"))
    assert len(ax.collections) == 2 * 3  # one scatter per head and class
    ax = viz.plot_focus_index(report, normalized=True)
    torch.testing.assert_close(torch.tensor(ax.get_lines()[0].get_ydata()), report.layer_mean("focus_normalized"))
    viz.plot_stages(report, stages)
    fig = viz.plot_stage_heatmaps(report, stages, image=pixels[0])
    assert len(fig.axes) == 4  # three panels and one shared colour bar
    assert fig.axes[3].get_ylabel() == "attention weight (head mean)"
