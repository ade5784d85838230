"""The SPEC §9 controls inside analyze(): the tensor controls' numbers exactly, in every family, over batches,
processes' merges, saved and resumed reports; the verdict lines on cases built to pass and to fail them."""

import json
import math

import pytest
import torch

from captum_sift import CaptumSiftError, ThetaSettings, analyze
from captum_sift.theta.control_theta import MIN_EXCESS
from captum_sift.theta.controls import (
    Excess,
    decidable_layers,
    excess,
    excess_verdict,
    joint_verdict,
    locality_attention,
    shuffled_counts,
    uniform_attention,
)
from captum_sift.theta.functional import interrelation, patch_block, patch_theta
from captum_sift.theta.report import InterrelationReport
from captum_sift.vit import as_vit, iter_attention
from tests.theta.test_controls import (  # noqa: F401 (photo_crops: the fixture of 40 real crops, shared)
    _clustered_counts,
    _random_vit,
    _synthetic_attention,
    _theta_kk,
    photo_crops,
)

GRID = 8


def _inputs(images=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 3, 64, 64, generator=g)
    n = GRID * GRID
    counts = torch.randint(1, 4, (images, n), generator=g) * (torch.rand(images, n, generator=g) < 0.4)
    return x, counts


def _blocks(vit, x):
    with torch.no_grad():
        return [patch_block(a.double(), vit.num_prefix_tokens) for _, a in iter_attention(vit, x)]


def _classes(attn, counts):
    rel = interrelation(patch_theta(attn, counts), counts)
    return rel.kk, rel.nk  # (B, h)


def _brute(blocks, counts, level, ids):
    """{name: (B, L, h)} of each control by the tensor functions of controls.py, layer by layer."""
    draws = {"fast": 2, "all": 8}[level]
    rolled = shuffled_counts(counts, (GRID, GRID), ids, draws=draws)
    out = {f"{q}_{c}": [] for c in ("uniform", "locality", "shuffled") for q in ("kk", "nk")}
    for attn in blocks:
        heads = attn.shape[1]
        rows = attn / attn.sum(-1, keepdim=True)
        local = rows if level == "all" else rows.mean(1, keepdim=True)  # "fast": one profile per layer
        pairs = {
            "uniform": _classes(uniform_attention(attn), counts),
            "locality": [v.expand(-1, heads) for v in _classes(locality_attention(local, (GRID, GRID)), counts)],
        }
        shuffled = [_classes(attn, rolled[k]) for k in range(draws)]
        pairs["shuffled"] = [torch.stack([s[i] for s in shuffled]).nanmean(0) for i in range(2)]
        for c, (kk, nk) in pairs.items():
            out[f"kk_{c}"].append(kk)
            out[f"nk_{c}"].append(nk)
    return {name: torch.stack(v, dim=1) for name, v in out.items()}


@pytest.mark.parametrize("family", ["timm", "torchvision", "hf"])
@pytest.mark.parametrize("level", ["fast", "all"])
def test_analyze_gives_each_control_the_numbers_of_the_tensor_controls(family, level):
    vit = as_vit(_random_vit(family, 0, 64, 8).eval())
    x, counts = _inputs()
    report = analyze(vit, x, counts, controls=level)
    assert report.controls == ("uniform", "locality", "shuffled") and report.settings["controls"] == level
    brute = _brute(_blocks(vit, x), counts, level, torch.arange(len(x)))
    for name, values in brute.items():
        expected = values.nanmean(0)  # the data-set mean of each layer x head
        assert torch.allclose(report.mean(name), expected.double(), atol=2e-5), name
        assert torch.allclose(report.curves[name], values.float().nanmean(2), atol=2e-5, equal_nan=True), name
    assert torch.equal(report.curves["nk"], report.nk.nanmean(2))
    # the uniform control is the Key share: the same for every layer and head
    assert torch.allclose(report.mean("kk_uniform"), report.mean("kk_uniform")[:1, :1].expand_as(report.mean("kk")))


def test_no_controls_keep_the_report_as_it_was():
    vit = as_vit(_random_vit("timm", 0, 64, 8).eval())
    x, counts = _inputs()
    report = analyze(vit, x, counts)
    assert report.controls == () and set(report.sums) == {"kk", "nk", "focus"} and set(report.curves) == {"kk", "focus"}
    assert "controls" not in report.settings
    with pytest.raises(CaptumSiftError, match="with the locality control, got controls \\(\\)"):
        report.control_excess("locality")
    with pytest.raises(CaptumSiftError, match="expected controls in"):
        ThetaSettings(controls="some")


def test_batches_merged_in_any_order_give_the_numbers_of_one_pass():
    vit = as_vit(_random_vit("timm", 1, 64, 8).eval())
    x, counts = _inputs(6, seed=1)
    whole = analyze(vit, x, counts, controls="all", image_index=torch.arange(10, 16))
    parts = [analyze(vit, x[s], counts[s], controls="all", image_index=torch.arange(10, 16)[s])
             for s in (slice(3, 6), slice(0, 1), slice(1, 3))]  # fmt: skip
    merged = parts[0].without_per_image().merge(parts[1], parts[2].without_per_image())
    for name in whole.stored_names:
        assert torch.allclose(merged.sums[name], whole.sums[name], atol=1e-9), name
    for quantity in ("kk", "gap"):
        for control in whole.controls:
            a, b = merged.control_excess(control, quantity), whole.control_excess(control, quantity)
            for field in ("mean", "low", "high", "p_value"):
                assert torch.allclose(getattr(a, field), getattr(b, field), atol=1e-6), (control, quantity, field)
    # the image index seeds the shuffled draws: another index, other draws
    other = analyze(vit, x, counts, controls="all", image_index=torch.arange(20, 26))
    assert not torch.allclose(other.sums["kk_shuffled"], whole.sums["kk_shuffled"])
    assert torch.equal(other.sums["kk_locality"], whole.sums["kk_locality"])
    with pytest.raises(CaptumSiftError, match="same layers, heads, grid and settings"):
        whole.merge(analyze(vit, x, counts, controls="fast"))
    with pytest.raises(CaptumSiftError, match=r"image index of shape \(6,\), got \(2,\)"):
        analyze(vit, x, counts, controls="fast", image_index=[0, 1])


def test_state_dict_dict_and_csv_keep_the_controls(tmp_path):
    vit = as_vit(_random_vit("hf", 0, 64, 8).eval())
    x, counts = _inputs()
    report = analyze(vit, x, counts, controls="fast", image_index=[4, 0, 2, 1, 3]).without_per_image()
    target = analyze(vit, x[:1], counts[:1])
    target.load_state_dict(json.loads(json.dumps(report.state_dict(), allow_nan=False)))
    back = InterrelationReport.from_dict(json.loads(json.dumps(report.to_dict())))
    for loaded in (target, back):
        assert loaded.controls == report.controls
        for name in report.stored_names:
            assert torch.equal(loaded.sums[name], report.sums[name])
            assert torch.equal(loaded.counts[name], report.counts[name])
        assert all(torch.equal(loaded.curves[n], report.curves[n]) for n in report.curves)
        assert loaded.control_verdicts() == report.control_verdicts()
    means = report.to_dict()["means"]
    assert means["kk_locality"] == report.mean("kk_locality").tolist()
    report.save_csv(tmp_path / "r.csv")
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    for c in report.controls:
        assert {f"kk_{c}", f"nk_{c}", f"excess_kk_{c}", f"excess_gap_{c}", f"sum_kk_{c}"} <= set(header)
    from_csv = InterrelationReport.load_csv(tmp_path / "r.csv")
    assert from_csv.controls == report.controls
    assert torch.equal(from_csv.sums["nk_shuffled"], report.sums["nk_shuffled"])
    damaged = report.to_dict()
    damaged["curves"].pop("nk_locality")
    with pytest.raises(CaptumSiftError, match="expected curves"):
        InterrelationReport.from_dict(damaged)
    half = report.to_dict()
    for part in ("sums", "counts"):
        half[part].pop("nk_uniform")
    with pytest.raises(CaptumSiftError, match="both 'kk_<control>' and 'nk_<control>', got"):
        InterrelationReport.from_dict(half)


def test_the_gap_excess_is_the_per_image_gap_minus_the_controls():
    vit = as_vit(_random_vit("torchvision", 2, 64, 8).eval())
    x, counts = _inputs(8, seed=3)
    report = analyze(vit, x, counts, controls="fast")
    c = report.curves
    gap = report.control_excess("locality", "gap")
    direct = excess(c["kk"].double() - c["nk"].double(), c["kk_locality"].double() - c["nk_locality"].double())
    assert torch.equal(gap.mean, direct.mean) and torch.equal(gap.p_value, direct.p_value)
    with pytest.raises(CaptumSiftError, match="quantity 'kk' or 'gap'"):
        report.control_excess("locality", "nk")


def test_the_verdict_floor_keeps_small_significant_excesses_silent():
    real = torch.tensor([[0.53], [0.54], [0.52], [0.53], [0.54], [0.53], [0.52], [0.54]])
    result = excess(real, torch.full_like(real, 0.46))  # +0.07, every image above: p = 1 / 256 + resampling
    assert result.p_value.item() < 0.01
    assert excess_verdict("θ_KK", "locality", result) == "θ_KK exceeds the locality control at layers 0 (p < 0.01)"
    assert excess_verdict("θ_KK", "locality", result, min_excess=MIN_EXCESS) == (
        "θ_KK does not exceed the locality control at any layer (p < 0.01, excess >= 0.1)"
    )
    with pytest.raises(CaptumSiftError, match="min_excess >= 0"):
        excess_verdict("θ_KK", "locality", result, min_excess=math.nan)


def _excess_of(means, lows, ps):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return Excess(t(means), t(lows), t(means) + 0.05, t(ps), torch.full((len(means),), 40))


def test_the_joint_verdict_names_only_the_layers_where_both_controls_are_exceeded():
    # layer:          0     1     2     3     4
    locality = _excess_of([0.20, 0.20, 0.20, 0.05, 0.20], [0.1, 0.1, 0.1, 0.01, -0.01], [0.001] * 5)
    shuffled = _excess_of([0.00, 0.15, 0.30, 0.30, 0.30], [-0.1, 0.1, 0.2, 0.2, 0.2], [0.5, 0.001, 0.001, 0.001, 0.001])
    both = {"locality": locality, "shuffled": shuffled}
    # 0: shuffled not above; 1, 2: both; 3: locality below the floor; 4: locality's interval reaches 0
    assert joint_verdict("θ_KK", both, [3, 4, 5, 6, 7], min_excess=0.1) == (
        "θ_KK exceeds the locality and shuffled controls together at layers 4-5 (p < 0.01, excess >= 0.1): "
        "the paper's Key bias beyond geometry"
    )
    assert joint_verdict("θ_KK", both, [3, 4, 5, 6, 7], alpha=0.0005, min_excess=0.1) == (
        "θ_KK exceeds the locality and shuffled controls together at no layer (p < 0.0005, excess >= 0.1): "
        "no Key bias beyond geometry"
    )
    single = excess_verdict("θ_KK", "locality", locality, min_excess=0.1)
    assert single.endswith("at layers 0-2 (p < 0.01, excess >= 0.1)")
    with pytest.raises(CaptumSiftError, match="one number of layers"):
        joint_verdict("θ_KK", {"locality": locality, "shuffled": _excess_of([0.2], [0.1], [0.001])})
    with pytest.raises(CaptumSiftError, match="at least one control"):
        joint_verdict("θ_KK", {})


def test_layers_with_too_few_images_are_undetermined_never_without_bias():
    # images 0, 1, 6 (2^-6 = 0.016 >= 0.01) cannot reach p < 0.01; 7 can (2^-7 = 0.0078)
    result = Excess(*(torch.tensor(v, dtype=torch.float64) for v in ([0.3] * 4, [0.2] * 4, [0.4] * 4)),
                    torch.tensor([0.001] * 4, dtype=torch.float64), torch.tensor([0, 1, 6, 7]))  # fmt: skip
    assert decidable_layers(result).tolist() == [False, False, False, True]
    assert excess_verdict("θ_KK", "locality", result) == (
        "θ_KK exceeds the locality control at layers 3 (p < 0.01); undetermined at layers 0-2 "
        "(6 images: no sign-flip p-value falls below 2^-6 = 0.016)"
    )
    low = result._replace(mean=torch.full((4,), -0.1, dtype=torch.float64))
    assert excess_verdict("θ_KK", "locality", low).startswith("θ_KK does not exceed the locality control at layers 3 (")
    both = {"locality": low, "shuffled": result}
    assert joint_verdict("θ_KK", both).startswith(
        "θ_KK exceeds the locality and shuffled controls together at none of layers 3"
    )
    none = result._replace(images=torch.tensor([0, 0, 1, 1]))
    assert excess_verdict("θ_KK", "locality", none) == (
        "θ_KK vs the locality control: undetermined at every layer "
        "(1 image: no sign-flip p-value falls below 2^-1 = 0.5)"
    )


def test_one_image_or_no_keypoints_give_undetermined_verdicts_not_no_bias():
    vit = as_vit(_random_vit("timm", 0, 64, 8).eval())
    x, counts = _inputs(1, seed=4)
    one = analyze(vit, x, counts, controls="fast")
    result = one.control_excess("locality")
    assert result.images.tolist() == [1] * len(one.layers) and torch.isnan(result.low).all()
    for line in one.control_verdicts().values():
        assert ": undetermined at every layer (1 image:" in line and "no Key bias" not in line, line
    x, _ = _inputs(3, seed=4)
    bare = analyze(vit, x, torch.zeros(3, GRID * GRID, dtype=torch.long), controls="fast")
    assert bare.control_verdicts()["joint"] == (
        "θ_KK vs the locality and shuffled controls together: undetermined at every layer (no image has a value there)"
    )


def test_a_key_to_key_attention_passes_the_verdict_with_the_floor_and_a_local_one_does_not():
    counts = _clustered_counts(40, GRID, torch.Generator().manual_seed(0))
    for bonus, word in ((2.0, "exceeds"), (0.0, "does not exceed")):
        attn = _synthetic_attention(counts, GRID, bonus)
        real = _theta_kk(attn, counts)[:, None]
        local = _theta_kk(locality_attention(attn, (GRID, GRID)), counts)[:, None]
        verdict = excess_verdict("θ_KK", "locality", excess(real, local), min_excess=MIN_EXCESS)
        assert verdict.startswith(f"θ_KK {word} the locality control"), verdict


@pytest.mark.parametrize("family", ["timm", "torchvision", "hf"])
def test_random_weight_vits_get_no_exceeds_verdict_over_locality_or_shuffled(family, photo_crops):  # noqa: F811
    crops, counts = photo_crops
    for seed, level in zip(range(3), ("all", "fast", "all"), strict=True):
        vit = as_vit(_random_vit(family, seed, 64, 8).eval())
        report = analyze(vit, crops, counts, controls=level, image_space="pixel")
        # without the floor, some layers pass at p < 0.01 with excesses of 0.02-0.07: the floor's reason
        assert max(report.control_excess(c).mean.max().item() for c in ("locality", "shuffled")) < MIN_EXCESS
        verdicts = report.control_verdicts()
        for control in ("locality", "shuffled"):
            assert verdicts[control] == (
                f"θ_KK does not exceed the {control} control at any layer (p < 0.01, excess >= 0.1)"
            ), (family, seed)
        assert verdicts["joint"].endswith("together at no layer (p < 0.01, excess >= 0.1): no Key bias beyond geometry")
