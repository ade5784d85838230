"""Masked forwards: the relative-position verdict of token dropping is found once per model."""

import pytest
import timm
import torch

from captum_sift import CaptumSiftError
from captum_sift.masking import logits as masked
from captum_sift.vit.adapter import as_vit


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3)
    return as_vit(model.eval())


def test_check_droppable_walks_the_modules_once_per_model(vit, monkeypatch):
    walks = []
    walk = masked._relative_biases
    monkeypatch.setattr(masked, "_relative_biases", lambda model: walks.append(model) or walk(model))
    monkeypatch.setattr(masked, "_RELATIVE_BIASES", type(masked._RELATIVE_BIASES)())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    selected = torch.tensor([[True, False, False, False], [False, False, True, True]])
    first = masked.masked_logits(vit, images, selected, "drop")  # two groups: two drops
    again = masked.drop_tokens(vit.model, images[:1], selected[:1])  # a new adapter of the same model
    assert walks == [vit.model]
    with torch.no_grad():
        expected = masked.drop_tokens(vit, images[1:], selected[1:])
    torch.testing.assert_close(first[1:], expected, rtol=0, atol=0)
    torch.testing.assert_close(first[:1], again, rtol=0, atol=0)


def test_a_relative_position_bias_is_refused_every_time(monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("vit_relpos_small_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3)
    vit = as_vit(model.eval())
    for _ in range(2):
        with pytest.raises(CaptumSiftError, match="relative position bias over the full token grid"):
            masked.check_droppable(vit)
    assert masked._RELATIVE_BIASES[model]
