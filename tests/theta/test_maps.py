"""patch_theta_maps: θ_i per layer and head equals the SPEC §2-3 formulas looped over the captured attention,
for timm, torchvision and Hugging Face models; its head mean is the report's patch_theta."""

import math

import pytest
import torch
from family_models import counts, families, pixels, timm_vit  # noqa: F401 - fixtures

from captum_sift import CaptumSiftError, analyze
from captum_sift.theta import interrelation, patch_theta_maps, patch_thetas, theta_maps
from captum_sift.theta.settings import ThetaSettings
from captum_sift.vit import as_vit, iter_attention


def loop_theta(attn, t, gamma, weighted, include_self):
    """θ_i of one (image, layer, head): attn is the patch block as nested lists, t the counts (SPEC §2-3)."""
    n = len(t)
    out = []
    for i in range(n):
        line = gamma * sum(attn[i]) / n  # eq. 2
        attended = [j for j in range(n) if attn[i][j] >= line and (include_self or j != i)]
        key = [j for j in attended if t[j] >= 1]
        non = len(attended) - len(key)
        top = sum(t[j] for j in key) if weighted else len(key)  # eq. 3
        bottom = non + top if weighted else len(attended)
        out.append(top / bottom if bottom else math.nan)
    return out


@pytest.mark.parametrize("name", ["timm", "torchvision", "hf"])
@pytest.mark.parametrize(("gamma", "weighted", "include_self"), [(1.0, True, True), (1.15, False, False)])
def test_maps_equal_a_loop_over_layers_and_heads(families, pixels, counts, name, gamma, weighted, include_self):  # noqa: F811
    model = families[name]
    x = (pixels - 0.5) / 0.5
    attns = [a.double() for _, a in iter_attention(model, x)]
    got = patch_theta_maps(model, x, counts, gamma=gamma, weighted=weighted, include_self=include_self)
    batch, layers, heads, n = got.shape
    assert (batch, layers, heads, n) == (3, 3, 4, 16)
    expected = torch.tensor(
        [
            [
                [
                    loop_theta(attns[k][b, h, 1:, 1:].tolist(), counts[b].tolist(), gamma, weighted, include_self)
                    for h in range(heads)
                ]
                for k in range(layers)
            ]
            for b in range(batch)
        ],  # fmt: skip
        dtype=torch.float64,
    )
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5, equal_nan=True)
    if gamma > 1:  # a line above every weight of a row leaves S_i empty: NaN, never 0
        assert bool(torch.isnan(got).any()) and bool((~torch.isnan(got)).any())


def test_head_mean_and_classes_reproduce_the_report(families, pixels, counts):  # noqa: F811
    model = families["timm"]
    x = (pixels - 0.5) / 0.5
    for gamma in (1.0, 1.15):  # with NaN θ (gamma 1.15) the means leave them out, as the report does
        maps = patch_theta_maps(model, x, counts, gamma=gamma)
        report = analyze(model, x, counts, gamma=gamma)
        torch.testing.assert_close(torch.nanmean(maps, dim=2), report.patch_theta, equal_nan=True)
        classes = interrelation(maps.flatten(1, 2), counts)
        torch.testing.assert_close(classes.kk.view(3, 3, 4), report.kk, equal_nan=True)
        torch.testing.assert_close(classes.nk.view(3, 3, 4), report.nk, equal_nan=True)
        settings = ThetaSettings(gamma=gamma)
        plain = patch_thetas(as_vit(model), x, counts, settings)
        via_maps = theta_maps(as_vit(model), x, counts, settings).patch_thetas()
        torch.testing.assert_close(via_maps.patch_theta, plain.patch_theta, equal_nan=True)
        assert via_maps.layers == plain.layers


def test_layers_and_heads_select_slices_of_the_full_map(families, pixels, counts):  # noqa: F811
    model = families["hf"]
    x = (pixels - 0.5) / 0.5
    full = patch_theta_maps(model, x, counts)
    some = patch_theta_maps(model, x, counts, layers=[2, -3], heads=[3, -3])
    torch.testing.assert_close(some, full[:, [0, 2]][:, :, [3, 1]])
    torch.testing.assert_close(patch_theta_maps(model, x, counts, heads=2), full[:, :, [2]])
    # the counts are found on the pixels when not given, as analyze() does
    torch.testing.assert_close(
        patch_theta_maps(model, pixels, image_space="pixel", layers=[1]),
        patch_theta_maps(model, pixels, analyze(model, pixels, image_space="pixel").keypoint_counts,
                         image_space="pixel", layers=[1]),
    )  # fmt: skip


def test_bad_heads_and_layers_are_refused(families, pixels, counts):  # noqa: F811
    model = families["torchvision"]
    x = (pixels - 0.5) / 0.5
    with pytest.raises(CaptumSiftError, match=r"expected head in \[-4, 4\) \(the model has 4 heads\), got 4"):
        patch_theta_maps(model, x, counts, heads=4)
    with pytest.raises(CaptumSiftError, match=r"every head in \[-4, 4\).*got -5"):
        patch_theta_maps(model, x, counts, heads=[0, -5])
    with pytest.raises(CaptumSiftError, match="at least one head"):
        patch_theta_maps(model, x, counts, heads=[])
    with pytest.raises(CaptumSiftError, match=r"expected distinct heads, got \[0, -4\] \(heads \[0, 0\]\)"):
        patch_theta_maps(model, x, counts, heads=[0, -4])
    with pytest.raises(CaptumSiftError, match="expected heads to be None"):
        patch_theta_maps(model, x, counts, heads="all")
    with pytest.raises(CaptumSiftError, match=r"layer indices in \[-3, 3\)"):
        patch_theta_maps(model, x, counts, layers=[3])
