"""``captum-sift compare --masks DIR``: a PNG per image at the same relative path, read as the image is."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from captum_sift import CaptumSiftError
from captum_sift.cli.main import main
from captum_sift.data.masks import load_mask, mask_file

pytest.importorskip("quantus")
TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "64", "--batch-size", "2", "--quiet", "--no-quantus",
        "--methods", "rollout,random", "--steps", "2"]  # fmt: skip


def _folder(root, sizes=((64, 96), (80, 64), (64, 64))):
    """Images (W x H) in class folders and their masks: a box over the first patch that survives the crop."""
    images, masks = root / "images", root / "masks"
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        cls = "a" if i % 2 == 0 else "b"
        (images / cls).mkdir(parents=True, exist_ok=True)
        (masks / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / cls / f"img{i}.jpg")
        mask = np.zeros((h, w), dtype=np.uint8)
        top, left = (h - min(w, h)) // 2, (w - min(w, h)) // 2  # the centre crop's corner
        mask[top : top + 16, left : left + 16] = 255
        Image.fromarray(mask).save(masks / cls / f"img{i}.png")
    return images, masks


def test_a_mask_is_resized_and_cropped_as_its_image_is(tmp_path):
    images, masks = _folder(tmp_path)
    image = images / "a" / "img0.jpg"  # 64 x 96: the crop keeps rows 16..80, the mask's box is rows 16..32
    assert mask_file(image, images, masks) == masks / "a" / "img0.png"
    mask = load_mask(mask_file(image, images, masks), image, 64)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[:16, :16] = True
    assert torch.equal(mask, expected)
    half = load_mask(masks / "b" / "img1.png", images / "b" / "img1.jpg", 32)  # 80 x 64 at 32 px: halved
    assert int(half.sum()) == 64 and bool(half[:8, :8].all())


def test_compare_with_masks_adds_the_localisation_rows(tmp_path, capsys):
    images, masks = _folder(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--images", str(images), "--masks", str(masks), *TINY]) == 0
    document = json.loads((out / "compare.json").read_text())
    rows = {(r["method"], r["metric"]): r for r in document["rows"]}
    for method in ("rollout", "random"):
        for metric in ("pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection"):
            assert rows[(method, metric)]["n"] == 3 and 0.0 <= rows[(method, metric)]["mean"] <= 1.0
    assert document["settings"]["masks"] == str(masks) and len(document["settings"]["masks_fingerprint"]) == 64
    assert "pointing_game (higher is better)" in capsys.readouterr().out
    plain = tmp_path / "plain"
    assert main(["compare", "--out", str(plain), "--images", str(images), *TINY]) == 0
    plain_rows = {(r["method"], r["metric"]): r for r in json.loads((plain / "compare.json").read_text())["rows"]}
    timed = {"seconds_per_image", "forwards_per_image"}
    assert {m for _, m in plain_rows} == {"deletion_auc", "insertion_auc"} | timed
    for key, row in plain_rows.items():  # without masks, the numbers are those of the run with them
        assert key[1] in timed or row["mean"] == rows[key]["mean"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"no mask file for 1 of the images .*images/b/img1.jpg -> .*masks/b/img1.png"),
        ("size", r"expected the mask .*masks/b/img1.png to be 80 x 64 px like its image .*img1.jpg, got 40 x 64 px"),
        ("rgb", r"expected a one-channel mask .* got mode RGB in .*masks/b/img1.png"),
        ("empty", r"expected a nonzero pixel in the mask .*masks/b/img1.png"),
        ("speck", r"the mask .*masks/b/img1.png: expected every image's mask to hold at least one patch"),
    ],
)
def test_bad_mask_files_are_refused_naming_the_file(tmp_path, capsys, damage, message):
    images, masks = _folder(tmp_path)
    path = masks / "b" / "img1.png"
    if damage == "missing":
        path.unlink()
    elif damage == "size":
        Image.fromarray(np.full((64, 40), 255, dtype=np.uint8)).save(path)
    elif damage == "rgb":
        Image.fromarray(np.full((64, 80, 3), 255, dtype=np.uint8)).save(path)
    elif damage == "empty":
        Image.fromarray(np.zeros((64, 80), dtype=np.uint8)).save(path)
    else:  # one pixel: inside, but no patch is half covered
        speck = np.zeros((64, 80), dtype=np.uint8)
        speck[30, 40] = 1
        Image.fromarray(speck).save(path)
    assert main(["compare", "--out", str(tmp_path / "cmp"), "--images", str(images), "--masks", str(masks),
                 *TINY]) == 2  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err), err


def test_masks_need_an_image_folder_and_lie_outside_it(tmp_path, capsys):
    images, masks = _folder(tmp_path)
    for args, message in (
        (["--masks", str(masks)], "--masks gives the ground truth of the files of --images; it needs --images"),
        (["--images", str(images), "--masks", str(tmp_path / "nowhere")], "--masks folder not found"),
        (["--images", str(images), "--masks", str(images / "a")], "lies inside --images"),
    ):
        assert main(["compare", "--out", str(tmp_path / "cmp"), *args, *TINY]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(CaptumSiftError, match="no mask for image"):
        load_mask(masks / "zz.png", images / "a" / "img0.jpg", 64)
