"""captum_sift.compare_attributions, and its deprecated name captum_sift.evaluate."""

import inspect

import pytest
import torch

import captum_sift
from captum_sift.faithfulness import compare


def _tiny():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, embed_dim=16,
                              num_heads=2, num_classes=3).eval()  # fmt: skip
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, images, torch.tensor([0, 2])


def test_compare_attributions_is_the_faithfulness_comparison():
    assert captum_sift.compare_attributions is compare
    assert "compare_attributions" in captum_sift.__all__


def test_evaluate_warns_with_the_new_name_and_gives_the_same_table():
    model, images, labels = _tiny()
    kwargs = {"methods": ("rollout", "random"), "image_space": "pixel", "steps": 2, "quantus_metrics": False,
              "timing_rounds": 0, "progress": False}  # fmt: skip
    with pytest.warns(FutureWarning, match="evaluate is deprecated .* use captum_sift.compare_attributions"):
        old = captum_sift.evaluate(model, images, labels, **kwargs)
    new = captum_sift.compare_attributions(model, images, labels, **kwargs)
    assert old.state_dict() == new.state_dict() and old.values["rollout"]["deletion_auc"]
    assert inspect.signature(captum_sift.evaluate) == inspect.signature(compare)
