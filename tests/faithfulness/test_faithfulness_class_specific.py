"""explain() runs the class-specific transformer methods (gradient rollout, AttnLRP) on every family: the numbers
of the attribution classes, for the targets given, with the targets checked."""

import pytest
import torch
from family_models import CLASSES, SIZE, families, timm_vit  # noqa: F401 - fixtures

from captum_sift import CaptumSiftError
from captum_sift.attr import AttnLRP, GradientRollout
from captum_sift.faithfulness import DEFAULT_METHODS, METHODS, explain

CLASSES_OF = {"gradient_rollout": GradientRollout, "attnlrp": AttnLRP}


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(3)
    return torch.randn(2, 3, SIZE, SIZE)


@pytest.mark.parametrize("method", ["gradient_rollout", "attnlrp"])
@pytest.mark.parametrize("family", ["timm", "torchvision", "hf"])
def test_explain_is_the_class_for_the_targets(families, images, method, family):  # noqa: F811
    model, targets = families[family], torch.tensor([1, 4])
    out = explain(method, model, images, targets)
    torch.testing.assert_close(out, CLASSES_OF[method](model).attribute(images, target=targets))
    other = explain(method, model, images, torch.tensor([0, 2]))
    assert (out - other).abs().max() > 1e-4  # class-specific


@pytest.mark.parametrize("method", ["gradient_rollout", "attnlrp"])
def test_targets_are_checked(timm_vit, images, method):  # noqa: F811
    with pytest.raises(CaptumSiftError, match="targets"):
        explain(method, timm_vit, images, torch.tensor([0, CLASSES]))
    with pytest.raises(CaptumSiftError, match="targets"):
        explain(method, timm_vit, images, torch.tensor([0]))


def test_in_the_method_lists():
    assert {"gradient_rollout", "attnlrp"} <= set(DEFAULT_METHODS) <= set(METHODS)
