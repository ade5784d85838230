"""``captum-sift analyze``: the patch-interrelation analysis -> report.json, per_layer_head.csv, figures, index.html."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import torch

from .. import viz
from ..errors import CaptumSiftError
from ..keypoints import detect_keypoints
from ..theta.analysis import analyze, patch_scores_from_report
from ..theta.report import InterrelationReport
from ..theta.report_fields import CONTROL_STORED, QUANTITIES, STORED
from ..theta.stages import find_stages
from .control_lines import control_section
from .folder import stage_line, versions, write_index, write_json
from .heads import draw_theta_heads, heads_layer
from .options import AnalyzeOptions
from .runner import Job, Run, execute

__all__ = ["run_analyze"]


def run_analyze(options: AnalyzeOptions) -> None:
    """The analysis of every image, summed over batches and processes, written by rank 0."""
    execute(options, _job)


def _job(run: Run) -> Job:
    heads_layer(run)  # --heads-layer checked against the model before the first batch
    total = ReportTotal(run)

    def step(images: torch.Tensor, _labels: torch.Tensor, read: list[int]) -> None:
        # the data-set index orders the images for the bootstraps and seeds the shuffled control's draws
        part = analyze(run.vit, images, settings=run.options.analysis, image_space="pixel", image_index=read)
        total.add(part.without_per_image())

    return Job(total, step, lambda skipped: write_analysis(run, total.report, skipped), "analysed")


class ReportTotal:
    """The running :class:`InterrelationReport` of one rank, as the runner's accumulator."""

    def __init__(self, run: Run) -> None:
        self.run, self.report = run, None

    def add(self, part: InterrelationReport) -> None:
        self.report = part if self.report is None else self.report.merge(part)

    @property
    def num_images(self) -> int:
        return self.report.num_images if self.report is not None else 0

    def state_dict(self) -> dict[str, Any]:
        return {"report": self.report.to_dict(per_image=False) if self.report is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        report = InterrelationReport.from_dict(state["report"]) if state["report"] is not None else None
        if report is not None:
            expected = (list(range(self.run.vit.depth)), self.run.vit.num_heads)
            done_images = sum(len(b) for b in self.run.batches[: state["batches_done"]])
            if (report.layers, report.num_heads) != expected or report.num_images > done_images:
                raise CaptumSiftError(
                    f"expected a report of layers and heads {expected} and at most {done_images} images, "
                    f"got {report.layers}, {report.num_heads} and {report.num_images}"
                )
            check_sum_ranges(report)
        self.report = report

    def all_reduce(self, device: torch.device) -> None:
        if self.report is None:  # a rank with no image joins the reduction too
            self.report = empty_report(self.run)
        self.report.all_reduce(device)


def check_sum_ranges(report: InterrelationReport) -> None:
    """Partial sums within what their images can give: θ in [0, 1] and the focus index in [0, log N] per image."""
    patches = report.grid_size[0] * report.grid_size[1]
    for name, high in (("kk", 1.0), ("nk", 1.0), ("focus", math.log(max(patches, 2)))):
        sums, counts = report.sums[name].double(), report.counts[name].double()
        limit = counts * high * (1 + 1e-9) + 1e-9
        if not bool(((sums >= -1e-9) & (sums <= limit)).all()):
            raise CaptumSiftError(f"expected sums of {name!r} in [0, {high:.4g} x images], got up to {sums.max():.4g}")


def empty_report(run: Run) -> InterrelationReport:
    """A report of no image with this run's layers, heads and grid (zero sums and counts)."""
    shape = (run.vit.depth, run.vit.num_heads)
    side = run.source.size // run.vit.patch_size
    controls = CONTROL_STORED if run.options.controls != "none" else ()
    stored = STORED + controls
    return InterrelationReport(
        layers=list(range(run.vit.depth)), num_heads=shape[1], grid_size=(side, side), settings={}, num_images=0,
        sums={n: torch.zeros(shape, dtype=torch.float64) for n in stored},
        counts={n: torch.zeros(shape, dtype=torch.long) for n in stored},
        curves={n: torch.zeros(0, shape[0]) for n in ("kk", "focus", *(("nk", *controls) if controls else ()))},
        positions={n: torch.zeros(side * side, dtype=torch.long) for n in ("key", "spurious")},
    )  # fmt: skip


def write_analysis(run: Run, report: InterrelationReport, skipped: list[list[str]]) -> None:
    """report.json, per_layer_head.csv, the figures and index.html; one line on stdout."""
    try:
        stages = find_stages(report)
        stage_info: dict[str, Any] = stages.to_dict()
    except CaptumSiftError as exc:
        stages, stage_info = None, {"error": str(exc)}
    figures = _draw_figures(run, report, stages)
    data = report.to_dict(per_image=False)
    document = {
        "settings": run.settings, "versions": versions(), "num_images": report.num_images,
        "layers": report.layers, "num_heads": report.num_heads, "grid_size": list(report.grid_size),
        "means": data["means"], "image_counts": {n: report.image_count(n).tolist() for n in ("kk", "nk", "focus")},
        "layer_means": {n: report.layer_mean(n).tolist() for n in QUANTITIES},
        "sums": data["sums"], "counts": data["counts"], "curves": data.get("curves"), "stages": stage_info,
        "controls": control_section(report), "skipped_files": skipped,
        "data_files": "report.json, per_layer_head.csv",
        "warnings": run.all_warnings(),
        "spurious_positions": (
            {n: report.positions[n].view(*report.grid_size).tolist() for n in ("key", "spurious")}
            if report.positions is not None else None
        ),
    }  # fmt: skip
    out = run.out
    write_json(out / "report.json", document)
    report.save_csv(out / "per_layer_head.csv")
    write_index(out, "captum-sift analyze", document, figures)
    print(f"analysed {report.num_images} images; {stage_line(stage_info)}; wrote {out}/index.html")
    for line in (document["controls"] or {}).get("verdicts", []):
        print(line)


def _draw_figures(run: Run, report: InterrelationReport, stages: Any) -> dict[str, str]:
    """The figures of the analysis in --out; -> {file name: caption}."""
    out, patch, theta = run.out, run.vit.patch_size, run.options.theta
    figures = {}
    examples = run.first_images()
    sample = None  # one analysis of the example images serves the heatmaps and the spurious figure
    if examples.shape[0]:
        sample = analyze(run.vit, examples.to(run.device), settings=theta, image_space="pixel")
        keypoints = detect_keypoints(examples, backend=theta.keypoint_backend)
        viz.plot_keypoints_grid(examples, keypoints, patch).savefig(out / "keypoints.png", dpi=100)
        figures["keypoints.png"] = "SIFT keypoints and the count of every Key patch (Fig. 3)"
    viz.plot_interrelation(report).figure.savefig(out / "interrelation.png", dpi=110)
    figures["interrelation.png"] = "θ_KK and θ_NK per layer: heads as points, head mean, trend (Fig. 5)"
    viz.plot_focus_index(report).figure.savefig(out / "focus_index.png", dpi=110)
    figures["focus_index.png"] = "attention focus index per layer; larger = broader attention (Fig. 6)"
    if stages is not None:
        viz.plot_stages(report, stages).figure.savefig(out / "stages.png", dpi=110)
        figures["stages.png"] = "Retrieval / Capture / Coach stages over the four classes (Fig. 7a)"
        if sample is not None:
            fig = viz.plot_stage_heatmaps(sample, stages, image_index=0, image=examples[0])
            fig.savefig(out / "heatmaps.png", dpi=110)
            figures["heatmaps.png"] = "attention of one query patch at a layer of each stage (Fig. 7b)"
    if sample is not None:
        scores = patch_scores_from_report(sample).cpu()
        fig = viz.plot_spurious(examples, scores, sample.keypoint_counts, patch, min_keypoints=theta.min_keypoints)
        fig.savefig(out / "spurious.png", dpi=100)
        figures["spurious.png"] = "spurious patches (§5.1): Key patches whose θ < 0.5, outlined in red"
    if report.positions is not None:
        viz.plot_spurious_positions(report).figure.savefig(out / "spurious_positions.png", dpi=110)
        figures["spurious_positions.png"] = "how often each patch position is flagged spurious among its Key images"
    figures.update(draw_theta_heads(run, report, examples))
    plt.close("all")
    return figures
