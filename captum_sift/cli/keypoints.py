"""``captum-sift keypoints``: SIFT keypoint counts per patch on sample photos (Fig. 3)."""

from __future__ import annotations

import csv
import io
import json
import time

import matplotlib.pyplot as plt

from .. import viz
from .._io import write_text_atomic
from ..data import SAMPLE_PHOTOS, check_memory, sample_images
from ..keypoints import detect_keypoints, keypoints_to_counts
from .options import KeypointsOptions
from .runner import prepare_out, release_lock

__all__ = ["run_keypoints"]


def run_keypoints(options: KeypointsOptions) -> None:
    """keypoints.png, counts.csv and summary.json of the photos in --out; one line per photo on stdout."""
    names = list(options.photos or SAMPLE_PHOTOS)
    size = options.img_size
    # the photos in float32 and SIFT's scale space (about 8 float images per input image, the first octave doubled)
    check_memory(
        len(names) * size * size * 4 * (3 + 8 * 4), f"{len(names)} photos at --img-size {size}", options.device
    )
    lock = prepare_out(options.out)
    try:
        _write_keypoints(options, names)
    finally:
        release_lock(lock)


def _write_keypoints(options: KeypointsOptions, names: list[str]) -> None:
    out, patch = options.out, options.patch_size
    images = sample_images(names, size=options.img_size).to(options.device)
    start = time.perf_counter()
    keypoints = detect_keypoints(images, backend=options.backend)
    seconds = time.perf_counter() - start
    counts = keypoints_to_counts(keypoints, tuple(images.shape[2:]), patch).cpu()
    fig = viz.plot_keypoints_grid(images.cpu(), [k.cpu() for k in keypoints], patch, titles=names)
    fig.savefig(out / "keypoints.png", dpi=130)
    plt.close(fig)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "row", "col", "count"])
    for b, name in enumerate(names):
        for row in range(counts.shape[1]):
            for col in range(counts.shape[2]):
                writer.writerow([name, row, col, int(counts[b, row, col])])
    write_text_atomic(out / "counts.csv", buffer.getvalue())
    key_share = (counts > 0).float().mean(dim=(1, 2))
    summary = {
        "images": names,
        "img_size": options.img_size,
        "patch_size": patch,
        "backend": options.backend,
        "keypoints": [int(k.shape[0]) for k in keypoints],
        "key_patch_share": [round(float(s), 4) for s in key_share],
        "seconds": round(seconds, 3),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    for name, k, share in zip(names, summary["keypoints"], summary["key_patch_share"], strict=True):
        print(f"{name:>22s}: {k:4d} keypoints, {share:6.1%} of patches are Key")
    print(f"wrote {out / 'keypoints.png'}, {out / 'counts.csv'}, {out / 'summary.json'}")
