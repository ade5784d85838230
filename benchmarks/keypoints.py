"""Fidelity and speed of the keypoint backends (issue: SIFT keypoint counts).

Prints, measured in this one run on this machine:

* fidelity against OpenCV's ``cv2.SIFT_create()`` on real photographs
  (scikit-image samples + scikit-learn's two photos, 224x224, patch 16):
  median per-image Spearman rho of the 196 per-patch counts and median share
  of patches whose Key/Non-key label (t >= 1) agrees; for our ``"kornia"``
  backend and for kornia's stock ``SIFTFeatureScaleSpace`` detector;
* speed on a batch of 32 such images, counts included: our time / OpenCV time
  (OpenCV over the same 32 images, detect + count, same process), and kornia's
  stock detector for comparison;
* the blur the detector uses vs ``kornia.filters.gaussian_blur2d``;
* the same on the embedded Fashion-MNIST (per-patch counts equal, Key/Non-key
  agreement);
* time per pixel of one photo at 224 to 1344 px (``SCALING``);
* one thread each (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``),
  ours / OpenCV for the embedded Fashion-MNIST (112 px, batch 256), photos
  at 224 px (batch 32), one 224-px photo and photos at 448 px (batch 4):
  the lines ``ONE THREAD ...: RATIO``, for the default detector (native
  kernels) and for its eager-torch fallback (``CAPTUM_SIFT_NATIVE=0``), and
  the time the native kernels take to build on a machine's first use;
* torch's default thread count vs one thread, on an idle CPU and with one
  core kept busy by another process (``SHARED CPU``);
* the wall time of ``captum-sift analyze`` on the embedded default;
* with ``--device cuda`` (when available) the GPU time per image.

Usage: python benchmarks/keypoints.py [--quick] [--repeats N] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from _timing import best_time

from captum_sift import count_keypoints
from captum_sift.data import SAMPLE_PHOTOS, SKLEARN_PHOTOS, default_dataset, sample_images
from captum_sift.keypoints import keypoints_to_counts
from captum_sift.keypoints._scale_space import _blur, gaussian_kernel1d


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def agreement(counts: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Median per-image Spearman rho and median Key/Non-key agreement."""
    rhos, agree = [], []
    for a, b in zip(counts.flatten(1).cpu().numpy(), ref.flatten(1).cpu().numpy(), strict=True):
        rhos.append(spearman(a, b))
        agree.append(float(np.mean((a > 0) == (b > 0))))
    return statistics.median(rhos), statistics.median(agree)


def kornia_stock_counts(images: torch.Tensor, patch: int, top_k: list[int] | None = None) -> torch.Tensor:
    """Counts from kornia's stock SIFT detector (no contrast or edge test: top responses)."""
    import kornia
    from kornia.feature import SIFTFeatureScaleSpace, get_laf_center

    detector = SIFTFeatureScaleSpace(num_features=8000, upright=True).detector.to(images.device)
    gray = kornia.color.rgb_to_grayscale(images)
    with torch.no_grad():
        lafs, responses = detector(gray)
    centres = get_laf_center(lafs)  # (B, K, 2) x, y
    kps = []
    for b in range(images.shape[0]):
        order = responses[b].abs().argsort(descending=True)
        keep = order[responses[b].abs()[order] > 0]
        if top_k is not None:
            keep = keep[: top_k[b]]
        kps.append(centres[b, keep])
    return keypoints_to_counts(kps, tuple(images.shape[2:]), patch)


def _native(enabled: bool | str | None) -> None:
    """Switch the detector's native kernels (read at every call); a str or None restores a value."""
    value = ("1" if enabled else "0") if isinstance(enabled, bool) else enabled
    if value is None:
        os.environ.pop("CAPTUM_SIFT_NATIVE", None)
    else:
        os.environ["CAPTUM_SIFT_NATIVE"] = value


def native_build_time() -> None:
    """Seconds to compile the native kernels (a machine's first use) and to load them (every later process)."""
    code = "import time; from captum_sift.keypoints import _native as n; t = time.perf_counter(); " \
        "assert n.library() is not None; print(time.perf_counter() - t)"  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "CAPTUM_SIFT_CACHE": cache, "CAPTUM_SIFT_NATIVE": "1"}
        build, load = (float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                            capture_output=True, text=True).stdout) for _ in range(2))  # fmt: skip
    print(f"native kernels: built in {build:.2f} s on first use on a machine, loaded in {load * 1e3:.0f} ms after")


def single_thread_table(photos: torch.Tensor, patch: int, repeats: int, quick: bool) -> None:
    """ours / OpenCV per configuration, both on one thread (counts included on both sides).

    ``ours`` is the default detector (native kernels); ``eager`` its
    eager-torch fallback (``CAPTUM_SIFT_NATIVE=0``: no C compiler).
    """
    import cv2

    threads, native_setting = torch.get_num_threads(), os.environ.get("CAPTUM_SIFT_NATIVE")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        fmnist, _ = default_dataset(limit=32 if quick else 256)
        rows = {
            f"embedded Fashion-MNIST, 112 px, batch {len(fmnist)}": fmnist,
            f"photos, 224 px, batch {8 if quick else 32}": photos[torch.arange(8 if quick else 32) % len(photos)],
            "one 224-px photo (batch 1)": photos[:1],
            "photos at 448 px, batch 4": sample_images(list(SAMPLE_PHOTOS[:4]), size=448),
        }
        for name, images in rows.items():
            images = images.contiguous()
            t_cv = best_time(lambda images=images: count_keypoints(images, patch, backend="opencv"), repeats)
            _native(True)
            t_ours = best_time(lambda images=images: count_keypoints(images, patch), repeats)
            ours = count_keypoints(images, patch)
            _native(False)
            t_eager = best_time(lambda images=images: count_keypoints(images, patch), repeats)
            same = float((count_keypoints(images, patch) == ours).float().mean())
            print(f"ONE THREAD {name}: ours {t_ours * 1e3:.0f} ms, OpenCV {t_cv * 1e3:.0f} ms, "
                  f"RATIO {t_ours / t_cv:.2f}; eager fallback {t_eager * 1e3:.0f} ms, RATIO {t_eager / t_cv:.2f} "
                  f"(per-patch counts equal to ours: {same:.4f})")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)
        _native(native_setting)


def scaling(name: str, patch: int, repeats: int, quick: bool) -> None:
    """One photo at growing sizes, one thread each: time per input pixel (linear scaling: a flat line)."""
    import cv2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        cells = []
        for side in (224, 448) if quick else (224, 448, 896, 1344):
            image = sample_images([name], size=side)
            t = best_time(lambda image=image: count_keypoints(image, patch), repeats)
            t_cv = best_time(lambda image=image: count_keypoints(image, patch, backend="opencv"), repeats)
            cells.append(f"{side} px {t * 1e3:.0f} ms = {t / side**2 * 1e9:.0f} ns/px (OpenCV x{t / t_cv:.2f})")
        print("SCALING one photo, one thread: " + "; ".join(cells))
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)


def shared_cpu(images: torch.Tensor, patch: int, repeats: int) -> None:
    """Default threads vs one thread, on an idle CPU and with one core kept busy by another process."""
    import cv2

    threads = torch.get_num_threads()
    cv2.setNumThreads(1)
    try:
        for load in ("idle", "one core busy"):
            busy = None
            if load != "idle":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                t_cv = best_time(lambda: count_keypoints(images, patch, backend="opencv"), repeats)
                times = {}
                for n in sorted({threads, 1}, reverse=True):
                    torch.set_num_threads(n)
                    times[n] = best_time(lambda: count_keypoints(images, patch), repeats)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            cells = ", ".join(f"{n} thread(s) {t * 1e3:.0f} ms (x{t / t_cv:.2f})" for n, t in times.items())
            print(f"SHARED CPU ({load}), batch {len(images)}: OpenCV one thread {t_cv * 1e3:.0f} ms; ours {cells}")
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)


def analyze_end_to_end() -> None:
    """Wall time of the README's main job, ``captum-sift analyze`` on the embedded default (own process)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "captum_sift", "analyze", "--out", out, "--quiet"], check=True)
        total = time.perf_counter() - start
    print(f"END TO END captum-sift analyze (embedded default, 1,000 images, default threads): {total:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few images, one repeat (for the tests)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    names = list(SAMPLE_PHOTOS + SKLEARN_PHOTOS)
    repeats, batch = args.repeats, args.batch
    if args.quick:
        names, repeats, batch = names[:3], 1, 4
    photos = sample_images(names, size=args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(names)} photos at {args.size}px")

    # -- fidelity ---------------------------------------------------------
    ref = count_keypoints(photos, args.patch, backend="opencv")
    ours = count_keypoints(photos, args.patch)
    rho, agree = agreement(ours, ref)
    print(f"fidelity ours  vs OpenCV: median Spearman rho {rho:.3f}, median Key/Non-key agreement {agree:.3f}")
    fmnist, _ = default_dataset(limit=64 if args.quick else 1000)
    ref_fm, ours_fm = count_keypoints(fmnist, args.patch, backend="opencv"), count_keypoints(fmnist, args.patch)
    print(f"fidelity ours  vs OpenCV on the embedded Fashion-MNIST ({len(fmnist)} images, 112 px): per-patch counts "
          f"equal {float((ours_fm == ref_fm).float().mean()):.3f}, Key/Non-key agreement "
          f"{float(((ours_fm > 0) == (ref_fm > 0)).float().mean()):.3f}, keypoints {int(ours_fm.sum())} vs "
          f"{int(ref_fm.sum())}")  # fmt: skip
    stock = kornia_stock_counts(photos, args.patch)
    rho_s, agree_s = agreement(stock, ref)
    print(f"fidelity kornia stock SIFTFeatureScaleSpace (as is): rho {rho_s:.3f}, agreement {agree_s:.3f}")
    stock_k = kornia_stock_counts(photos, args.patch, top_k=ref.flatten(1).sum(1).tolist())
    rho_k, agree_k = agreement(stock_k, ref)
    print(f"fidelity kornia stock, top-K with K = OpenCV's count:  rho {rho_k:.3f}, agreement {agree_k:.3f}")

    # -- speed ------------------------------------------------------------
    idx = torch.arange(batch) % len(names)
    images = photos[idx].contiguous()
    t_cv = best_time(lambda: count_keypoints(images, args.patch, backend="opencv"), repeats)
    t_ours = best_time(lambda: count_keypoints(images, args.patch), repeats)
    t_stock = best_time(lambda: kornia_stock_counts(images, args.patch), max(1, repeats // 2))
    print(f"speed batch {batch}x{args.size}px (CPU): OpenCV {t_cv * 1e3:.0f} ms, ours {t_ours * 1e3:.0f} ms, "
          f"kornia stock {t_stock * 1e3:.0f} ms")  # fmt: skip
    print(f"RATIO ours / OpenCV time: {t_ours / t_cv:.2f}  (both with their default threads)")
    print(f"RATIO kornia stock / OpenCV time: {t_stock / t_cv:.1f}")

    # -- one thread, every size -----------------------------------------------
    native_build_time()
    single_thread_table(photos, args.patch, repeats, args.quick)
    scaling(names[0], args.patch, repeats, args.quick)
    shared_cpu(images, args.patch, repeats)
    if not args.quick:
        analyze_end_to_end()

    # -- the blur ----------------------------------------------------------
    import kornia

    side = 2 * args.size
    layer = torch.rand(side, side, 16)
    sigma = 1.946
    kernel = gaussian_kernel1d(sigma, layer.device, layer.dtype)
    t_dw = best_time(lambda: _blur(layer, kernel), repeats)
    nchw = layer.permute(2, 0, 1).unsqueeze(1).contiguous()
    k = kernel.numel()
    t_kb = best_time(lambda: kornia.filters.gaussian_blur2d(nchw, (k, k), (sigma, sigma), "reflect"), repeats)
    print(f"blur 16x{side}x{side}, {k} taps: ours {t_dw * 1e3:.1f} ms, "
          f"kornia.filters.gaussian_blur2d {t_kb * 1e3:.1f} ms (x{t_kb / t_dw:.1f})")  # fmt: skip

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("CUDA requested but not available: skipped")
            return
        gpu = images.to(args.device)
        torch.testing.assert_close(count_keypoints(gpu, args.patch).cpu(), count_keypoints(images, args.patch))
        t_gpu = best_time(lambda: count_keypoints(gpu, args.patch), repeats)
        print(f"CUDA {torch.cuda.get_device_name()}: {t_gpu / batch * 1e3:.2f} ms per image (batch {batch})")


if __name__ == "__main__":
    main()
