"""What ``captum-sift analyze`` and ``captum-sift mask-eval`` do: model, data, loop, outputs.

One process or many (``torchrun``): each rank takes every world-th image,
checkpoints its partial sums every few batches (``--resume`` continues from
them and ends with exactly the numbers of an uninterrupted run), the sums are
reduced in float64 across ranks, and rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from ._dist import all_reduce_sum, barrier, init_from_env
from .errors import CaptumSiftError
from .report import nan_to_none


# -- model and data -------------------------------------------------------------------
def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CaptumSiftError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CaptumSiftError(f"cannot read checkpoint {path} with weights_only=True: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CaptumSiftError(f"expected a state dict in {path}, got {type(state).__name__}")
    return state


def load_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The model the options name, and a description of it."""
    import timm

    from .data import create_default_architecture, default_model

    if args.model is None and args.checkpoint is None:
        return default_model(), "embedded default: ViT trained on Fashion-MNIST"
    state = _load_state(args.checkpoint) if args.checkpoint else None
    if args.model is None:
        model, name = create_default_architecture(), "default architecture"
    else:
        kwargs: dict[str, Any] = {}
        if args.img_size:
            kwargs["img_size"] = args.img_size
        if state is not None and isinstance(state.get("head.weight"), torch.Tensor):
            kwargs["num_classes"] = state["head.weight"].shape[0]
        try:
            with torch.random.fork_rng():  # the same random weights in every process and run
                torch.manual_seed(0)
                model = timm.create_model(args.model, pretrained=False, **kwargs)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CaptumSiftError(f"cannot create timm model {args.model!r}: {exc}") from exc
        name = args.model
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise CaptumSiftError(
                f"checkpoint {args.checkpoint} does not fit {name}: {' '.join(first[:3])[:400]}"
            ) from exc
        name += f" + {args.checkpoint}"
    elif args.model is not None:
        name += " (random weights, seed 0: no --checkpoint)"
    return model.eval(), name


@dataclass
class _InMemory:
    images: torch.Tensor  # (N, C, S, S) pixels in [0, 1]
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def load(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[tuple[str, str]]]:
        idx = torch.tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx], list(indices), []


def load_data(args: argparse.Namespace, model: nn.Module) -> tuple[Any, str]:
    """The data source the options name (lazy for folders), and a description."""
    from .attention import _blocks
    from .data import DEFAULT_IMG_SIZE, ImageFolder, default_dataset

    _blocks(model)  # a clear error for a model that is not a ViT
    channels = int(getattr(getattr(model.patch_embed, "proj", None), "in_channels", 3))
    size = args.img_size or int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
    if args.images is not None:
        return ImageFolder(args.images, size, channels), f"image folder {args.images}"
    images, labels = default_dataset(full=args.data == "fashion-mnist-full")
    if channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if size != DEFAULT_IMG_SIZE:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 255).round() / 255
    name = "Fashion-MNIST test set (10,000)" if args.data == "fashion-mnist-full" else "embedded Fashion-MNIST (1,000)"
    return _InMemory(images.contiguous(), labels), name


@dataclass
class Run:
    args: argparse.Namespace
    device: torch.device
    rank: int
    world: int
    model: nn.Module
    model_name: str
    source: Any
    data_name: str
    batches: list[list[int]]

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(args: argparse.Namespace) -> Run:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaptumSiftError("--device cuda asked for, but CUDA is not available")
    for name in ("limit", "batch_size", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CaptumSiftError(f"expected --{name.replace('_', '-')} >= 1, got {value}")
    rank, world = init_from_env(device)
    model, model_name = load_model(args)
    model = model.to(device)
    source, data_name = load_data(args, model)
    indices = list(range(len(source)))[: args.limit]
    shard = indices[rank::world]  # every image on exactly one rank
    batches = [shard[i : i + args.batch_size] for i in range(0, len(shard), args.batch_size)]
    return Run(args, device, rank, world, model, model_name, source, data_name, batches)


# -- checkpoints ----------------------------------------------------------------------
def _partial_path(run: Run) -> Path:
    return run.args.out / f".partial-{run.args.command}-rank{run.rank}-of-{run.world}.json"


def _save_partial(run: Run, state: dict[str, Any]) -> None:
    path = _partial_path(run)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic: an interrupted write never leaves half a checkpoint


def _load_partial(run: Run, settings: dict[str, Any]) -> dict[str, Any] | None:
    path = _partial_path(run)
    if not run.args.resume or not path.exists():
        return None
    state = json.loads(path.read_text())
    if state["settings"] != settings:
        raise CaptumSiftError(f"--resume: {path} was written with other settings: {state['settings']} != {settings}")
    return state


def _settings(run: Run, extra: dict[str, Any]) -> dict[str, Any]:
    a = run.args
    return {
        "model": run.model_name, "data": run.data_name, "images": len(run.source), "limit": a.limit,
        "batch_size": a.batch_size, "gamma": a.gamma, "weighted": not a.unweighted, "backend": a.backend,
        "world_size": run.world, **extra,
    }  # fmt: skip


def _versions() -> dict[str, str]:
    import captum
    import kornia
    import timm

    return {
        "captum_sift": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "captum": captum.__version__, "kornia": kornia.__version__, "python": platform.python_version(),
    }  # fmt: skip


def _gather_skipped(skipped: list[list[str]]) -> list[list[str]]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        everything: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everything, skipped)
        return [item for part in everything for item in part]
    return skipped


def _progress(run: Run, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=run.args.quiet or not run.main)


# -- analyze -------------------------------------------------------------------------
def run_analyze(args: argparse.Namespace) -> None:
    from .analysis import analyze
    from .report import STORED, InterrelationReport

    run = setup(args)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = _settings(run, {})
    partial = _load_partial(run, settings)
    total = InterrelationReport.from_dict(partial["report"]) if partial and partial["report"] else None
    done, skipped = (partial["batches_done"], partial["skipped"]) if partial else (0, [])
    bar = _progress(run, len(run.batches), done, "analyze")
    for b in range(done, len(run.batches)):
        images, _, _, bad = run.source.load(run.batches[b])
        skipped += [list(s) for s in bad]
        if images.shape[0]:
            part = analyze(run.model, images.to(run.device), gamma=args.gamma, weighted=not args.unweighted,
                           image_space="pixel", keypoint_backend=args.backend).without_per_image()  # fmt: skip
            total = part if total is None else total.merge(part)
        bar.update(1)
        if (b + 1) % args.checkpoint_every == 0 or b + 1 == len(run.batches):
            report_dict = total.to_dict(per_image=False) if total is not None else None
            _save_partial(run, {"settings": settings, "batches_done": b + 1, "skipped": skipped, "report": report_dict})
    bar.close()
    if total is None:  # this rank read no image: it still takes part in the reduction
        total = _empty_report(run)
    for name in STORED:  # float64 sums and int64 counts over ranks
        total.sums[name] = all_reduce_sum(total.sums[name], run.device)
        total.counts[name] = all_reduce_sum(total.counts[name], run.device)
    total.num_images = int(all_reduce_sum(torch.tensor([total.num_images]), run.device)[0])
    if total.num_images == 0:  # the same on every rank, so no rank is left waiting
        raise CaptumSiftError("no image could be analysed (all were unreadable or the selection is empty)")
    skipped = _gather_skipped(skipped)
    if run.main:
        _write_analysis(run, total, settings, skipped)
    barrier()


def _empty_report(run: Run):
    """A report of no image with this run's layers, heads and grid (zero sums and counts)."""
    from .attention import _blocks, patch_size_of
    from .report import STORED, InterrelationReport

    blocks = _blocks(run.model)
    shape = (len(blocks), int(blocks[0].attn.num_heads))
    side = run.source.size // patch_size_of(run.model)
    return InterrelationReport(
        layers=list(range(len(blocks))), num_heads=shape[1], grid_size=(side, side), settings={}, num_images=0,
        sums={n: torch.zeros(shape, dtype=torch.float64) for n in STORED},
        counts={n: torch.zeros(shape, dtype=torch.long) for n in STORED},
    )  # fmt: skip


def _first_images(run: Run, n: int = 8) -> torch.Tensor:
    first = run.batches[0] if run.batches else []
    images, *_ = run.source.load(first[:n])
    return images


def _write_analysis(run: Run, report, settings: dict[str, Any], skipped: list[list[str]]) -> None:
    import matplotlib.pyplot as plt

    from . import viz
    from .analysis import analyze
    from .attention import patch_size_of
    from .keypoints import detect_keypoints
    from .report import QUANTITIES
    from .stages import find_stages

    out = run.args.out
    patch = patch_size_of(run.model)
    figures = {}
    try:
        stages = find_stages(report)
        stage_info: dict[str, Any] = {n: stages[n] for n in ("retrieval", "capture", "coach")}
        stage_info |= {"rule": stages.rule, "gap": stages.gap, "focus": stages.focus}
    except CaptumSiftError as exc:
        stages, stage_info = None, {"error": str(exc)}
    examples = _first_images(run)
    if examples.shape[0]:
        keypoints = detect_keypoints(examples, backend=run.args.backend)
        fig = viz.plot_keypoints_grid(examples, keypoints, patch)
        fig.savefig(out / "keypoints.png", dpi=100)
        figures["keypoints.png"] = "SIFT keypoints and the count of every Key patch (Fig. 3)"
    viz.plot_interrelation(report).figure.savefig(out / "interrelation.png", dpi=110)
    figures["interrelation.png"] = "θ_KK and θ_NK per layer: heads as points, head mean, trend (Fig. 5)"
    viz.plot_focus_index(report).figure.savefig(out / "focus_index.png", dpi=110)
    figures["focus_index.png"] = "attention focus index per layer; larger = broader attention (Fig. 6)"
    if stages is not None:
        viz.plot_stages(report, stages).figure.savefig(out / "stages.png", dpi=110)
        figures["stages.png"] = "Retrieval / Capture / Coach stages over the four classes (Fig. 7a)"
        if examples.shape[0]:
            sample = analyze(run.model, examples[:1].to(run.device), gamma=run.args.gamma,
                             weighted=not run.args.unweighted, image_space="pixel",
                             keypoint_backend=run.args.backend)  # fmt: skip
            viz.plot_stage_heatmaps(sample, stages, image=examples[0]).savefig(out / "heatmaps.png", dpi=110)
            figures["heatmaps.png"] = "attention of one query patch at a layer of each stage (Fig. 7b)"
    plt.close("all")
    data = report.to_dict(per_image=False)
    document = {
        "settings": settings, "versions": _versions(), "num_images": report.num_images,
        "layers": report.layers, "num_heads": report.num_heads, "grid_size": list(report.grid_size),
        "means": data["means"], "image_counts": {n: report.image_count(n).tolist() for n in ("kk", "nk", "focus")},
        "layer_means": {n: report.layer_mean(n).tolist() for n in QUANTITIES},
        "sums": data["sums"], "counts": data["counts"], "stages": stage_info, "skipped_files": skipped,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(nan_to_none(document), indent=1))
    report.save_csv(out / "per_layer_head.csv")
    _write_index(out, "captum-sift analyze", document, figures)
    print(f"analysed {report.num_images} images; stages {stage_info.get('retrieval')}, "
          f"{stage_info.get('capture')}, {stage_info.get('coach')}; wrote {out}/index.html")  # fmt: skip


def _write_index(out: Path, title: str, document: dict[str, Any], figures: dict[str, str]) -> None:
    settings = document["settings"]
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items()
    )
    summary = ""
    if "stages" in document and "error" not in document["stages"]:
        st = document["stages"]
        summary = (f"<p>Stages: Retrieval {st['retrieval']}, Capture {st['capture']}, Coach {st['coach']}.</p>"
                   f"<p>{html.escape(st['rule'])}</p>")  # fmt: skip
    elif "stages" in document:
        summary = f"<p>No stages: {html.escape(document['stages']['error'])}</p>"
    if "table" in document:
        summary += "<pre>" + html.escape(document["table"]) + "</pre>"
    skipped = document.get("skipped_files") or []
    if skipped:
        items = "".join(f"<li>{html.escape(p)}: {html.escape(r)}</li>" for p, r in skipped)
        summary += f"<p>Skipped {len(skipped)} unreadable file(s):</p><ul>{items}</ul>"
    figs = "".join(
        f'<figure><img src="{name}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for name, c in figures.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head>
<body><h1>{title}</h1><p>{document.get("num_images", "")} images.</p>{summary}
<table>{rows}</table>{figs}
<p>Data: report.json, {"mask_eval.csv" if "table" in document else "per_layer_head.csv"}.</p></body></html>
"""
    (out / "index.html").write_text(page)


# -- mask-eval -----------------------------------------------------------------------
def run_mask_eval(args: argparse.Namespace) -> None:
    from .masking import MaskingTable, check_plan, evaluate_batch

    args.ratios, modes = check_plan(args.ratios, [m.strip() for m in args.modes.split(",") if m.strip()], "--modes")
    fill: Any = args.fill if args.fill in ("mean", "blur", "drop") else _number(args.fill)
    run = setup(args)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = _settings(run, {"ratios": args.ratios, "modes": modes, "fill": args.fill, "seed": args.seed})
    partial = _load_partial(run, settings)
    table = MaskingTable(settings=settings)
    done, skipped = 0, []
    if partial:
        table.baseline_correct, table.total = partial["baseline_correct"], partial["total"]
        table.cells = {(m, float(r)): c for m, r, c in partial["cells"]}
        done, skipped = partial["batches_done"], partial["skipped"]
    score_kwargs = {"gamma": args.gamma, "weighted": not args.unweighted, "image_space": "pixel",
                    "keypoint_backend": args.backend}  # fmt: skip
    from .attention import _eval_mode

    bar = _progress(run, len(run.batches), done, "mask-eval")
    with _eval_mode(run.model):
        for b in range(done, len(run.batches)):
            images, labels, read, bad = run.source.load(run.batches[b])
            skipped += [list(s) for s in bad]
            if bool((labels < 0).any()):
                raise CaptumSiftError("mask-eval needs labels: put the images in one sub-folder per class")
            if images.shape[0]:
                evaluate_batch(table, run.model, images.to(run.device), labels, torch.tensor(read), ratios=args.ratios,
                               modes=modes, fill=fill, seed=args.seed, score_kwargs=score_kwargs)  # fmt: skip
            bar.update(1)
            if (b + 1) % args.checkpoint_every == 0 or b + 1 == len(run.batches):
                cells = [[m, r, c] for (m, r), c in table.cells.items()]
                _save_partial(run, {"settings": settings, "batches_done": b + 1, "skipped": skipped, "cells": cells,
                                    "baseline_correct": table.baseline_correct, "total": table.total})  # fmt: skip
    bar.close()
    _reduce_table(table, modes, args.ratios, run.device)
    if table.total == 0:  # checked on every rank after the reduction, so no rank is left waiting
        raise CaptumSiftError("no image could be evaluated (all were unreadable or the selection is empty)")
    skipped = _gather_skipped(skipped)
    if run.main:
        _write_mask_eval(run, table, settings, skipped)
    barrier()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise CaptumSiftError(f"expected --fill to be a number, mean, blur or drop, got {text!r}") from exc


def _reduce_table(table, modes: list[str], ratios: list[float], device: torch.device) -> None:
    keys = [(m, float(r)) for m in modes for r in ratios]
    fields = ("correct", "total", "worse", "better")
    flat = [table.baseline_correct, table.total]
    flat += [table.cells.get(k, dict.fromkeys(fields, 0))[f] for k in keys for f in fields]
    summed = all_reduce_sum(torch.tensor(flat, dtype=torch.long), device).tolist()
    table.baseline_correct, table.total = summed[0], summed[1]
    for i, key in enumerate(keys):
        table.cells[key] = dict(zip(fields, summed[2 + 4 * i : 6 + 4 * i], strict=True))


def _write_mask_eval(run: Run, table, settings: dict[str, Any], skipped: list[list[str]]) -> None:
    import matplotlib.pyplot as plt

    from . import viz
    from .attention import patch_size_of
    from .masking import patch_scores

    out = run.args.out
    table.save_csv(out / "mask_eval.csv")
    viz.plot_mask_curve(table).figure.savefig(out / "mask_eval.png", dpi=110)
    figures = {"mask_eval.png": "accuracy vs mask ratio per mode, 95 % bands, unmasked baseline"}
    examples = _first_images(run, 1)
    if examples.shape[0]:
        scores = patch_scores(run.model, examples.to(run.device), image_space="pixel", gamma=run.args.gamma,
                              weighted=not run.args.unweighted, keypoint_backend=run.args.backend)  # fmt: skip
        ratios = tuple(float(r) for r in run.args.ratios)
        viz.plot_mask_grid(examples[0], scores[0].cpu(), patch_size_of(run.model), ratios, table=table).savefig(
            out / "masked_examples.png", dpi=110
        )
        figures["masked_examples.png"] = "one image masked Top (row 1) and Bottom (row 2) at each ratio (Fig. 8)"
    plt.close("all")
    document = {"settings": settings, "versions": _versions(), "num_images": table.total, "rows": table.rows(),
                "skipped_files": skipped, "table": str(table)}  # fmt: skip
    (out / "report.json").write_text(json.dumps(nan_to_none(document), indent=1))
    _write_index(out, "captum-sift mask-eval", document, figures)
    print(table)
    print(f"wrote {out}/mask_eval.csv, mask_eval.png, masked_examples.png, index.html")


# -- pretrain ------------------------------------------------------------------------
def pretrain_data(
    data: str, img_size: int, limit: int | None
) -> tuple[str, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(name, pre-training images, their labels, probe test set), pixels in [0, 1] at ``img_size``."""
    from .data import default_dataset, fashion_mnist_to_model_size, load_fashion_mnist

    if data == "embedded":
        images, labels = default_dataset()
        if img_size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images, size=(img_size, img_size), mode="bilinear")
            images = (images.clamp(0, 1) * 255).round() / 255
        return "fmnist-embedded", images[:800], labels[:800], (images[800:], labels[800:])
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    train_x, train_y = train_x[:limit], train_y[:limit]
    test = (fashion_mnist_to_model_size(test_x[:2000], img_size), torch.as_tensor(test_y[:2000]).long())
    return (
        f"fmnist-train{len(train_x)}",
        fashion_mnist_to_model_size(train_x, img_size),
        torch.as_tensor(train_y).long(),
        test,
    )


def run_pretrain(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .mae.masking import KeyShareSchedule
    from .mae.pretrain import PretrainConfig, cached_keypoint_counts, pretrain

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaptumSiftError("--device cuda asked for, but CUDA is not available")
    if args.img_size % args.patch_size:
        raise CaptumSiftError(
            f"expected --img-size a multiple of --patch-size, got {args.img_size} and {args.patch_size}"
        )
    if args.epochs < 1 or args.batch_size < 1:
        raise CaptumSiftError(f"expected --epochs and --batch-size >= 1, got {args.epochs} and {args.batch_size}")
    rank, _ = init_from_env(device)
    name, images, labels, probe_test = pretrain_data(args.data, args.img_size, args.limit)
    cache = args.cache_dir if args.cache_dir is not None else args.out
    counts = cached_keypoint_counts(images, args.patch_size, cache, name)
    config = PretrainConfig(
        masking=args.masking, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, mask_ratio=args.mask_ratio,
        schedule=asdict(KeyShareSchedule(every=args.schedule_every)), seed=args.seed, probe_every=args.probe_every,
        img_size=args.img_size, patch_size=args.patch_size,
    )  # fmt: skip
    history = pretrain(config, images, counts, (images[:5000], labels[:5000]), probe_test, args.out,
                       resume=args.resume, device=device, progress=not args.quiet)  # fmt: skip
    if rank == 0:
        key_share = float((counts > 0).float().mean())
        (args.out / "config.json").write_text(json.dumps({**asdict(config), "data": name, "key_patch_share": key_share,
                                                          "versions": _versions()}, indent=1))  # fmt: skip
        for row in history:
            print(f"epoch {row['epoch']:3d}  β {row['key_share']:.2f}  loss {row['loss']:.4f}  "
                  f"probe accuracy {row['probe_accuracy']:.4f}")  # fmt: skip
        print(f"wrote {args.out}/history.csv, checkpoint.pt, config.json")
    barrier()
