"""``captum-sift mask-eval``: Top / Bottom / Random masking "as prompts" -> accuracy table and figures."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import torch

from .. import viz
from ..data import ImageFolder
from ..errors import CaptumSiftError
from ..masking import MaskingTable, evaluate_batch, patch_scores
from ..vit import eval_mode
from ..vit.inputs import to_model_and_pixels
from .folder import versions, write_index, write_json
from .options import MaskEvalOptions
from .runner import Job, Run, execute

__all__ = ["run_mask_eval"]


def run_mask_eval(options: MaskEvalOptions) -> None:
    """Accuracy of the model on masked images per mode and ratio, summed over batches and processes."""
    execute(options, _job)


def _job(run: Run) -> Job:
    options: MaskEvalOptions = run.options  # type: ignore[assignment]
    total = TableTotal(MaskingTable(settings=run.settings), options)
    fill = options.fill_value

    def step(images: torch.Tensor, labels: torch.Tensor, read: list[int]) -> None:
        if bool((labels < 0).any()):
            raise CaptumSiftError("mask-eval needs labels: put the images in one sub-folder per class")
        with eval_mode(run.vit.model):
            evaluate_batch(total.table, run.vit, images, labels, torch.tensor(read), ratios=options.ratios,
                           modes=options.modes, fill=fill, seed=options.seed, settings=options.theta,
                           image_space="pixel")  # fmt: skip

    _check_classes(run)
    return Job(total, step, lambda skipped: write_mask_eval(run, total.table, skipped), "evaluated")


class TableTotal:
    """A :class:`MaskingTable` that ``evaluate_batch`` fills in place, as the runner's accumulator."""

    def __init__(self, table: MaskingTable, options: MaskEvalOptions) -> None:
        self.table, self.options = table, options

    @property
    def num_images(self) -> int:
        return self.table.total

    def state_dict(self) -> dict[str, Any]:
        return self.table.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.table.load_state_dict(state, len(self.options.modes) * len(self.options.ratios))

    def all_reduce(self, device: torch.device) -> None:
        self.table.all_reduce(self.options.modes, self.options.ratios, device)


def _check_classes(run: Run) -> None:
    """Folder labels are sub-folder indices: warn when their number differs from the model's outputs."""
    if not isinstance(run.source, ImageFolder) or run.source.class_map is not None:
        return
    with torch.no_grad(), eval_mode(run.vit.model):
        probe = torch.full((1, run.vit.in_chans, run.source.size, run.source.size), 0.5, device=run.device)
        outputs = int(run.vit.logits(to_model_and_pixels(run.vit, probe, "pixel")[0]).shape[1])
    folders = len(run.source.classes)
    if folders != outputs:
        message = (
            f"WARNING: the image folder has {folders} class sub-folders, labelled 0..{folders - 1} in sorted order, "
            f"but the model has {outputs} outputs: accuracy compares folder indices with the model's classes; "
            'pass --class-map FILE.json ({"folder": class index}) if they differ'
        )
        run.warnings.append(message)
        if run.main:
            print(message, flush=True)


def write_mask_eval(run: Run, table: MaskingTable, skipped: list[list[str]]) -> None:
    """mask_eval.csv, report.json, the figures and index.html; the table on stdout."""
    options: MaskEvalOptions = run.options  # type: ignore[assignment]
    out = run.out
    table.save_csv(out / "mask_eval.csv")
    viz.plot_mask_curve(table).figure.savefig(out / "mask_eval.png", dpi=110)
    figures = {"mask_eval.png": "accuracy vs mask ratio per mode, 95 % bands, unmasked baseline"}
    examples = run.first_images(1)
    if examples.shape[0]:
        scores = patch_scores(run.vit, examples.to(run.device), settings=options.theta, image_space="pixel")
        ratios = tuple(float(r) for r in options.ratios)
        viz.plot_mask_grid(examples[0], scores[0].cpu(), run.vit.patch_size, ratios, table=table,
                           fill=options.fill_value, mean=run.vit.mean, std=run.vit.std,
                           ).savefig(out / "masked_examples.png", dpi=110)  # fmt: skip
        figures["masked_examples.png"] = "one image masked Top (row 1) and Bottom (row 2) at each ratio (Fig. 8)"
    plt.close("all")
    document = {"settings": run.settings, "versions": versions(), "num_images": table.total, "rows": table.rows(),
                "skipped_files": skipped, "table": str(table), "warnings": run.all_warnings(),
                "data_files": "report.json, mask_eval.csv"}  # fmt: skip
    write_json(out / "report.json", document)
    write_index(out, "captum-sift mask-eval", document, figures)
    print(table)
    print(f"wrote {out}/mask_eval.csv, mask_eval.png, masked_examples.png, index.html")
