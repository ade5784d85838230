"""Null models for θ (SPEC §9): each control against a brute-force loop, and the excess on cases built to have
one and not to have one."""

import itertools
import math

import pytest
import timm
import torch
import torchvision

from captum_sift import CaptumSiftError, count_keypoints
from captum_sift.data import sample_images
from captum_sift.theta.controls import (
    distance_classes,
    excess,
    excess_verdict,
    locality_attention,
    shuffled_counts,
    uniform_attention,
)
from captum_sift.theta.functional import interrelation, patch_block, patch_theta
from captum_sift.vit import as_vit, iter_attention


def test_distance_classes_group_pairs_by_euclidean_grid_distance():
    classes, num = distance_classes(3, 4)
    cells = [divmod(i, 4) for i in range(12)]
    d2 = [[(a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 for b in cells] for a in cells]
    assert num == len({v for row in d2 for v in row})
    for i, j, k, m in itertools.product(range(12), repeat=4):
        if (i, j) < (k, m):
            assert (classes[i, j] == classes[k, m]) == (d2[i][j] == d2[k][m])


def test_locality_attention_is_the_mean_renormalised_attention_at_each_distance():
    torch.manual_seed(0)
    grid = (3, 4)
    attn = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    out = locality_attention(attn, grid)
    cells = [divmod(i, 4) for i in range(12)]
    dist = [[(a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 for b in cells] for a in cells]
    for b, h in itertools.product(range(2), range(3)):
        rows = attn[b, h] / attn[b, h].sum(-1, keepdim=True)
        for i, j in itertools.product(range(12), repeat=2):
            same = [rows[k, m] for k in range(12) for m in range(12) if dist[k][m] == dist[i][j]]
            assert out[b, h, i, j].item() == pytest.approx(sum(same).item() / len(same), abs=1e-12)


def test_uniform_control_gives_every_patch_the_images_weighted_key_share():
    counts = torch.tensor([[3, 0, 1, 0, 0, 2]])
    attn = torch.rand(1, 2, 6, 6)
    theta = patch_theta(uniform_attention(attn), counts)
    share = (3 + 1 + 2) / (3 + 1 + 2 + 3)  # Σ t_j over Key / (|Non| + Σ t_j over Key)
    assert torch.allclose(theta, torch.full_like(theta, share))


def test_rolled_counts_are_rolls_of_each_grid_seeded_by_the_image_alone():
    torch.manual_seed(1)
    counts = torch.randint(0, 4, (3, 12))
    ids = torch.tensor([7, 8, 9])
    rolled = shuffled_counts(counts, (3, 4), ids, draws=5, seed=2)
    assert rolled.shape == (5, 3, 12)
    for k, b in itertools.product(range(5), range(3)):
        grid = counts[b].view(3, 4)
        offsets = [(dy, dx) for dy in range(3) for dx in range(4) if (dy, dx) != (0, 0)]
        assert any(torch.equal(grid.roll((dy, dx), (0, 1)).flatten(), rolled[k, b]) for dy, dx in offsets)
    alone = shuffled_counts(counts[1:2], (3, 4), ids[1:2], draws=5, seed=2)
    assert torch.equal(alone[:, 0], rolled[:, 1])  # batching does not matter
    assert not torch.equal(shuffled_counts(counts, (3, 4), ids, draws=5, seed=3), rolled)


def test_exchanged_counts_never_give_an_image_its_own():
    counts = torch.arange(5).view(5, 1).expand(5, 4) * 10
    out = shuffled_counts(counts, (2, 2), torch.arange(5), draws=6, mode="images")
    for k in range(6):
        assert sorted(out[k, :, 0].tolist()) == [0, 10, 20, 30, 40]
        assert all(out[k, b, 0] != counts[b, 0] for b in range(5))
    with pytest.raises(CaptumSiftError, match="at least 2 images"):
        shuffled_counts(counts[:1], (2, 2), torch.arange(1), mode="images")


def test_excess_mean_interval_and_permutation_p_value():
    real = torch.tensor([[0.6, 0.5], [0.7, 0.5], [0.8, float("nan")], [0.9, 0.5]])
    control = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    result = excess(real, control, resamples=4000)
    assert result.mean[0].item() == pytest.approx(0.25)
    assert result.images.tolist() == [4, 3]
    assert 0.1 <= result.low[0].item() <= 0.25 <= result.high[0].item() <= 0.4
    # 4 positive differences: only the all-plus sign pattern (1 in 16) reaches the mean
    assert result.p_value[0].item() == pytest.approx(1 / 16, abs=0.015)
    assert result.mean[1].item() == 0 and result.p_value[1].item() == 1.0  # no difference: never significant
    empty = excess(torch.full((3, 1), float("nan")), torch.zeros(3, 1))
    assert math.isnan(empty.mean[0]) and math.isnan(empty.p_value[0]) and empty.images.tolist() == [0]


def _clustered_counts(images: int, grid: int, generator: torch.Generator) -> torch.Tensor:
    """Keypoints in one blob per image, as photos have them."""
    ys, xs = torch.arange(grid * grid) // grid, torch.arange(grid * grid) % grid
    counts = torch.zeros(images, grid * grid, dtype=torch.long)
    for b in range(images):
        cy, cx = torch.randint(0, grid, (2,), generator=generator).tolist()
        blob = ((ys - cy) ** 2 + (xs - cx) ** 2 <= 4) & (torch.rand(grid * grid, generator=generator) < 0.8)
        counts[b] = torch.where(blob, torch.randint(1, 4, (grid * grid,), generator=generator), 0)
    return counts


def _synthetic_attention(counts: torch.Tensor, grid: int, key_bonus: float) -> torch.Tensor:
    """softmax(-d² / σ² + key_bonus · Key(j)): local, plus a pull to Key patches beyond locality."""
    ys, xs = torch.arange(grid * grid) // grid, torch.arange(grid * grid) % grid
    d2 = ((ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2).double()
    logits = -d2 / 1.5**2 + key_bonus * (counts > 0).double()[:, None, None, :]
    return torch.softmax(logits.expand(-1, 2, -1, -1), dim=-1)


def _theta_kk(attn: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return interrelation(patch_theta(attn, counts), counts).kk.mean(1)  # (B,): head mean per image


@pytest.mark.parametrize("key_bonus", [0.0, 2.0])
def test_an_attention_pulled_to_key_patches_exceeds_both_controls_and_a_local_one_does_not(key_bonus):
    grid, images = 8, 40
    counts = _clustered_counts(images, grid, torch.Generator().manual_seed(0))
    attn = _synthetic_attention(counts, grid, key_bonus)
    real = _theta_kk(attn, counts)[:, None]
    local = _theta_kk(locality_attention(attn, (grid, grid)), counts)[:, None]
    rolled = shuffled_counts(counts, (grid, grid), torch.arange(images), draws=8)
    shuffled = torch.stack([_theta_kk(attn, rolled[k]) for k in range(8)]).mean(0)[:, None]
    over_local, over_shuffled = excess(real, local), excess(real, shuffled)
    # keypoints cluster and the attention is local: the shuffled control alone sees a gap either way
    assert over_shuffled.p_value.item() < 0.01
    if key_bonus:
        assert over_local.mean.item() > 0.05 and over_local.low.item() > 0 and over_local.p_value.item() < 0.01
        assert (
            excess_verdict("θ_KK", "locality", over_local) == "θ_KK exceeds the locality control at layers 0 (p < 0.01)"
        )
    else:  # distance alone: the locality control explains it exactly
        assert over_local.mean.item() == pytest.approx(0, abs=1e-12) and over_local.p_value.item() == 1.0
        verdict = excess_verdict("θ_KK", "locality", over_local, layers=[3])
        assert verdict == "θ_KK does not exceed the locality control at any layer (p < 0.01)"


def _random_vit(family: str, seed: int, size: int, patch: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "timm":
        return timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=size, patch_size=patch, depth=4, num_classes=10
        )
    if family == "torchvision":
        return torchvision.models.VisionTransformer(
            image_size=size, patch_size=patch, num_layers=4, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=10
        )
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=size, patch_size=patch, num_hidden_layers=4, num_attention_heads=3, hidden_size=48,
        intermediate_size=96, num_labels=10,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


@pytest.fixture(scope="module")
def photo_crops():
    """40 real 64 px crops (4 per sample photo) and their keypoint counts on an 8 x 8 grid."""
    photos = sample_images(size=128)
    crops = photos.unfold(2, 64, 64).unfold(3, 64, 64).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 64, 64)
    return crops, count_keypoints(crops, 8).flatten(1)


@pytest.mark.parametrize("family", ["timm", "torchvision", "hf"])
def test_random_weight_vits_show_no_keypoint_bias_beyond_the_controls(family, photo_crops):
    crops, counts = photo_crops
    ids = torch.arange(len(crops))
    rolled = shuffled_counts(counts, (8, 8), ids, draws=8)
    for seed in range(3):
        vit = as_vit(_random_vit(family, seed, 64, 8).eval())
        mean, std = vit.stats(crops)
        with torch.no_grad():
            blocks = [
                patch_block(attn.double(), vit.num_prefix_tokens)
                for _, attn in iter_attention(vit, (crops - mean) / std)
            ]
        real = torch.stack([_theta_kk(b, counts) for b in blocks], dim=1)  # (images, layers)
        local = torch.stack([_theta_kk(locality_attention(b, (8, 8)), counts) for b in blocks], dim=1)
        shuffled = torch.stack(
            [torch.stack([_theta_kk(b, rolled[k]) for k in range(8)]).nanmean(0) for b in blocks], dim=1
        )
        over_local, over_shuffled = excess(real, local), excess(real, shuffled)
        # Measured: θ_KK of a random network is its uniform control (the Key share) + 0.00-0.03, and the
        # excess over the locality and shuffled controls stays within ±0.07 at every layer (a pull to Key
        # patches gives 0.16-0.38 above). Softmax attention at random weights does favour high-norm,
        # textured tokens a little: a few layers pass p < 0.01 with excesses of 0.02-0.04, so the test bounds
        # the size of the excess rather than its significance.
        assert over_local.mean.abs().max() < 0.07 and over_shuffled.mean.abs().max() < 0.07, (family, seed)
        assert (real.nanmean(0) - uniform_kk(blocks, counts)).abs().max() < 0.04


def uniform_kk(blocks, counts):
    return torch.stack([_theta_kk(uniform_attention(b), counts) for b in blocks], dim=1).nanmean(0)


def test_bad_inputs_are_refused_with_shapes():
    with pytest.raises(CaptumSiftError, match=r"N = 2 x 3 = 6, got \(1, 1, 4, 4\)"):
        locality_attention(torch.rand(1, 1, 4, 4), (2, 3))
    with pytest.raises(CaptumSiftError, match="image_ids of shape"):
        shuffled_counts(torch.zeros(2, 4), (2, 2), torch.arange(3))
    with pytest.raises(CaptumSiftError, match="control of shape"):
        excess(torch.zeros(3, 2), torch.zeros(3, 1))
