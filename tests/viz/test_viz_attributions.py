"""Attribution overlays: one panel per image, Captum's heat map over the image."""

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.viz import overlay

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_overlay_one_panel_per_image_with_its_title():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    attributions = torch.zeros_like(images)
    attributions[:, :, :16, :16] = 1.0
    fig = overlay(images, attributions, titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4 and not fig.axes[3].axison
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    heat = fig.axes[0].get_images()[-1].get_array()  # the heat map drawn over the image
    assert float(heat[:16, :16].min()) > float(heat[16:, 16:].max())


def test_overlay_refuses_what_it_cannot_draw():
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(CaptumSiftError, match=r"expected attributions of the images' shape \(2, 3, 32, 32\)"):
        overlay(images, torch.zeros(2, 1, 32, 32))
    bad = torch.zeros_like(images)
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(CaptumSiftError, match="expected finite attributions to draw, got 1 NaN or Inf values"):
        overlay(images, bad)
