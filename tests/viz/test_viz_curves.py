"""Per-layer figures: the plotted data is the report's head means, per head and per layer; stage bands and heat maps."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.theta.stages import Stages
from captum_sift.viz import plot_focus_index, plot_interrelation, plot_stage_heatmaps, plot_stages

matplotlib.use("Agg")

NAMES = ("kk", "kn", "nk", "nn", "focus", "focus_normalized")


class Report:
    """What the figures read of an InterrelationReport: 4 layers x 2 heads, a 2 x 2 grid, one image."""

    def __init__(self, per_image: bool = True):
        g = torch.Generator().manual_seed(0)
        self.layers = [0, 1, 2, 3]
        self.num_heads = 2
        self.num_images = 1
        self.settings = {"weighted": True}
        self.grid_size = (2, 2)
        self.has_per_image = per_image
        self.query_patch = torch.tensor([3])
        self.query_attention = torch.rand(1, 4, 4, generator=g)
        self.means = {n: torch.rand(4, 2, generator=g, dtype=torch.float64) for n in NAMES}

    def mean(self, name):
        return self.means[name]

    def layer_mean(self, name):
        return self.means[name].mean(dim=1)


def _stages(coach=(3,), clear=True):
    return Stages(retrieval=[0], capture=[1, 2], coach=list(coach), layers=[0, 1, 2, 3], gap=[0.0] * 4,
                  focus=[0.0] * 4, rule="theta_kk", confidence={"capture_start": 0.4}, clear=clear)  # fmt: skip


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_interrelation_draws_every_head_and_the_head_means():
    report = Report()
    ax = plot_interrelation(report)
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(solid) == 2 and len(dotted) == 2  # KK and NK: head mean and trend
    for line, name in zip(solid, ("kk", "nk"), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), report.layers)
        np.testing.assert_array_equal(line.get_ydata(), report.layer_mean(name).numpy())
    assert len(ax.collections) == 4  # one scatter per head and class
    for i, (name, head) in enumerate((n, h) for n in ("kk", "nk") for h in range(2)):
        np.testing.assert_array_equal(ax.collections[i].get_offsets()[:, 1], report.mean(name)[:, head].numpy())
    # a cubic trend through 4 points passes through them
    np.testing.assert_allclose(dotted[0].get_ydata()[[0, -1]], report.layer_mean("kk").numpy()[[0, -1]], atol=1e-9)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["KK (Key → Key)", "NK (Non-key → Key)"]
    assert ax.get_ylabel() == "θ (weighted)"


def test_interrelation_draws_each_control_dashed_beside_the_real_classes():
    report = Report()
    report.controls = ("uniform", "locality")
    g = torch.Generator().manual_seed(1)
    report.means |= {f"{q}_{c}": torch.rand(4, 2, generator=g, dtype=torch.float64)
                     for c in report.controls for q in ("kk", "nk")}  # fmt: skip
    ax = plot_interrelation(report)
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 4
    for line, (c, q) in zip(dashed, [(c, q) for c in report.controls for q in ("kk", "nk")], strict=True):
        np.testing.assert_array_equal(line.get_ydata(), report.layer_mean(f"{q}_{c}").numpy())
        assert line.get_label() == f"{q.upper()}, {c} control"
        assert line.get_color() == {"kk": "tab:blue", "nk": "tab:orange"}[q]  # the colour of its real class
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    np.testing.assert_array_equal(solid[0].get_ydata(), report.layer_mean("kk").numpy())


def test_focus_index_draws_the_chosen_index():
    report = Report()
    for normalized, name, label in ((False, "focus", "focus index"), (True, "focus_normalized", "focus / log N")):
        ax = plot_focus_index(report, normalized=normalized)
        np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), report.layer_mean(name).numpy())
        assert ax.get_ylabel() == label + " (larger = broader)"


def test_stages_draw_four_classes_the_focus_and_one_band_per_stage():
    report = Report()
    ax = plot_stages(report, _stages())
    lines = ax.get_lines()
    assert len(lines) == 4
    for line, name in zip(lines, ("kk", "kn", "nk", "nn"), strict=True):
        np.testing.assert_array_equal(line.get_ydata(), report.layer_mean(name).numpy())
    twin = next(other for other in ax.figure.axes if other is not ax)
    np.testing.assert_array_equal(twin.get_lines()[0].get_ydata(), report.layer_mean("focus").numpy())
    bands = [p.get_x() for p in ax.patches], [p.get_x() + p.get_width() for p in ax.patches]
    assert bands == ([-0.5, 0.5, 2.5], [0.5, 2.5, 3.5])  # Retrieval 0, Capture 1-2, Coach 3
    assert [t.get_text() for t in ax.texts] == ["Retrieval", "Capture", "Coach"]
    assert ax.get_title() == ""
    ax = plot_stages(report, _stages(coach=(), clear=False))
    assert len(ax.patches) == 2  # no Coach band
    assert ax.get_title().startswith("NO CLEAR STAGES (best split shown; confidence capture_start 0.40)")
    assert ax.get_title().endswith("no Coach stage: θ_KK still rising at the last layer")


def test_stage_heatmaps_show_the_query_attention_at_each_stage():
    report = Report()
    fig = plot_stage_heatmaps(report, _stages())
    assert len(fig.axes) == 4  # three panels and the colour bar
    for ax, layer in zip(fig.axes[:3], (0, 2, 3), strict=True):  # the middle layer of each stage
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), report.query_attention[0, layer].view(2, 2))
        assert ax.get_title().endswith(f"layer {layer}")
        assert ax.patches[0].get_xy() == (0.5, 0.5)  # query patch 3: row 1, column 1
    assert {ax.get_images()[0].get_clim() for ax in fig.axes[:3]} == {
        (0, float(report.query_attention[0, [0, 2, 3]].max()))
    }
    fig = plot_stage_heatmaps(report, _stages(coach=()), image=torch.rand(3, 32, 32))
    assert len(fig.axes[2].get_images()) == 0
    assert "no Coach stage" in fig.axes[2].texts[0].get_text()
    assert fig.axes[0].patches[0].get_xy() == (16.0, 16.0)  # pixel coordinates over the image
    with pytest.raises(CaptumSiftError, match="expected a report with per-image data"):
        plot_stage_heatmaps(Report(per_image=False), _stages())
    with pytest.raises(CaptumSiftError, match=r"expected image_index in \[0, 1\), got 1"):
        plot_stage_heatmaps(report, _stages(), image_index=1)
