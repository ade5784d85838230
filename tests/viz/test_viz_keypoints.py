"""Keypoint figures: the patch grid, one circle per keypoint, the Key patches outlined with their count."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Circle, Rectangle

from captum_sift import CaptumSiftError
from captum_sift.viz import plot_keypoints, plot_keypoints_grid

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image() -> torch.Tensor:
    return torch.linspace(0, 1, 3 * 32 * 32).view(3, 32, 32)


KEYPOINTS = torch.tensor([[3.0, 4.0, 2.0], [20.0, 5.0, 1.5], [21.0, 6.0, 1.0]])  # x, y, sigma


def test_plot_keypoints_draws_the_image_grid_circles_and_key_patches():
    ax = plot_keypoints(_image(), KEYPOINTS, 16)
    np.testing.assert_allclose(ax.get_images()[0].get_array(), _image().permute(1, 2, 0).numpy())
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    assert [(c.center, c.radius) for c in circles] == [((3.0, 4.0), 2.0), ((20.0, 5.0), 1.5), ((21.0, 6.0), 1.0)]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    # patch (row 0, col 0) holds one keypoint, patch (0, 1) two; the others none
    assert sorted(b.get_xy() for b in boxes) == [(-0.5, -0.5), (15.5, -0.5)]
    assert all(b.get_width() == b.get_height() == 16 for b in boxes)
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2"]
    grid = [line for line in ax.get_lines() if line.get_color() == "white"]
    assert len(grid) == 2  # one horizontal and one vertical line between the 2 x 2 patches
    assert ax.get_title() == "3 keypoints, 2/4 Key patches"
    assert ax.get_xlim() == (-0.5, 31.5) and ax.get_ylim() == (31.5, -0.5)


def test_plot_keypoints_without_counts_and_on_given_axes():
    _, ax = plt.subplots()
    assert plot_keypoints(_image()[None], KEYPOINTS[:, :2], 16, ax=ax, show_counts=False, title="mine") is ax
    assert len(ax.texts) == 0 and ax.get_title() == "mine"
    assert [c.radius for c in ax.patches if isinstance(c, Circle)] == [1.5, 1.5, 1.5]  # no sigma: radius 1.5


def test_plot_keypoints_grid_one_panel_per_image():
    images = torch.stack([_image(), _image().flip(-1), _image().flip(-2)])
    keypoints = [KEYPOINTS, KEYPOINTS[:1], torch.zeros(0, 3)]
    fig = plot_keypoints_grid(images, keypoints, 16, titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4 and not fig.axes[3].axison  # 2 x 2 grid, the spare panel switched off
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a: 3 keypoints", "b: 1 keypoints", "c: 0 keypoints"]
    assert [sum(isinstance(p, Circle) for p in ax.patches) for ax in fig.axes[:3]] == [3, 1, 0]
    np.testing.assert_allclose(fig.axes[1].get_images()[0].get_array(), images[1].permute(1, 2, 0).numpy())


def test_keypoint_figures_refuse_bad_input():
    with pytest.raises(CaptumSiftError, match=r"expected one image \(C, H, W\) or \(1, C, H, W\)"):
        plot_keypoints(torch.rand(2, 3, 32, 32), KEYPOINTS, 16)
    with pytest.raises(CaptumSiftError, match=r"expected keypoints of shape \(K, >= 2\), got \(3,\)"):
        plot_keypoints(_image(), torch.zeros(3), 16)
    with pytest.raises(CaptumSiftError, match="expected 2 keypoint tensors"):
        plot_keypoints_grid(torch.rand(2, 3, 32, 32), [KEYPOINTS], 16)
