"""The ``captum-sift`` command (also ``python -m captum_sift``).

Sub-commands:
    keypoints   count SIFT keypoints per patch on sample photos and write
                an overlay PNG (paper Fig. 3) and a CSV of the counts.
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captum-sift", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kp = sub.add_parser("keypoints", help="SIFT keypoint counts per patch on sample photos (Fig. 3)")
    kp.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    kp.add_argument("--photos", nargs="+", default=None, help="sample photo names (default: all shipped ones)")
    kp.add_argument("--img-size", type=int, default=224, help="side of the square images (default 224)")
    kp.add_argument("--patch-size", type=int, default=16, help="ViT patch size (default 16)")
    kp.add_argument("--backend", choices=("kornia", "opencv"), default="kornia")
    kp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captum-sift`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "keypoints":
            _run_keypoints(args)
    except CaptumSiftError as exc:
        print(f"captum-sift: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
