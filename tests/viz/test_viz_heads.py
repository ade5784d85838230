"""plot_theta_heads: one panel per head, θ over the image, NaN hatched (never drawn as 0)."""

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import timm
import torch

from captum_sift import CaptumSiftError
from captum_sift.theta import patch_theta_maps
from captum_sift.viz import plot_theta_heads

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_every_head_is_a_panel_of_its_theta_with_nan_hatched():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    theta = torch.tensor([[0.2, 0.4, math.nan, 0.6], [0.5, 0.5, 0.3, 0.9], [0.0, 0.7, 0.1, 0.35]])
    fig = plot_theta_heads(image, theta, (2, 2), layer=5, heads=[4, 0, 2], ncols=2)
    panels = [ax for ax in fig.axes if ax.get_images()][:3]
    assert [ax.get_title() for ax in panels] == ["head 4", "head 0", "head 2"]
    for ax, row in zip(panels, theta, strict=True):
        under, heat = ax.get_images()
        np.testing.assert_allclose(under.get_array(), image.permute(1, 2, 0).numpy())
        drawn = heat.get_array()
        np.testing.assert_array_equal(drawn.filled(np.nan), row.view(2, 2).double().numpy())
        assert heat.get_clim() == pytest.approx((0.0, 0.9))  # one scale: the figure's least and greatest θ
    assert bool(panels[0].get_images()[1].get_array().mask[1, 0])  # the NaN patch is masked, not 0
    assert heat.cmap.get_bad()[3] == 0.0  # and masked patches are transparent: the image shows through
    hatched = [[(p.get_x(), p.get_y()) for p in ax.patches if p.get_hatch()] for ax in panels]
    assert hatched == [[(0.0, 16.0)], [], []]  # the NaN patch (row 1, column 0), hatched; no other
    assert "layer 5" in fig._suptitle.get_text() and "1 hatched patch" in fig._suptitle.get_text()


def test_the_maps_of_a_model_layer_drawn_without_an_image():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_heads=3).eval()
    counts = torch.tensor([[2, 0, 1, 0]])
    maps = patch_theta_maps(model, torch.rand(1, 3, 32, 32) * 2 - 1, counts)
    fig = plot_theta_heads(None, maps[0, 1], (2, 2), layer=1)
    panels = [ax for ax in fig.axes if ax.get_images()][:3]
    for head, ax in enumerate(panels):
        np.testing.assert_array_equal(ax.get_images()[0].get_array().filled(np.nan), maps[0, 1, head].view(2, 2))


def test_bad_arguments_are_refused():
    theta = torch.rand(2, 4)
    with pytest.raises(CaptumSiftError, match=r"expected theta of shape \(heads >= 1, 4\) for a 2x2 grid"):
        plot_theta_heads(None, torch.rand(2, 6), (2, 2))
    with pytest.raises(CaptumSiftError, match=r"expected theta of shape \(heads, N\)"):
        plot_theta_heads(None, torch.rand(1, 2, 4), (2, 2))
    with pytest.raises(CaptumSiftError, match="expected 2 head indices"):
        plot_theta_heads(None, theta, (2, 2), heads=[1])
    with pytest.raises(CaptumSiftError, match="divisible into the 2x2 grid"):
        plot_theta_heads(torch.rand(3, 33, 32), theta, (2, 2))
    with pytest.raises(CaptumSiftError, match="got Inf"):
        plot_theta_heads(None, torch.tensor([[0.1, math.inf, 0.2, 0.3]]), (2, 2))
