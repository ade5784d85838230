"""Fidelity and speed of the three keypoint detectors: ``"lowe"`` (default), ``"kornia"`` and ``"opencv"``.

Prints, measured in this one run on this machine:

* ``FIDELITY``: agreement of ``"lowe"`` (the package's Lowe detector) and
  ``"kornia"`` (kornia's ``ScaleSpaceDetector`` with DoG responses, plus
  Lowe's contrast and edge tests) with OpenCV's ``cv2.SIFT_create()`` on real
  photographs (scikit-image samples + scikit-learn's two photos, 224x224,
  patch 16) and on the embedded Fashion-MNIST (112 px): median per-image
  Spearman rho of the per-patch counts, median share of patches whose
  Key/Non-key label (t >= 1) agrees, share of equal per-patch counts, total
  keypoints;
* ``SPEED``: time of each detector, counts included, and its ratio to
  OpenCV's, with torch's default threads and with one thread (OpenCV alike):
  one 224-px photo (batch 1), a batch of photos, one large photo, the
  embedded Fashion-MNIST. kornia runs once per configuration (it is slow;
  with ``--quick`` on the single 224-px photo only);
* for ``"lowe"``: its eager-torch fallback (``CAPTUM_SIFT_NATIVE=0``) and
  the time the native kernels take to build on a machine's first use
  (``ONE THREAD``), time per pixel of one photo at 224 to 1344 px
  (``SCALING``), torch's default thread count vs one thread on an idle CPU
  and with one core kept busy by another process (``SHARED CPU``), its blur
  vs ``kornia.filters.gaussian_blur2d``;
* the wall time of ``captum-sift analyze`` on the embedded default (not with ``--quick``);
* with ``--device cuda`` (when available) the GPU time per image of ``"lowe"`` and ``"kornia"``.

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
import warnings

import numpy as np
import torch
from _timing import _timed, best_time

from captum_sift import count_keypoints
from captum_sift.data import SAMPLE_PHOTOS, SKLEARN_PHOTOS, default_dataset, sample_images
from captum_sift.keypoints._pyramid import blur, gaussian_kernel1d


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


def fidelity(name: str, images: torch.Tensor, patch: int, kornia_limit: int | None = None) -> None:
    """Agreement of "lowe" and "kornia" with OpenCV's counts (kornia on the first ``kornia_limit`` images)."""
    ref = count_keypoints(images, patch, backend="opencv")
    for backend in ("lowe", "kornia"):
        n = len(images) if backend == "lowe" or kornia_limit is None else min(kornia_limit, len(images))
        counts, expected = count_keypoints(images[:n], patch, backend=backend), ref[:n]
        rho, agree = agreement(counts, expected)
        print(f"FIDELITY {name}, {backend} vs OpenCV: median Spearman rho {rho:.3f}, median Key/Non-key agreement "
              f"{agree:.3f}, per-patch counts equal {float((counts == expected).float().mean()):.3f}, keypoints "
              f"{int(counts.sum())} vs {int(expected.sum())}")  # fmt: skip


def speed_table(rows: dict[str, torch.Tensor], patch: int, repeats: int, kornia_rows: int) -> None:
    """Each detector's time and its ratio to OpenCV's, torch's default threads, then one thread (OpenCV alike).

    kornia runs once per configuration, on the first ``kornia_rows`` configurations only.
    """
    import cv2

    threads = torch.get_num_threads()
    count_keypoints(next(iter(rows.values())), patch, backend="kornia")  # kornia's first call out of the timing
    try:
        for n in sorted({threads, 1}, reverse=True):
            torch.set_num_threads(n)
            cv2.setNumThreads(n if n == 1 else -1)
            for i, (name, images) in enumerate(rows.items()):
                t = {b: best_time(lambda b=b, x=images: count_keypoints(x, patch, backend=b), repeats)
                     for b in ("opencv", "lowe")}  # fmt: skip
                line = (f"SPEED {n} thread(s), {name}: OpenCV {t['opencv'] * 1e3:.0f} ms; lowe {t['lowe'] * 1e3:.0f} "
                        f"ms, RATIO {t['lowe'] / t['opencv']:.2f}")  # fmt: skip
                if i < kornia_rows:
                    t_kornia = _timed(lambda x=images: count_keypoints(x, patch, backend="kornia"))
                    line += f"; kornia {t_kornia * 1e3:.0f} ms, RATIO {t_kornia / t['opencv']:.1f}"
                print(line)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)


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
    """lowe / OpenCV per configuration, both on one thread (counts included on both sides).

    ``lowe`` is the default detector (native kernels); ``eager`` its
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
            print(f"ONE THREAD {name}: lowe {t_ours * 1e3:.0f} ms, OpenCV {t_cv * 1e3:.0f} ms, "
                  f"RATIO {t_ours / t_cv:.2f}; eager fallback {t_eager * 1e3:.0f} ms, RATIO {t_eager / t_cv:.2f} "
                  f"(per-patch counts equal to lowe's: {same:.4f})")  # fmt: skip
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
            print(f"SHARED CPU ({load}), batch {len(images)}: OpenCV one thread {t_cv * 1e3:.0f} ms; lowe {cells}")
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
    warnings.filterwarnings("ignore", message="backend='kornia'", category=FutureWarning)

    # -- the three detectors -------------------------------------------------
    fmnist, _ = default_dataset(limit=64 if args.quick else 1000)
    fidelity(f"photos, {args.size} px ({len(names)})", photos, args.patch)
    few = 16 if args.quick else 64
    fidelity(f"embedded Fashion-MNIST, 112 px ({len(fmnist)}; kornia on the first {few})", fmnist, args.patch, few)
    large = 448 if args.quick else 896
    rows = {
        f"one {args.size}-px photo (batch 1)": photos[:1],
        f"photos, {args.size} px, batch {batch}": photos[torch.arange(batch) % len(names)].contiguous(),
        f"one {large}-px photo (batch 1)": sample_images(names[:1], size=large),
        f"embedded Fashion-MNIST, 112 px, batch {few}": fmnist[:few],
    }
    speed_table(rows, args.patch, repeats, 1 if args.quick else len(rows))
    images = rows[f"photos, {args.size} px, batch {batch}"]

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
    t_dw = best_time(lambda: blur(layer, kernel), repeats)
    nchw = layer.permute(2, 0, 1).unsqueeze(1).contiguous()
    k = kernel.numel()
    t_kb = best_time(lambda: kornia.filters.gaussian_blur2d(nchw, (k, k), (sigma, sigma), "reflect"), repeats)
    print(f"blur 16x{side}x{side}, {k} taps: lowe's {t_dw * 1e3:.1f} ms, "
          f"kornia.filters.gaussian_blur2d {t_kb * 1e3:.1f} ms (x{t_kb / t_dw:.1f})")  # fmt: skip

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("CUDA requested but not available: skipped")
            return
        gpu = images.to(args.device)
        torch.testing.assert_close(count_keypoints(gpu, args.patch).cpu(), count_keypoints(images, args.patch))
        t_gpu = best_time(lambda: count_keypoints(gpu, args.patch), repeats)
        t_kornia = best_time(lambda: count_keypoints(gpu, args.patch, backend="kornia", chunk_size=batch), 1)
        print(f"CUDA {torch.cuda.get_device_name()}: lowe {t_gpu / batch * 1e3:.2f} ms per image, kornia "
              f"{t_kornia / batch * 1e3:.2f} ms per image (batch {batch})")  # fmt: skip


if __name__ == "__main__":
    main()
