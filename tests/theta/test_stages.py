"""find_stages: a peak at the last layer, the bootstrap confidence, reports read back, damaged files, figures."""

import json

import matplotlib
import pytest
import timm
import torch
from test_analysis import TABLE_KK, _curve_report

from captum_sift import CaptumSiftError, analyze, count_keypoints, find_stages, viz
from captum_sift.cli.folder import stage_line
from captum_sift.data import sample_images
from captum_sift.theta.report import InterrelationReport
from captum_sift.theta.stages import split_theta_kk

matplotlib.use("Agg")

# a rise that levels off: the mean curve peaks at layer 8 (smoothed), one layer before the last, by a hair
LEVELS_OFF = [0.5, 0.5, 0.5, 0.55, 0.6, 0.65, 0.7, 0.72, 0.74, 0.728]


def _noisy(shape, n, sd, seed):
    """n per-image curves scattered around ``shape`` whose mean is exactly ``shape``."""
    shape = torch.tensor(shape, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    images = shape + sd * torch.randn(n, shape.numel(), generator=generator, dtype=shape.dtype)
    return images - images.mean(0) + shape


def _report(images):
    return _curve_report(images.mean(0).tolist(), image_curves=images)


@pytest.fixture(scope="module")
def table_report():
    """The DINOv2 table of the stage issue, as 84 images scattered around it."""
    return _report(_noisy(TABLE_KK, 84, 0.05, seed=2))


def test_a_curve_still_rising_at_the_last_layer_has_no_coach_stage():
    assert split_theta_kk(torch.linspace(0.3, 0.6, 12)) == (1, 11)  # the peak is the last layer
    images = torch.linspace(0.3, 0.6, 12, dtype=torch.float64) + 0.02 * torch.randn(
        60, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    stages = find_stages(_report(images))
    assert not stages.clear and stages.coach == [] and stages.capture[-1] == 11
    assert stages.verdict.startswith("no clear stages: no Coach stage: θ_KK still rising at the last layer (11")
    assert stages.boundaries == (stages.capture[0], None)
    assert stages.confidence["coach_start"] == 1.0  # every resample agrees: no Coach
    info = json.loads(json.dumps(stages.to_dict(), allow_nan=True))
    assert info["coach"] == [] and "Coach []" in stage_line(info) and "NO CLEAR STAGES" in stage_line(info)
    ax = viz.plot_stages(_report(images), stages)
    assert "no Coach stage" in ax.get_title() and len(ax.patches) == 2  # Retrieval and Capture bands only
    ax.figure.canvas.draw()
    title, page = ax.title.get_window_extent(), ax.figure.bbox
    assert page.x0 <= title.x0 and title.x1 <= page.x1 and title.y1 <= page.y1  # the whole title is on the page


def test_coach_confidence_counts_resamples_that_peak_at_the_last_layer():
    images = _noisy(LEVELS_OFF, 40, 0.1, seed=0)
    stages = find_stages(_report(images))
    assert stages.capture == [3, 4, 5, 6, 7, 8] and stages.coach == [9]
    # the bootstrap by hand: 200 resamples of the 40 images, seed 0, where does the smoothed peak land?
    generator = torch.Generator().manual_seed(0)
    ends = [split_theta_kk(images[torch.randint(0, 40, (40,), generator=generator)].mean(0))[1] for _ in range(200)]
    at_last = sum(end == 9 for end in ends)
    assert at_last > 50  # many resamples put the peak at the last layer: no Coach there
    assert stages.confidence["coach_start"] == sum(end == 8 for end in ends) / 200 < 0.5
    assert not stages.clear and "boundary confidence" in stages.verdict


def test_the_dinov2_table_keeps_clear_stages_under_image_noise(table_report):
    stages = find_stages(table_report)
    assert stages.clear and stages.verdict == "clear stages", stages.verdict
    assert (stages.retrieval, stages.capture, stages.coach) == ([0, 1], [2, 3, 4, 5, 6, 7], [8, 9, 10, 11])
    assert stages.confidence["capture_start"] >= 0.9 and 0.5 <= stages.confidence["coach_start"] < 1.0


def test_image_index_orders_the_bootstrap(table_report):
    """Curves gathered in another order, with their image index, give the same confidence."""
    base = table_report.with_image_index(list(range(84)))
    order = torch.randperm(84, generator=torch.Generator().manual_seed(1))
    shuffled = InterrelationReport(
        **{**base.__dict__, "curves": {n: v[order] for n, v in base.curves.items()}, "extra": {}}
    )
    plain = InterrelationReport(**{**shuffled.__dict__, "curves": {n: shuffled.curves[n] for n in ("kk", "focus")}})
    assert find_stages(shuffled).confidence == find_stages(table_report).confidence
    assert find_stages(plain).confidence != find_stages(table_report).confidence  # order matters without it
    halves = [InterrelationReport(**{**base.__dict__, "num_images": 42, "curves": {n: v[order[i::2]] for n, v in
                                     base.curves.items()}}) for i in (0, 1)]  # fmt: skip
    merged = halves[1].merge(halves[0])
    assert torch.equal(merged.curves["image"].sort().values, torch.arange(84))
    assert find_stages(merged).confidence == find_stages(table_report).confidence
    with pytest.raises(CaptumSiftError, match="unique image indices"):
        table_report.with_image_index([0] * 84)
    with pytest.raises(CaptumSiftError, match=r"image index of shape \(84,\)"):
        table_report.with_image_index([0, 1])


def test_reports_read_back_keep_the_verdict_or_say_why_not(table_report, tmp_path):
    stages = find_stages(table_report)
    table_report.save_json(tmp_path / "r.json")
    back = find_stages(InterrelationReport.load_json(tmp_path / "r.json"))
    assert back.to_dict() == stages.to_dict() and back.clear
    indexed = table_report.with_image_index(list(range(100, 184)))
    indexed.save_json(tmp_path / "i.json", per_image=False)
    loaded = InterrelationReport.load_json(tmp_path / "i.json")
    assert torch.equal(loaded.curves["image"], torch.arange(100, 184))
    assert find_stages(loaded).to_dict() == stages.to_dict()
    table_report.save_csv(tmp_path / "r.csv")
    from_csv = find_stages(InterrelationReport.load_csv(tmp_path / "r.csv"))  # a CSV keeps sums, not images
    assert (from_csv.retrieval, from_csv.capture, from_csv.coach) == (stages.retrieval, stages.capture, stages.coach)
    assert from_csv.confidence == {"capture_start": None, "coach_start": None} and not from_csv.clear
    assert "keeps only sums of its 84 images, no per-image curves" in from_csv.verdict
    assert "fewer than 2 images" not in from_csv.verdict


@pytest.fixture(scope="module")
def analysed():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4).eval()
    pixels = sample_images(["astronaut", "coffee", "chelsea"], size=64)
    return analyze(model, pixels, count_keypoints(pixels, 16), image_space="pixel")


def _damaged(report, tmp_path, change):
    data = report.to_dict()
    change(data)
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(data))
    return path


def _set(*keys, value):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["per_image"]["kk"].pop(), r"per-image 'kk' of shape \(3, 4, 3\), got \(2, 4, 3\)"),
        (lambda d: d["per_image"]["query_attention"][0].pop(), r"'query_attention' to be nested lists of numbers"),
        (lambda d: d["per_image"]["kk"][0][0].__setitem__(0, 5.0), r"per-image 'kk' in \[0, 1\] or NaN, got 5.0"),
        (lambda d: d["per_image"]["patch_theta"][1][2].__setitem__(3, -0.5), r"'patch_theta' in \[0, 1\]"),
        (lambda d: d["per_image"]["query_patch"].__setitem__(0, 16), r"'query_patch' to be ints in \[0, 15\]"),
        (lambda d: d["per_image"]["keypoint_counts"][0].__setitem__(0, 1.5), r"'keypoint_counts' to be ints"),
        (lambda d: d["curves"]["kk"][0].__setitem__(1, 5.0), r"'kk' curves in \[0, 1\] or NaN, got 5.0"),
        (lambda d: d["curves"]["kk"].pop(), r"'kk' curves of shape \(3, 4\), got \(2, 4\)"),
        (lambda d: d["sums"]["kk"][0].__setitem__(0, 1e300), r"finite sums of 'kk' in \[0, 1 x count\], got 1e\+300"),
        (lambda d: d["sums"]["focus"][0].__setitem__(0, -1.0), r"finite sums of 'focus'"),
        (lambda d: d["counts"]["nk"][0].__setitem__(0, 2.5), r"counts of 'nk' to be ints, got torch.float32"),
        (lambda d: d["counts"]["nk"][0].__setitem__(0, -1), r"counts of 'nk' to be ints in \[0, num_images=3\]"),
        (lambda d: d["counts"]["kk"][0].__setitem__(0, 10**30), r"counts of 'kk' to be nested lists of ints"),
        (_set("num_images", value=3.0), r"num_images to be an int >= 0, got 3.0"),
        (_set("num_heads", value=True), r"num_heads to be an int >= 1, got True"),
        (_set("layers", value=[0, 2, 1, 3]), r"layers to be increasing ints >= 0, got \[0, 2, 1, 3\]"),
        (_set("grid_size", value=[4, 0]), r"grid_size\[1\] to be an int >= 1, got 0"),
        (_set("settings", value=[["gamma", 1.0]]), r"'settings' to be a dict, got list"),
    ],
)
def test_load_json_names_what_is_wrong(analysed, tmp_path, change, message):
    with pytest.raises(CaptumSiftError, match=message):
        InterrelationReport.load_json(_damaged(analysed, tmp_path, change))


def test_damaged_files_are_refused_with_a_reason(analysed, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CaptumSiftError, match="nested too deeply"):
        InterrelationReport.load_json(deep)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(analysed.to_dict()).replace('"num_heads": 3', '"num_heads": 1e400'))
    with pytest.raises(CaptumSiftError, match="num_heads to be an int >= 1, got inf"):
        InterrelationReport.load_json(huge)
    nested = [0.5]
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(CaptumSiftError, match="nested too deeply"):
        InterrelationReport.from_dict({**analysed.to_dict(), "per_image": {"kk": [nested]}})
    analysed.save_csv(tmp_path / "r.csv")
    text = (tmp_path / "r.csv").read_text()
    first_sum = text.splitlines()[1].split(",")[11]  # sum_kk of layer 0, head 0
    (tmp_path / "inf.csv").write_text(text.replace(first_sum, "1e400", 1))
    with pytest.raises(CaptumSiftError, match="finite sums of 'kk'"):
        InterrelationReport.load_csv(tmp_path / "inf.csv")


def test_stage_figure_has_integer_ticks_and_a_legend_clear_of_the_curves(analysed):
    stages = find_stages(analysed)
    ax = viz.plot_stages(analysed, stages)
    fig = ax.figure
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks == [0, 1, 2, 3]
    legend = ax.get_legend().get_window_extent()
    points = [line.get_transform().transform(line.get_xydata()) for a in fig.axes for line in a.get_lines()]
    for xy in points:  # every data point, the last layer's included, is outside the legend
        assert not any(legend.contains(x, y) for x, y in xy)
    renderer = fig.canvas.get_renderer()
    assert legend.y1 < ax.get_window_extent(renderer).y0  # below the axes
    assert legend.y0 >= fig.bbox.y0 and legend.x0 >= fig.bbox.x0 and legend.x1 <= fig.bbox.x1  # inside the figure


def test_spurious_theta_labels_are_readable_and_fit_their_patch():
    images = sample_images(["astronaut", "coffee"], size=224)
    scores = torch.full((2, 196), 0.8)
    scores[:, ::7] = 0.42  # 28 spurious patches per image
    counts = torch.ones(2, 196, dtype=torch.long)
    fig = viz.plot_spurious(images, scores, counts, 16)
    fig.canvas.draw()
    labels = [t for ax in fig.axes for t in ax.texts if t.get_text() == "0.42"]
    assert len(labels) == 2 * 28
    ax = fig.axes[0]
    patch_width = ax.transData.transform((16, 0))[0] - ax.transData.transform((0, 0))[0]
    for label in labels:
        assert label.get_fontsize() >= 7
        assert label.get_window_extent().width <= patch_width
