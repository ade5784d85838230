"""Mask figures: the drawn pixels of a masked patch, accuracy curves from the table, the spurious patches."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.masking import MaskingTable
from captum_sift.viz import plot_mask_curve, plot_mask_grid, plot_spurious, plot_spurious_positions

matplotlib.use("Agg")

SCORES = torch.tensor([4.0, 3.0, 2.0, 1.0])  # patch 0 the most relevant, patch 3 the least


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _drawn(ax, x: float, y: float) -> np.ndarray:
    """The RGBA bytes the Agg canvas shows at data point (x, y) of ``ax``."""
    fig = ax.figure
    fig.canvas.draw()
    buffer = np.asarray(fig.canvas.buffer_rgba())
    col, row = ax.transData.transform((x, y))
    return buffer[int(round(buffer.shape[0] - row)), int(round(col))]


def test_mask_grid_shows_the_fill_where_masked_and_the_image_elsewhere():
    image = torch.full((1, 32, 32), 0.2)
    fig = plot_mask_grid(image, SCORES, 16, ratios=(0.25, 0.5), fill=0.5)
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_title() for ax in fig.axes] == ["Top 25%", "Top 50%", "Bottom 25%", "Bottom 50%"]
    for (row, col), masked in {(0, 0): [0], (0, 1): [0, 1], (1, 0): [3], (1, 1): [2, 3]}.items():
        shown = axes[row, col].get_images()[0].get_array()
        expected = np.full((32, 32), 0.2, dtype=np.float32)
        for j in masked:
            expected[(j // 2) * 16 : (j // 2 + 1) * 16, (j % 2) * 16 : (j % 2 + 1) * 16] = 0.5
        np.testing.assert_array_equal(shown, expected)
    # the canvas: mid-gray in the masked patch (top-left), dark gray in the others (8-bit, +-1 for rounding)
    np.testing.assert_allclose(_drawn(axes[0, 0], 8, 8), [0.5 * 255] * 3 + [255], atol=1)
    np.testing.assert_allclose(_drawn(axes[0, 0], 24, 24), [0.2 * 255] * 3 + [255], atol=1)


def test_mask_grid_fills_in_the_model_space_and_drops_as_transparent():
    image = torch.full((3, 32, 32), 0.2)
    fig = plot_mask_grid(image, SCORES, 16, ratios=(0.25,), fill=2.0, mean=[0.5] * 3, std=[0.25] * 3)
    shown = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(shown[:16, :16], 1.0)  # 2.0 * 0.25 + 0.5: white as the model saw it
    np.testing.assert_allclose(shown[16:, :], 0.2)
    fig = plot_mask_grid(image, SCORES, 16, ratios=(0.25,), fill="drop")
    shown = fig.axes[0].get_images()[0].get_array()
    assert shown.shape == (32, 32, 4)
    np.testing.assert_array_equal(shown[:16, :16, 3], 0.0)  # the dropped patch is transparent
    np.testing.assert_array_equal(shown[16:, :, 3], 1.0)
    assert tuple(_drawn(fig.axes[0], 8, 8)) == (255, 255, 255, 255)  # the figure's white background
    np.testing.assert_allclose(_drawn(fig.axes[0], 24, 24), [0.2 * 255] * 3 + [255], atol=1)
    with pytest.raises(CaptumSiftError, match="expected mean and std with one value per channel"):
        plot_mask_grid(image, SCORES, 16, mean=[0.5, 0.5])


def _table() -> MaskingTable:
    table = MaskingTable(baseline_correct=6, total=10)
    base = torch.tensor([True] * 6 + [False] * 4)
    for mode, ratio, correct in (("top", 0.5, 2), ("top", 0.1, 4), ("bottom", 0.1, 6), ("bottom", 0.5, 5)):
        table.add(mode, ratio, torch.arange(10) < correct, base)
    return table


def test_mask_curve_draws_the_table():
    table = _table()
    ax = plot_mask_curve(table)
    baseline, top, bottom = ax.get_lines()
    assert list(baseline.get_ydata()) == [0.6, 0.6]
    np.testing.assert_array_equal(top.get_xdata(), [0.1, 0.5])  # sorted by ratio
    np.testing.assert_array_equal(top.get_ydata(), [0.4, 0.2])
    np.testing.assert_array_equal(bottom.get_ydata(), [0.6, 0.5])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["unmasked", "top", "bottom"]
    assert len(ax.collections) == 2  # one 95 % band per mode
    fig = plot_mask_grid(torch.rand(1, 32, 32), SCORES, 16, ratios=(0.1, 0.5), table=table)
    assert fig.axes[0].get_title() == "Top 10%\nacc 0.400" and fig.axes[3].get_title() == "Bottom 50%\nacc 0.500"
    assert fig._suptitle.get_text() == "unmasked accuracy 0.600 (n = 10)"


def test_spurious_outlines_key_patches_and_flags_low_theta():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = torch.tensor([[0.9, 0.3, 0.2, 0.8], [0.1, 0.6, 0.7, 0.4]])
    counts = torch.tensor([[2, 1, 0, 0], [1, 1, 0, 3]])
    fig = plot_spurious(images, scores, counts, 16, ncols=2)
    first, second = fig.axes
    red = [p.get_xy() for p in first.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert red == [(15.5, -0.5)] and len(first.patches) == 2  # patch 1 spurious, patch 0 Key; 2 has no keypoint
    assert [t.get_text() for t in first.texts] == ["0.30"]
    assert [t.get_text() for t in second.texts] == ["0.10", "0.40"]
    assert first.get_title() == "image 0: 1 spurious of 2 Key" and second.get_title() == "image 1: 2 spurious of 3 Key"
    np.testing.assert_allclose(first.get_images()[0].get_array(), images[0].permute(1, 2, 0).numpy())


def test_spurious_positions_is_the_share_of_key_images():
    class Report:
        grid_size = (2, 2)
        num_images = 4
        positions = {"key": torch.tensor([4, 2, 0, 1]), "spurious": torch.tensor([1, 2, 0, 0])}

    ax = plot_spurious_positions(Report())
    np.testing.assert_array_equal(ax.get_images()[0].get_array().filled(np.nan), [[0.25, 1.0], [np.nan, 0.0]])
    Report.positions = None
    with pytest.raises(CaptumSiftError, match="expected a report with position counts"):
        plot_spurious_positions(Report())
