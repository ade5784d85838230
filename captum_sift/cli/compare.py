"""``captum-sift compare``: θ next to other attribution methods on faithfulness metrics -> table and figures."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import torch

from .. import viz
from ..data.masks import load_mask, mask_file, masks_fingerprint
from ..errors import CaptumSiftError
from ..faithfulness import ComparisonTable, compare, patch_attribution, patch_masks
from ..faithfulness.methods import explain_with
from ..masking import read_logits, write_rows_csv
from ..vit import eval_mode
from ..vit.inputs import Batch
from .folder import versions, write_index, write_json
from .options import CompareOptions
from .runner import Job, Run, execute

__all__ = ["run_compare"]


def run_compare(options: CompareOptions) -> None:
    """Attribution methods side by side (:func:`captum_sift.faithfulness.compare.compare`), gathered over ranks."""
    execute(options, _job)


def _job(run: Run) -> Job:
    options: CompareOptions = run.options  # type: ignore[assignment]
    total = TableTotal()
    fill = options.fill_value
    if options.masks is not None:
        files = [mask_file(run.source.files[i], run.source.root, options.masks) for b in run.batches for i in b]
        missing = [f"{run.source.files[i]} -> {m}" for b in run.batches for i in b
                   if not (m := mask_file(run.source.files[i], run.source.root, options.masks)).is_file()]  # fmt: skip
        if missing:
            raise CaptumSiftError(f"no mask file for {len(missing)} of the images (--masks {options.masks}; "
                                  f"image -> expected mask): {'; '.join(missing[:3])}")  # fmt: skip
        run.settings["masks_fingerprint"] = masks_fingerprint(files)  # a resumed run must read the same masks

    def step(images: torch.Tensor, _labels: torch.Tensor, read: list[int]) -> None:
        batch = Batch.build(run.vit, images, "pixel")  # checked once: the targets, the methods and θ's keypoints
        targets = _predicted(run, batch, f"the batch from image {read[0]} (its predicted classes)")
        masks = None if options.masks is None else _patch_masks(run, batch, read).to(images.device)
        part = compare(run.vit, batch, targets, options.methods, image_space="pixel", steps=options.steps,
                       fill=fill, quantus_metrics=options.quantus, ig_steps=options.ig_steps, masks=masks,
                       road=options.road, batch_size=len(images), progress=False)  # fmt: skip
        total.add(part)

    return Job(total, step, lambda skipped: write_compare(run, total.table, skipped), "compared")


def _patch_masks(run: Run, batch: Batch, read: list[int]) -> torch.Tensor:
    """The patch masks (B, N) of the images read, each from its file (an error names the file)."""
    out = []
    for i in read:
        image = run.source.files[i]
        path = mask_file(image, run.source.root, run.options.masks)  # type: ignore[attr-defined]
        mask = load_mask(path, image, run.source.size)
        try:
            out.append(patch_masks(mask[None], 1, batch.grid, run.vit.patch_size)[0])
        except CaptumSiftError as exc:
            raise CaptumSiftError(f"the mask {path}: {exc}") from exc
    return torch.stack(out)


def _predicted(run: Run, batch: Batch, what: str) -> torch.Tensor:
    """The classes the model predicts for a batch: what each method explains."""
    with torch.no_grad(), eval_mode(run.vit.model):
        logits = run.vit.logits(batch.model_input)
    return read_logits(logits, logits.shape[0], what).argmax(dim=1)


class TableTotal:
    """The running :class:`ComparisonTable` of one rank, as the runner's accumulator."""

    def __init__(self) -> None:
        self.table = ComparisonTable()

    def add(self, part: ComparisonTable) -> None:
        self.table = self.table.merge(part)

    @property
    def num_images(self) -> int:
        first = next(iter(self.table.values.values()), {})
        return len(first.get("deletion_auc", []))

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.table.load_state_dict(state["table"])

    def all_reduce(self, device: torch.device) -> None:
        """Every rank's table merged (every rank gets the whole)."""
        self.table.all_reduce(device)


def write_compare(run: Run, table: ComparisonTable, skipped: list[list[str]]) -> None:
    """compare.csv, compare.json, the figures and index.html; the table on stdout."""
    out = run.out
    rows = table.rows()
    write_rows_csv(out / "compare.csv", rows)
    n_images = next(iter(table.curves.values()))["n"]
    figures = _draw_figures(run, table)
    # "images" of the settings counts the data source; the table holds the images compared (--limit, skipped files)
    shown = {("images_in_data" if k == "images" else k): v for k, v in run.settings.items()}
    document = {"settings": {"images_compared": n_images, **shown}, "versions": versions(), "num_images": n_images,
                "rows": rows, "skipped_files": skipped, "table": str(table), "warnings": run.all_warnings(),
                "curves": table.curves, "data_files": "compare.json, compare.csv"}  # fmt: skip
    write_json(out / "compare.json", document)
    write_index(out, "captum-sift compare", document, figures)
    print(table)
    print(f"wrote {out}/" + ", ".join(["compare.csv", "compare.json", *figures, "index.html"]))


def _draw_figures(run: Run, table: ComparisonTable) -> dict[str, str]:
    """The curves, the randomisation check and the overlays in --out; -> {file name: caption}."""
    out, figures = run.out, {}
    for kind in ("deletion", "insertion"):
        viz.plot_comparison_curves(table, kind).savefig(out / f"{kind}.png", dpi=110)
        figures[f"{kind}.png"] = f"{kind} curve of every method (AUC in compare.csv)"
    sanity = viz.plot_randomisation_check(table)
    if sanity is not None:
        sanity.savefig(out / "sanity.png", dpi=110)
        figures["sanity.png"] = "does each method's attribution change when the model's weights are randomised?"
    examples = run.first_images(4).to(run.device)
    if examples.shape[0]:
        batch = Batch.build(run.vit, examples, "pixel")
        targets = _predicted(run, batch, "the overlay images")
        scores = {method: patch_attribution(explain_with(method, run.vit, batch.model_input, targets,
                                                         ig_steps=run.options.ig_steps, pixels=batch.pixels),
                                            run.vit.patch_size).detach().cpu()
                  for method in table.values}  # fmt: skip
        viz.plot_method_overlays(examples, scores, batch.grid).savefig(out / "overlays.png", dpi=90)
        figures["overlays.png"] = "every method's per-patch relevance on the same images (one row per method)"
    plt.close("all")
    return figures
