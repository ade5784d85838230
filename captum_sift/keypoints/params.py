"""The detector's hyper-parameters and backends: the one place of their defaults (SPEC §1, OpenCV's defaults)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Literal

from .._checks import check_int, check_number
from ..errors import CaptumSiftError

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "SiftParams", "check_backend"]

Backend = Literal["lowe", "kornia", "opencv"]
#: ``"lowe"``: the package's Lowe (2004) detector (torch, C kernels on CPU); ``"kornia"``: kornia's own
#: scale-space detector; ``"opencv"``: ``cv2.SIFT_create()``.
BACKENDS: tuple[str, ...] = ("lowe", "kornia", "opencv")
DEFAULT_BACKEND: Backend = "lowe"

KORNIA_MEANING = (
    "backend='kornia' runs kornia's own scale-space detector; the package's detector, the default, is backend='lowe'"
)
_WARNED: set[str] = set()


def check_backend(backend: object) -> str:
    """``backend`` if it names a detector; ``"kornia"`` warns once per process that its meaning changed."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise CaptumSiftError(f"expected backend to be one of {BACKENDS}, got {backend!r}")
    if backend == "kornia" and "kornia" not in _WARNED:
        _WARNED.add("kornia")
        warnings.warn(KORNIA_MEANING, FutureWarning, stacklevel=3)
    return backend


@dataclass(frozen=True)
class SiftParams:
    """Hyper-parameters of the DoG detector, checked; the defaults are OpenCV's ``cv2.SIFT_create()``'s.

    Attributes:
        n_octave_layers: scales per octave (OpenCV's ``nOctaveLayers``), >= 1.
        sigma: blur of the first Gaussian layer of each octave, > 0.
        contrast_threshold: Lowe's contrast threshold, divided by
            ``n_octave_layers`` as in OpenCV, >= 0.
        edge_threshold: principal-curvature ratio r of the edge test, > 0.
        precise_upscale: double the image with pixel x -> 2x (OpenCV's
            ``enable_precise_upscale``) instead of half-pixel centres.
        quantize: round the gray image to 8-bit steps, as OpenCV sees an 8-bit image.
        double_image: detect on the doubled image (always, as OpenCV; not a public option).

    Example:
        >>> SiftParams(sigma=2.0).contrast_threshold
        0.04
        >>> SiftParams.from_options({"edge_threshold": 5})
        SiftParams(n_octave_layers=3, sigma=1.6, contrast_threshold=0.04, edge_threshold=5.0, precise_upscale=False, \
quantize=True)
    """

    n_octave_layers: int = 3
    sigma: float = 1.6
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    precise_upscale: bool = False
    quantize: bool = True
    double_image: bool = dataclasses.field(default=True, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_octave_layers", check_int(self.n_octave_layers, "n_octave_layers", low=1))
        object.__setattr__(self, "sigma", check_number(self.sigma, "sigma", low=0, low_open=True))
        threshold = check_number(self.contrast_threshold, "contrast_threshold", low=0)
        object.__setattr__(self, "contrast_threshold", threshold)
        edge = check_number(self.edge_threshold, "edge_threshold", low=0, low_open=True)
        object.__setattr__(self, "edge_threshold", edge)
        object.__setattr__(self, "precise_upscale", bool(self.precise_upscale))
        object.__setattr__(self, "quantize", bool(self.quantize))

    @classmethod
    def from_options(cls, options: dict[str, object]) -> SiftParams:
        """The parameters named in ``options`` (the public ones only), the defaults for the rest."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise CaptumSiftError(f"unknown detector argument(s) {unknown}; expected some of {sorted(OPTIONS)}")
        return cls(**options)  # type: ignore[arg-type]

    def options(self) -> dict[str, object]:
        """The public parameters as keyword arguments of :func:`~captum_sift.keypoints.detect_keypoints`."""
        return {name: getattr(self, name) for name in OPTIONS}


#: The public detector parameters, in signature order, with their defaults.
OPTIONS: dict[str, object] = {f.name: f.default for f in dataclasses.fields(SiftParams) if f.repr}
DEFAULTS = SiftParams()
