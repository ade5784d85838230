"""Guided masking (SPEC §8): MAE's random_masking contract, exact counts, schedule, a training step."""

import pytest
import timm
import torch

from captum_sift import CaptumSiftError
from captum_sift.mae import KeyShareSchedule, MaskedAutoencoder, guided_masking, random_masking
from captum_sift.mae.masking import mask_counts


def _tokens(b=4, n=16, d=3, seed=0):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


COUNTS = torch.tensor([
    [2, 0, 0, 1, 0, 0, 0, 3, 0, 0, 1, 0, 0, 0, 0, 0],  # 4 Key
    [0] * 16,  # no Key patch
    [1] * 16,  # no Non-key patch
    [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # 8 / 8
])  # fmt: skip


@pytest.mark.parametrize("masking", ["random", "guided"])
def test_random_masking_contract(masking):
    x = _tokens()
    g = torch.Generator().manual_seed(1)
    if masking == "random":
        x_masked, mask, ids_restore = random_masking(x, 0.75, generator=g)
    else:
        x_masked, mask, ids_restore = guided_masking(x, COUNTS, 0.75, 0.5, generator=g)
    assert x_masked.shape == (4, 4, 3) and mask.shape == (4, 16) and ids_restore.shape == (4, 16)
    assert mask.dtype == x.dtype and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.sum(1) == 12).all()
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(16).expand(4, 16))
    # x_masked = x gathered at the first N - n entries of ids_shuffle, and those are the unmasked patches
    kept = ids_shuffle[:, :4]
    assert torch.equal(x_masked, torch.gather(x, 1, kept.unsqueeze(-1).expand(-1, -1, 3)))
    assert (torch.gather(mask, 1, kept) == 0).all()
    # the MAE decoder's unshuffle gives the patches back in order
    filler = torch.full((4, 12, 3), float("nan"))
    restored = torch.gather(torch.cat([x_masked, filler], 1), 1, ids_restore.unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(restored[mask == 0], x[mask == 0]) and torch.isnan(restored[mask == 1]).all()


@pytest.mark.parametrize(
    ("key_share", "expected_key"),
    [
        (0.0, [0, 0, 12, 4]),  # image 2 has only Key patches: all 12 spill over to Key
        (0.5, [4, 0, 12, 6]),  # image 0 has 4 Key: 6 wanted, 4 taken, the rest from Non-key
        (1.0, [4, 0, 12, 8]),
        (0.25, [3, 0, 12, 4]),  # image 3: 3 Key wanted, but only 8 Non-key for the other 9
    ],
)
def test_exact_key_counts_with_spill_over(key_share, expected_key):
    _, mask, _ = guided_masking(_tokens(), COUNTS, 0.75, key_share, generator=torch.Generator().manual_seed(3))
    is_key = COUNTS >= 1
    assert (mask.sum(1) == 12).all()
    assert (mask * is_key).sum(1).long().tolist() == expected_key
    n_key, n_non = mask_counts(is_key, 12, key_share)
    assert n_key.tolist() == expected_key and (n_key + n_non == 12).all()


def test_min_keypoints_and_reproducibility():
    x = _tokens()
    a = guided_masking(x, COUNTS, 0.5, 1.0, min_keypoints=2, generator=torch.Generator().manual_seed(7))
    b = guided_masking(x, COUNTS, 0.5, 1.0, min_keypoints=2, generator=torch.Generator().manual_seed(7))
    c = guided_masking(x, COUNTS, 0.5, 1.0, min_keypoints=2, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    assert a[1][0, [0, 7]].sum() == 2  # the only patches with t >= 2 are masked first


def test_masked_patches_are_random_within_groups():
    x = _tokens(b=1, n=16)
    counts = COUNTS[3:4]
    hits = torch.zeros(16)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        hits += guided_masking(x, counts, 0.25, 0.5, generator=g)[1][0]  # 2 of 8 Key, 2 of 8 Non-key
    assert hits.sum() == 400 * 4
    assert (hits > 400 * 0.25 * 0.6).all() and (hits < 400 * 0.25 * 1.4).all()  # about 1/4 each


def test_schedule():
    s = KeyShareSchedule()
    assert [s(e) for e in range(0, 60, 5)] == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5, 0.5, 0.5]
    assert KeyShareSchedule(start=0.2, step=0.15, every=2, stop=0.6)(7) == 0.6
    with pytest.raises(CaptumSiftError, match="every"):
        KeyShareSchedule(every=0)
    with pytest.raises(CaptumSiftError, match="epoch"):
        s(-1)


def test_bad_input():
    x = _tokens()
    with pytest.raises(CaptumSiftError, match=r"mask_ratio to be a finite number > 0 and < 1, got 1.0"):
        guided_masking(x, COUNTS, 1.0, 0.5)
    with pytest.raises(CaptumSiftError, match=r"key_share to be a finite number >= 0 and <= 1, got 1.5"):
        guided_masking(x, COUNTS, 0.5, 1.5)
    with pytest.raises(CaptumSiftError, match=r"\(B, N\) = \(4, 16\).*got \(4, 15\)"):
        guided_masking(x, COUNTS[:, :15], 0.5, 0.5)
    with pytest.raises(CaptumSiftError, match=r"x of shape \(B, N, D\)"):
        guided_masking(x[0], COUNTS, 0.5, 0.5)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, in_chans=1)
    mae = MaskedAutoencoder(enc, decoder_dim=32, decoder_depth=1, masking="guided", mask_ratio=0.5)
    images = torch.rand(4, 1, 32, 32)
    counts = torch.tensor([[1, 0, 0, 2], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    optimizer = torch.optim.SGD(mae.parameters(), lr=0.05)

    def loss():
        return mae(images, counts, key_share=0.5, generator=torch.Generator().manual_seed(0))[0]

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()


def test_patchify_and_loss_by_hand():
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, in_chans=1)
    mae = MaskedAutoencoder(enc, decoder_dim=16, decoder_depth=1, norm_pix_loss=False)
    images = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    patches = mae.patchify(images)
    assert patches.shape == (1, 4, 256)
    assert torch.equal(patches[0, 1], images[0, 0, :16, 16:].reshape(-1))
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    pred = torch.zeros_like(patches)
    expected = (patches[0, [0, 3]] ** 2).mean()
    assert torch.allclose(mae.loss(images, pred, mask), expected)
    with pytest.raises(CaptumSiftError, match="class token"):
        MaskedAutoencoder(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1,
                                            class_token=False, global_pool="avg"))  # fmt: skip


# -- noise, generators, empty batches and numbers (issues 25.5, 25.15, 25.16) -------------------------
@pytest.mark.parametrize("masking", ["random", "guided"])
def test_noise_outside_0_1_and_nan_are_refused(masking):
    in_range = r"noise with values in \[0, 1\) \(uniform draws\), got values in "
    x = _tokens()
    noise = torch.rand(2, 4, 16, generator=torch.Generator().manual_seed(0))

    def run(values):
        if masking == "random":
            return random_masking(x, 0.5, noise=values)
        return guided_masking(x, COUNTS, 0.5, 0.5, noise=values)

    x_masked, mask, _ = run(noise)
    assert x_masked.shape == (4, 8, 3) and (mask.sum(1) == 8).all()
    for bad, shown in ((noise * 3 - 1, r"\[-"), (noise + 1.0, r"\[1\."), (noise.clone().fill_(1.0), r"\[1\.0, 1\.0\]")):
        with pytest.raises(CaptumSiftError, match=in_range + shown):
            run(bad)
    nan = noise.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(CaptumSiftError, match=r"noise with values in \[0, 1\).*nan"):
        run(nan)
    with pytest.raises(CaptumSiftError, match="floating-point noise"):
        run((noise * 10).long())


def test_generators_empty_batches_and_numpy_numbers():
    import numpy as np

    x = _tokens()
    with pytest.raises(CaptumSiftError, match="generator to be a torch.Generator or None, got 5"):
        guided_masking(x, COUNTS, 0.5, 0.5, generator=5)
    with pytest.raises(CaptumSiftError, match="generator to be a torch.Generator or None, got 5"):
        random_masking(x, 0.5, generator=5)
    with pytest.raises(CaptumSiftError, match=r"at least one image and one patch token in x .*got \(0, 16, 3\)"):
        guided_masking(x[:0], COUNTS[:0], 0.5, 0.5)
    with pytest.raises(CaptumSiftError, match="start to be a finite number >= 0 and <= 1, got '0.1'"):
        KeyShareSchedule(start="0.1")
    with pytest.raises(CaptumSiftError, match="step to be a finite number, got nan"):
        KeyShareSchedule(step=float("nan"))
    with pytest.raises(CaptumSiftError, match="every to be an int >= 1, got 2.0"):
        KeyShareSchedule(every=2.0)
    with pytest.raises(CaptumSiftError, match="epoch to be an int >= 0, got 1.5"):
        KeyShareSchedule()(1.5)
    schedule = KeyShareSchedule(start=np.float64(0.2), every=np.int64(5))
    assert schedule(np.int64(5)) == 0.3 and KeyShareSchedule()(np.int64(5)) == 0.1
    assert KeyShareSchedule()(torch.tensor(40)) == 0.5
    assert type(schedule.start) is float and type(schedule.every) is int  # JSON-ready (asdict)
    g = torch.Generator().manual_seed(2)
    expected = guided_masking(x, COUNTS, 0.75, 0.5, generator=g)
    g = torch.Generator().manual_seed(2)
    got = guided_masking(x, COUNTS, np.float32(0.75), np.float64(0.5), min_keypoints=np.int64(1), generator=g)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    g = torch.Generator().manual_seed(2)
    got = guided_masking(x, COUNTS, torch.tensor(0.75), torch.tensor(0.5), generator=g)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
