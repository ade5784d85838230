"""ThetaSettings: the seven options of θ (SPEC §2-3, §7) in one frozen object, checked once."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Union

from .._checks import as_int, check_gamma, check_min_keypoints
from ..errors import CaptumSiftError
from ..keypoints.params import BACKENDS, DEFAULT_BACKEND

__all__ = ["CONTROL_CHOICES", "KEYPOINT_BACKENDS", "LayerChoice", "ThetaSettings", "resolve_layers"]

KEYPOINT_BACKENDS = BACKENDS
CONTROL_CHOICES = ("none", "fast", "all")
STAGE_NAMES = ("retrieval", "capture", "coach")
LayerChoice = Union[Literal["retrieval", "capture", "coach"], int, Iterable[int], None]  # noqa: UP007


def resolve_layers(layers: int | Iterable[int] | None, depth: int) -> list[int]:
    """Sorted, de-duplicated layer indices; negative indices count from the end."""
    if layers is None:
        return list(range(depth))
    items = _layer_items(layers)
    resolved = set()
    for layer in items:
        if not -depth <= layer < depth:
            raise CaptumSiftError(
                f"expected layer indices in [-{depth}, {depth}) for a {depth}-block model, got {layer!r}"
            )
        resolved.add(layer % depth)
    if not resolved:
        raise CaptumSiftError("expected at least one layer, got an empty selection")
    return sorted(resolved)


def _layer_items(layers: object) -> list[int]:
    """Layer indices of an int or an iterable of ints (numpy and 0-d tensor ints included)."""
    if isinstance(layers, str):
        raise CaptumSiftError(f"expected layer indices or a stage name in {STAGE_NAMES}, got {layers!r}")
    single = as_int(layers)
    if single is not None:
        return [single]
    try:
        raw = list(layers)  # type: ignore[call-overload]
    except TypeError:
        raise CaptumSiftError(f"expected layer indices (ints) or a stage name, got {layers!r}") from None
    items = [as_int(layer) for layer in raw]
    bad = [layer for layer, item in zip(raw, items, strict=True) if item is None]
    if bad:
        raise CaptumSiftError(f"expected layer indices (ints), got {bad[0]!r}")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class ThetaSettings:
    """How θ and the per-patch scores are computed; passed down unchanged by every entry point.

    Attributes:
        gamma: detection-line height of eq. 2, > 0.
        weighted: weighted θ (eq. 3, default) or unweighted.
        include_self: whether patch i may be in its own attended set S_i.
        min_keypoints: Key(j) <=> t_j >= min_keypoints.
        layers: None (every block), layer indices (negative count from the
            end), or a stage name ``"retrieval"`` / ``"capture"`` / ``"coach"``
            (per-patch scores only; the analysis then runs every block).
        keypoint_backend: ``"lowe"`` (the package's detector, default),
            ``"kornia"`` (kornia's detector) or ``"opencv"``.
        controls: the null attentions of SPEC §9 that :func:`~captum_sift.analyze`
            computes in the same pass (:mod:`~captum_sift.theta.control_theta`):
            ``"none"`` (default), ``"fast"`` (uniform, locality fitted per layer
            and 2 shuffled draws) or ``"all"`` (locality fitted per layer and
            head, SPEC's 8 draws). Default none:
            a library call is often one small batch, where a bootstrap over its
            images says little, and its report keeps the fields it always had;
            ``captum-sift analyze`` runs ``"fast"`` over the data set.

    Every entry point also takes these as keyword options, which replace the
    fields of ``settings``: ``analyze(model, x, gamma=2.0)`` is
    ``analyze(model, x, settings=ThetaSettings(gamma=2.0))``.

    Example:
        >>> s = ThetaSettings.resolve(ThetaSettings(gamma=2.0), layers=[3, -1])
        >>> s.gamma, s.layers, s.weighted
        (2.0, (3, -1), True)
        >>> ThetaSettings(gammma=2.0)
        Traceback (most recent call last):
        ...
        TypeError: ThetaSettings.__init__() got an unexpected keyword argument 'gammma'
    """

    gamma: float = 1.0
    weighted: bool = True
    include_self: bool = True
    min_keypoints: int = 1
    layers: Any = None
    keypoint_backend: str = DEFAULT_BACKEND
    controls: str = "none"

    def __post_init__(self) -> None:
        if self.controls not in CONTROL_CHOICES:
            raise CaptumSiftError(f"expected controls in {CONTROL_CHOICES}, got {self.controls!r}")
        object.__setattr__(self, "gamma", check_gamma(self.gamma))
        object.__setattr__(self, "min_keypoints", check_min_keypoints(self.min_keypoints))
        for name in ("weighted", "include_self"):
            if not isinstance(getattr(self, name), bool):
                raise CaptumSiftError(f"expected {name} to be True or False, got {getattr(self, name)!r}")
        if self.keypoint_backend not in KEYPOINT_BACKENDS:
            raise CaptumSiftError(f"expected keypoint_backend in {KEYPOINT_BACKENDS}, got {self.keypoint_backend!r}")
        layers = self.layers
        if isinstance(layers, str):
            if layers not in STAGE_NAMES:
                raise CaptumSiftError(f"expected layers to be a stage name in {STAGE_NAMES}, got {layers!r}")
        elif layers is not None:
            items = _layer_items(layers)
            if not items:
                raise CaptumSiftError("expected at least one layer, got an empty selection")
            object.__setattr__(self, "layers", tuple(items))

    @classmethod
    def resolve(cls, settings: ThetaSettings | None = None, **options: Any) -> ThetaSettings:
        """``settings`` (default: the SPEC defaults) with the given keyword options replacing its fields."""
        if settings is not None and not isinstance(settings, ThetaSettings):
            raise CaptumSiftError(f"expected settings to be a ThetaSettings, got {type(settings).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise CaptumSiftError(f"unknown θ option(s) {unknown}; expected among {sorted(names)}")
        base = settings if settings is not None else cls()
        return dataclasses.replace(base, **options) if options else base

    def layer_list(self, depth: int) -> list[int]:
        """Blocks the analysis must run: every block for None or a stage name."""
        if self.layers is None or isinstance(self.layers, str):
            return list(range(depth))
        return resolve_layers(self.layers, depth)

    def check_for(self, depth: int) -> None:
        """Check the layer choice against a model of ``depth`` blocks (before any work is done)."""
        self.layer_list(depth)
        if isinstance(self.layers, str) and depth < 3:
            raise CaptumSiftError(f"expected at least 3 blocks for stage {self.layers!r}, got {depth}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (layers as a list or a name)."""
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers) if isinstance(self.layers, tuple) else self.layers
        return out
