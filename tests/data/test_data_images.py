"""data/: the 8-bit resize, image folders, decoded PIL images, memory checks, numpy numbers."""

import numpy as np
import pytest
import torch
from PIL import Image

from captum_sift import CaptumSiftError
from captum_sift.data import (
    ImageFolder,
    check_memory,
    decode_image,
    fashion_mnist_to_model_size,
    resize_8bit,
    sample_images,
)


def test_resize_8bit_is_bilinear_then_rounded_to_8_bit_steps():
    x = torch.randint(0, 256, (2, 3, 7, 5)).float() / 255
    up = resize_8bit(x, 12)
    expected = torch.nn.functional.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    assert up.shape == (2, 3, 12, 12) and torch.equal(up * 255, (up * 255).round())
    assert torch.allclose(up, expected, atol=0.5 / 255 + 1e-6)
    assert torch.equal(resize_8bit(x, 12, eight_bit=False), expected.clamp(0, 1))
    # one step by hand: 0 and 1 side by side, upsampled to 4 columns: 0, 1/4, 3/4, 1 -> 0, 64, 191, 255
    assert resize_8bit(torch.tensor([[[[0.0, 1.0]]]]), 4)[0, 0, 0].mul(255).tolist() == [0.0, 64.0, 191.0, 255.0]


def test_fashion_mnist_to_model_size_uses_the_8_bit_resize():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert torch.equal(fashion_mnist_to_model_size(images, 56), resize_8bit(images.float().unsqueeze(1) / 255, 56))


def test_image_folder_labels_sizes_and_skipped_files(tmp_path):
    for name, value in (("b/x.png", 200), ("a/y.png", 10), ("a/z.png", 90)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 12), value, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    folder = ImageFolder(tmp_path, 4, channels=1)
    assert folder.classes == ["a", "b"] and len(folder) == 4
    images, labels, read, skipped = folder.load(range(4))
    assert images.shape == (3, 1, 4, 4) and labels.tolist() == [0, 0, 1] and read == [1, 2, 3]
    assert torch.equal(images[:, 0, 0, 0] * 255, torch.tensor([10.0, 90.0, 200.0]))
    assert [p.endswith("broken.png") for p, _ in skipped] == [True]
    mapped = ImageFolder(tmp_path, 4, channels=1, class_map={"a": 7, "b": 2})
    assert mapped.load([3])[1].tolist() == [2]
    with pytest.raises(CaptumSiftError, match=r"missing \['b'\]"):
        ImageFolder(tmp_path, 4, class_map={"a": 0})


def test_decode_image_keeps_16_bit_and_refuses_float():
    sixteen = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert decode_image(sixteen, 1).tolist() == [[[0.0, 1.0]]]
    assert decode_image(Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)), 1).shape == (1, 2, 2)
    with pytest.raises(CaptumSiftError, match="mode F"):
        decode_image(Image.fromarray(np.zeros((2, 2), dtype=np.float32)), 1)


def test_check_memory_names_the_figures():
    check_memory(1, "one byte")
    with pytest.raises(CaptumSiftError, match=r"a planet needs about 1.02e\+03 TiB of memory, .* is free"):
        check_memory(2**50 * 1.0001, "a planet")


def test_numpy_numbers_and_float_images_in_data(image_folder):
    folder = ImageFolder(image_folder, np.int64(32))
    images, labels, read, _ = folder.load([np.int64(0)])
    assert images.shape == (1, 3, 32, 32) and read == [0]
    assert sample_images(["coffee"], size=np.int64(16)).shape == (1, 3, 16, 16)
    pixels = np.linspace(0, 1, 28 * 28).reshape(1, 28, 28)
    x = fashion_mnist_to_model_size(pixels, 28)
    np.testing.assert_allclose(x[0, 0].numpy(), pixels[0], atol=1e-6)  # the same pixels, not zeros
    eight_bit = (pixels * 255).round().astype(np.uint8)
    assert torch.equal(fashion_mnist_to_model_size(eight_bit, 28)[0, 0], torch.from_numpy(eight_bit[0]).float() / 255)
    for bad in (pixels * 2, pixels - 0.5, np.full((1, 28, 28), np.nan), np.full((1, 28, 28), 300)):
        with pytest.raises(CaptumSiftError, match="expected"):
            fashion_mnist_to_model_size(bad, 28)
