"""The ``captum-sift`` command (also ``python -m captum_sift``; runs under ``torchrun`` too).

Sub-commands:
    analyze     the patch-interrelation analysis -> a report folder (JSON, CSV, figures, index.html)
    mask-eval   Top / Bottom / Random masking "as prompts" -> accuracy table and figures
    pretrain    MAE pre-training with random or guided curriculum masking (SPEC §8)
    keypoints   SIFT keypoint counts per patch on sample photos (Fig. 3)

With no model or data option, analyze and mask-eval use the embedded default:
a small ViT trained on Fashion-MNIST and 1,000 test images shipped in the package.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import CaptumSiftError

_DESCRIPTION = "The captum-sift command: explain Vision Transformers with SIFT keypoints and attention."


def _add_model_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--model", default=None,
                   help="a timm name, torchvision:NAME or hf:PATH_OR_ID (a save_pretrained folder; offline). "
                   "Random weights unless --weights or --pretrained (a warning says so)")  # fmt: skip
    p.add_argument("--weights", "--checkpoint", dest="weights", default=None, type=Path,
                   help="state dict for --model (or the default architecture); old alias: --checkpoint")  # fmt: skip
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="the library's own pretrained weights (timm, torchvision; needs them cached offline)",
    )
    p.add_argument(
        "--model-kwargs",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="constructor options, e.g. class_token=False global_pool=avg reg_tokens=4",
    )
    p.add_argument("--mean", type=float, nargs="+", default=None, help="input mean per channel (default: the model's)")
    p.add_argument("--std", type=float, nargs="+", default=None, help="input std per channel (default: the model's)")
    p.add_argument(
        "--class-map",
        type=Path,
        default=None,
        help="JSON file {sub-folder name: class index} when folder order is not the model's classes",
    )
    p.add_argument("--images", default=None, type=Path, help="image folder (jpg/png/webp, labels from sub-folders)")
    p.add_argument("--data", choices=("embedded", "fashion-mnist-full"), default="embedded",
                   help="data without --images: the 1,000 shipped test images, or Debian's full test set")  # fmt: skip
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gamma", type=float, default=1.0, help="detection-line height (eq. 2)")
    p.add_argument("--unweighted", action="store_true", help="unweighted θ (eq. 3, left)")
    p.add_argument("--backend", choices=("kornia", "opencv"), default="kornia", help="keypoint backend")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--save-every",
        "--checkpoint-every",
        dest="save_every",
        type=int,
        default=5,
        help="save partial sums every N batches (for --resume); --checkpoint-every is an old alias",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captum-sift", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    analyze = sub.add_parser("analyze", help="patch-interrelation analysis -> report folder")
    _add_model_data_options(analyze)
    mask = sub.add_parser("mask-eval", help="Top/Bottom/Random masking accuracy -> table and figures")
    _add_model_data_options(mask)
    mask.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4])
    mask.add_argument(
        "--modes",
        default="top,bottom,random",
        help="comma-separated among top,bottom,random,spurious (spurious: the lowest-θ Key patches, §5.1)",
    )
    mask.add_argument("--fill", default="0.0", help="a number (model space), mean, blur or drop")
    mask.add_argument("--seed", type=int, default=0, help="seed of the random mode")
    cmp = sub.add_parser("compare", help="θ next to other attribution methods on faithfulness metrics")
    _add_model_data_options(cmp)
    cmp.add_argument("--methods", default="theta,rollout,raw_attention,saliency,integrated_gradients,random",
                     help="comma-separated among theta,rollout,raw_attention,saliency,integrated_gradients,"
                     "feature_ablation,gradcam,random")  # fmt: skip
    cmp.add_argument("--steps", type=int, default=8, help="points of the deletion / insertion curves")
    cmp.add_argument(
        "--fill", default="0.0", help="what masked patches become: a number (model space), mean, blur, drop"
    )
    cmp.add_argument("--ig-steps", type=int, default=16, help="IntegratedGradients steps")
    cmp.add_argument("--no-quantus", action="store_true", help="skip Quantus's FaithfulnessCorrelation and MPRT")
    cmp.add_argument("--quick", action="store_true",
                     help="16 images, 4 curve points, 4 IG steps: seconds on 2 idle CPU cores, where all 1,000 "
                     "embedded images take about 10 minutes (hours when other work shares the cores)")  # fmt: skip
    pre = sub.add_parser("pretrain", help="MAE pre-training with random or guided masking (Fig. 9)")
    pre.add_argument("--masking", choices=("guided", "random"), required=True)
    pre.add_argument("--epochs", type=int, default=20)
    pre.add_argument("--out", required=True, type=Path, help="output folder: history.csv, checkpoint.pt")
    pre.add_argument("--data", choices=("embedded", "fashion-mnist-full"), default="embedded",
                     help="embedded: 800 of the shipped images to pre-train and probe, 200 to test the probe; "
                     "fashion-mnist-full: Debian's train set (--limit of them) and 2,000 test images")  # fmt: skip
    pre.add_argument("--limit", type=int, default=10000, help="training images of fashion-mnist-full")
    pre.add_argument("--img-size", type=int, default=112)
    pre.add_argument("--patch-size", type=int, default=16)
    pre.add_argument("--batch-size", type=int, default=128)
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--mask-ratio", type=float, default=0.75)
    pre.add_argument("--schedule-every", type=int, default=10, help="epochs per step of the key share β")
    pre.add_argument("--probe-every", type=int, default=1, help="linear probe every N epochs")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    pre.add_argument("--cache-dir", type=Path, default=None, help="keypoint-count cache (default: --out)")
    pre.add_argument("--device", default="cpu")
    pre.add_argument("--quiet", action="store_true")
    kp = sub.add_parser("keypoints", help="SIFT keypoint counts per patch on sample photos (Fig. 3)")
    kp.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    kp.add_argument("--photos", nargs="+", default=None, help="sample photo names (default: all shipped ones)")
    kp.add_argument("--img-size", type=int, default=224, help="side of the square images (default 224)")
    kp.add_argument("--patch-size", type=int, default=16, help="ViT patch size (default 16)")
    kp.add_argument("--backend", choices=("kornia", "opencv"), default="kornia")
    kp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captum-sift`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "keypoints":
            _run_keypoints(args)
        else:
            from .runs import RunConfig, run_analyze, run_compare, run_mask_eval, run_pretrain

            if args.command == "pretrain":
                run_pretrain(args)
            else:
                if args.command == "compare" and args.quick:
                    args.limit, args.steps, args.ig_steps = min(args.limit or 16, 16), 4, 4
                commands = {"analyze": run_analyze, "mask-eval": run_mask_eval, "compare": run_compare}
                commands[args.command](RunConfig.from_args(args))
    except CaptumSiftError as exc:
        print(f"captum-sift: error: {exc}", file=sys.stderr)
        return 2
    finally:
        from ._dist import finish

        finish()
    return 0


def _run_keypoints(args: argparse.Namespace) -> None:
    import torch

    from ._checks import check_patch_size
    from .data import SAMPLE_PHOTOS, sample_images
    from .keypoints import detect_keypoints, keypoints_to_counts
    from .viz import plot_keypoints_grid

    names = list(args.photos or SAMPLE_PHOTOS)
    images = sample_images(names, size=args.img_size).to(args.device)
    check_patch_size(args.patch_size, args.img_size, args.img_size)
    start = time.perf_counter()
    keypoints = detect_keypoints(images, backend=args.backend)
    seconds = time.perf_counter() - start
    counts = keypoints_to_counts(keypoints, tuple(images.shape[2:]), args.patch_size).cpu()
    args.out.mkdir(parents=True, exist_ok=True)
    fig = plot_keypoints_grid(images.cpu(), [k.cpu() for k in keypoints], args.patch_size, titles=names)
    fig.savefig(args.out / "keypoints.png", dpi=130)
    with open(args.out / "counts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "row", "col", "count"])
        for b, name in enumerate(names):
            for row, col in torch.nonzero(torch.ones_like(counts[b])).tolist():
                writer.writerow([name, row, col, int(counts[b, row, col])])
    key_share = (counts > 0).float().mean(dim=(1, 2))
    summary = {
        "images": names,
        "img_size": args.img_size,
        "patch_size": args.patch_size,
        "backend": args.backend,
        "keypoints": [int(k.shape[0]) for k in keypoints],
        "key_patch_share": [round(float(s), 4) for s in key_share],
        "seconds": round(seconds, 3),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, k, share in zip(names, summary["keypoints"], summary["key_patch_share"], strict=True):
        print(f"{name:>22s}: {k:4d} keypoints, {share:6.1%} of patches are Key")
    print(f"wrote {args.out / 'keypoints.png'}, {args.out / 'counts.csv'}, {args.out / 'summary.json'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
