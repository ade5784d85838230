"""The detector's native CPU kernels (``_native.c``): compiled once per machine, loaded with ctypes.

Eager torch runs the detector as ~40 passes over every full-resolution
layer; OpenCV runs a few fused loops. The kernels in ``_native.c`` do the
float32 CPU work of an octave in one streamed pass (the blurs, the DoG and
the extremum search row by row, each Gaussian layer kept only as the ring of
rows its readers still need), then the refinement: ~3x faster than eager
torch at every batch size (benchmarks/keypoints.py).

The source is compiled with the machine's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) into a cache directory (``$CAPTUM_SIFT_CACHE``, else
``$XDG_CACHE_HOME/captum_sift`` or ``~/.cache/captum_sift``), keyed by a hash
of the source, the flags, the compiler and the CPU, on first use (~0.5 s);
later processes only load the library. No compiler, or a failed build, gives
one ``RuntimeWarning`` and the eager torch path, which finds the same
keypoints up to float rounding in the blur. ``CAPTUM_SIFT_NATIVE=0`` turns
the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("_native.c")
_FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fPIC", "-shared"]
_NATIVE_ARCH = ["-march=native"]  # dropped when the compiler refuses it
_I64, _F32, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "sift_base_f32": (ctypes.c_int, [_PTR, _I64, _I64, _I64, _I64, ctypes.c_int, ctypes.c_int, _PTR, _PTR]),
    "sift_half_f32": (None, [_PTR, _I64, _I64, _I64, _PTR]),
    "sift_blur_f32": (ctypes.c_int, [_PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _I64, _PTR, _PTR]),
    "sift_extrema_f32": (_I64, [_PTR, _I64, _I64, _I64, _I64, _I64, _F32, _PTR, _I64]),
    "sift_octave_scratch": (_I64, [_I64, _I64, _I64, _I64, _PTR]),
    "sift_octave_f32": (
        _I64,
        [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _F32, _PTR, _I64],
    ),
    "sift_refine_f32": (_I64, [_PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _F32, _F32, _F32, _PTR, _PTR]),
}
MAX_RADIUS = 255  # _native.c's MAX_RADIUS: kernels of up to 511 taps (sigma ~64)
MAX_GAUSS = 64  # _native.c's MAX_GAUSS: Gaussian layers per octave of sift_octave_f32

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # "lib": the loaded library, or None once loading failed


def enabled() -> bool:
    """Whether ``CAPTUM_SIFT_NATIVE`` allows the kernels (default: yes)."""
    return os.environ.get("CAPTUM_SIFT_NATIVE", "1") != "0"


def _cache_dir() -> Path:
    if os.environ.get("CAPTUM_SIFT_CACHE"):
        return Path(os.environ["CAPTUM_SIFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "captum_sift"


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no C compiler found ($CC, cc, gcc, clang)")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags where the OS tells them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("flags", "Features", "model name"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(cc: str, target: Path) -> None:
    """Compile into a temporary file beside ``target``, then rename (safe when processes race)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        errors = []
        for arch in (_NATIVE_ARCH, []):
            cmd = [cc, *_FLAGS, *arch, str(_SOURCE), "-o", tmp, "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return
            errors.append(proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"])
        raise RuntimeError(f"{' '.join(cmd)} failed: {errors[-1][0]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL:
    cc = _compiler()
    stat = os.stat(cc)
    key = hashlib.sha256()
    compiler = f"{cc}:{stat.st_size}:{stat.st_mtime}"
    for part in (
        _SOURCE.read_text(),
        " ".join(_FLAGS + _NATIVE_ARCH),
        compiler,
        sys.platform,
        platform.machine(),
        _cpu_id(),
    ):
        key.update(part.encode() + b"\0")
    target = _cache_dir() / f"native-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(cc, target)
    lib = ctypes.CDLL(str(target))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or ``None`` (turned off, or they could not be built: warned once)."""
    if not enabled():
        return None
    with _LOCK:
        if "lib" not in _STATE:
            try:
                _STATE["lib"] = _load()
            except Exception as exc:  # no compiler, read-only cache, foreign platform: eager torch instead
                _STATE["lib"] = None
                warnings.warn(
                    f"captum_sift's native keypoint kernels are not available ({type(exc).__name__}: {exc}); "
                    "using eager torch (the same keypoints up to float rounding, ~3x slower). "
                    "Set CAPTUM_SIFT_NATIVE=0 to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=5,
                )
    return _STATE["lib"]  # type: ignore[return-value]


def _lib() -> ctypes.CDLL:
    """The library, for callers that checked :func:`usable` (no environment lookup per kernel call)."""
    return _STATE.get("lib") or library()  # type: ignore[return-value]


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels apply to ``x``: a float32 CPU tensor, and the library loads."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and library() is not None


def base(images: torch.Tensor, quantize: bool, twice: bool, ws) -> torch.Tensor:
    """Octave 0's (H', W', b) input from (b, C, H, W) float32 images in [0, 1] (``_pyramid.initial_image``'s gray)."""
    images = images.contiguous()
    b, c, h, w = images.shape
    gray = ws.get("native_gray", (h, w, b), images) if twice else torch.empty((h, w, b))
    out = torch.empty((2 * h, 2 * w, b)) if twice else gray
    if _lib().sift_base_f32(images.data_ptr(), b, c, h, w, int(quantize), int(twice), gray.data_ptr(), out.data_ptr()):
        raise MemoryError("the native base image could not allocate its column table")
    return out


def half(x: torch.Tensor) -> torch.Tensor:
    """Every second row and column of an (H, W, b) stack, as a new contiguous tensor."""
    x = x.contiguous()
    h, w, b = x.shape
    out = torch.empty((h // 2, w // 2, b))
    _lib().sift_half_f32(x.data_ptr(), h, w, b, out.data_ptr())
    return out


def blur(x: torch.Tensor, kernel: torch.Tensor, out: torch.Tensor, dog: torch.Tensor | None, ws) -> None:
    """``out`` = Gaussian blur of the (H, W, b) ``x`` (reflect-101); ``dog`` = ``out - x`` when given."""
    if not (out.is_contiguous() and (dog is None or dog.is_contiguous())):
        raise ValueError("the native blur writes into contiguous tensors only")
    x = x.contiguous()
    h, w, b = x.shape
    radius = kernel.numel() // 2
    tmp = ws.get("native_tmp", (2 * radius + 1, w, b), x)  # a ring of rows
    pad = ws.get("native_pad", ((w + 2 * radius) * b,), x)
    kernel = kernel.contiguous()
    status = _lib().sift_blur_f32(
        x.data_ptr(), out.data_ptr(), None if dog is None else dog.data_ptr(),
        h, w, b, kernel.data_ptr(), radius, tmp.data_ptr(), pad.data_ptr(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"Gaussian kernel of {kernel.numel()} taps exceeds the native limit {2 * MAX_RADIUS + 1}")


def _room(dog: torch.Tensor) -> int:
    """First guess of the number of extrema in a DoG stack (photos: well under 1 in 64 samples)."""
    return max(1024, dog.numel() // 64)


def octave(
    base: torch.Tensor,
    kernels: list[torch.Tensor],
    dog: torch.Tensor,
    half_layer: int,
    threshold: float,
    border: int,
    ws,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One octave in one streamed pass: ``dog`` filled, (extrema as :func:`extrema`, next octave's base).

    ``kernels[l]`` blurs Gaussian layer l from layer l-1 (layer 0 is ``base``,
    ``kernels[0]`` unused); the values are those of :func:`blur` and
    :func:`extrema`, bit for bit, without writing the Gaussian layers out.
    """
    base = base.contiguous()
    h, w, b = base.shape
    layers = len(kernels)
    radii = torch.tensor([0] + [k.numel() // 2 for k in kernels[1:]], dtype=torch.int64)
    taps = torch.cat([k.contiguous() for k in kernels[1:]])
    lib = _lib()
    scratch = ws.get("native_octave", (lib.sift_octave_scratch(h, w, b, layers, radii.data_ptr()),), base)
    out = ws.get("native_extrema", (_room(dog),), base, torch.int64)
    nxt = torch.empty((h // 2, w // 2, b))
    n = lib.sift_octave_f32(
        base.data_ptr(), h, w, b, layers, taps.data_ptr(), radii.data_ptr(), half_layer, dog.data_ptr(),
        nxt.data_ptr(), scratch.data_ptr(), border, threshold, out.data_ptr(), out.numel(),
    )  # fmt: skip
    if n < 0:
        raise RuntimeError(f"an octave of {layers} layers or kernels of {2 * int(radii.max()) + 1} taps exceed the "
                           f"native limits ({MAX_GAUSS} layers, {2 * MAX_RADIUS + 1} taps)")  # fmt: skip
    if n > out.numel():  # more candidates than room: the DoG is complete, search it once more with room for all
        return extrema(dog, threshold, border), nxt
    return torch.sort(out[:n]).values, nxt


def extrema(dog: torch.Tensor, threshold: float, border: int) -> torch.Tensor:
    """Flat indices into the (S+2, H, W, b) ``dog`` of its 3x3x3 extrema with ``|D| > threshold``, sorted."""
    dog = dog.contiguous()
    s, h, w, b = dog.shape
    fn = _lib().sift_extrema_f32
    out = torch.empty(_room(dog), dtype=torch.int64)
    n = fn(dog.data_ptr(), s, h, w, b, border, threshold, out.data_ptr(), out.numel())
    if n > out.numel():  # more candidates than the first guess: once more with room for all
        out = torch.empty(n, dtype=torch.int64)
        n = fn(dog.data_ptr(), s, h, w, b, border, threshold, out.data_ptr(), out.numel())
    if n < 0:
        raise MemoryError("the native extremum search could not allocate its row buffer")
    return torch.sort(out[:n]).values


def refine(dog: torch.Tensor, cand: torch.Tensor, border: int, p) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined candidates: (m, 4) [layer, r, c, image], (m, 4) [xc, xr, xs, |contrast|] (``_extrema.refine_eager``)."""
    dog, cand = dog.contiguous(), cand.contiguous()
    s, h, w, b = dog.shape
    pos = torch.empty(cand.numel(), 4, dtype=torch.int64)
    fit = torch.empty(cand.numel(), 4, dtype=torch.float32)
    r = p.edge_threshold
    kept = _lib().sift_refine_f32(
        dog.data_ptr(), s, h, w, b, border, p.n_octave_layers, cand.data_ptr(), cand.numel(),
        p.contrast_threshold, r, (r + 1) ** 2, pos.data_ptr(), fit.data_ptr(),
    )  # fmt: skip
    return pos[:kept], fit[:kept]
