"""Typed settings of each command, built once from the parsed command line (every value checked here)."""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Set
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._checks import check_int, check_number, check_patch_size
from ..errors import CaptumSiftError
from ..faithfulness import DEFAULT_METHODS, METHODS
from ..mae.masking import KeyShareSchedule
from ..mae.pretrain import MAX_PRETRAIN_SEED, PretrainConfig
from ..masking.apply import check_plan
from ..theta.settings import CONTROL_CHOICES, ThetaSettings

__all__ = [
    "MAX_FILL",
    "MAX_SEED",
    "AnalyzeOptions",
    "CompareOptions",
    "KeypointsOptions",
    "MaskEvalOptions",
    "PretrainOptions",
    "RunOptions",
    "check_combinations",
    "one_line",
    "parse_device",
    "parse_fill",
]

#: The largest --seed of every command: pre-training's range (its step generators are seeded with about
#: seed x 1e10), so that one seed is valid for mask-eval and pretrain alike.
MAX_SEED = MAX_PRETRAIN_SEED
#: The largest |--fill| (model space: normalised inputs are a few units; float32 overflows at 3.4e38).
MAX_FILL = 1e6
#: --quick of compare: images, curve points, IntegratedGradients steps.
QUICK = {"limit": 16, "steps": 4, "ig_steps": 4}


def one_line(exc: BaseException) -> str:
    """An exception's message on one line of at most 400 characters."""
    return " ".join(str(exc).split())[:400]


def parse_device(text: str) -> torch.device:
    """``--device``: cpu, cuda or cuda:N, CUDA only where it is available."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise CaptumSiftError(f"expected --device cpu, cuda or cuda:N, got {text!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaptumSiftError("--device cuda asked for, but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise CaptumSiftError(f"expected --device cpu, cuda or cuda:N, got {text!r}")
    return device


def parse_fill(text: str) -> float | str:
    """``--fill``: ``mean``, ``blur`` or ``drop`` as they are, anything else a number."""
    if text in ("mean", "blur", "drop"):
        return text
    try:
        value = float(text)
    except ValueError as exc:
        raise CaptumSiftError(f"expected --fill to be a number, mean, blur or drop, got {text!r}") from exc
    if not abs(value) <= MAX_FILL:  # NaN too; a float32 input would hold Inf
        raise CaptumSiftError(f"expected --fill to be a finite number in [-{MAX_FILL:g}, {MAX_FILL:g}], got {text!r}")
    return value


def check_statistics(values: list[float] | None, name: str, positive: bool = False) -> tuple[float, ...] | None:
    """``--mean`` / ``--std``: finite numbers (std > 0), one per channel or one for every channel."""
    if values is None:
        return None
    return tuple(check_number(v, name, low=0 if positive else None, low_open=positive) for v in values)


def read_class_map(path: Path) -> tuple[tuple[str, int], ...]:
    """A JSON object {folder name: class index} as sorted pairs."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptumSiftError(f"cannot read --class-map {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()
    ):
        raise CaptumSiftError(
            f"expected --class-map to hold a JSON object {{folder name: class index >= 0}}, got {path}"
        )
    return tuple(sorted(data.items()))


def parse_model_kwargs(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """``key=value`` strings -> (key, value) pairs; values read as Python literals, else kept as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise CaptumSiftError(f"expected --model-kwargs as key=value (e.g. global_pool=avg), got {item!r}")
        if key in out:
            raise CaptumSiftError(f"--model-kwargs gives {key!r} twice")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out[key] = value
    return tuple(out.items())


def _names(text: str) -> list[str]:
    """A comma-separated list (``--modes``, ``--methods``), blanks dropped."""
    return [m.strip() for m in text.split(",") if m.strip()]


def _optional_int(value: int | None, option: str) -> int | None:
    return None if value is None else check_int(value, option, low=1)


def check_combinations(args: argparse.Namespace, given: Set[str]) -> None:
    """Options that would be ignored without a word are refused (``given``: the options on the command line)."""
    if getattr(args, "images", None) is not None and "data" in given:
        raise CaptumSiftError("--data chooses the data without --images; give one of them, not both")
    if getattr(args, "class_map", None) is not None and getattr(args, "images", None) is None:
        raise CaptumSiftError("--class-map maps the sub-folders of --images; it needs --images")
    if args.command == "pretrain" and args.data == "embedded" and "limit" in given:
        raise CaptumSiftError("--limit counts the training images of --data fashion-mnist-full; embedded data is fixed")
    if getattr(args, "quick", False):
        taken = sorted(f"--{d.replace('_', '-')}" for d in given & {"steps", "ig_steps"})
        too_many = args.limit is not None and args.limit > QUICK["limit"]
        if taken or too_many:
            what = ", ".join(taken + (["--limit > 16"] if too_many else []))
            raise CaptumSiftError(f"--quick sets 16 images, 4 curve points and 4 IG steps; it cannot go with {what}")


@dataclass(frozen=True)
class RunOptions:
    """The model and data options of ``analyze``, ``mask-eval`` and ``compare`` (the command's own in subclasses)."""

    command: ClassVar[str] = ""

    out: Path
    model: str | None = None
    weights: Path | None = None
    pretrained: bool = False
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    images: Path | None = None
    class_map: tuple[tuple[str, int], ...] | None = None
    data: str = "embedded"
    img_size: int | None = None
    limit: int | None = None
    batch_size: int = 64
    theta: ThetaSettings = field(default_factory=ThetaSettings)
    device: torch.device = torch.device("cpu")
    quiet: bool = False
    resume: bool = False
    save_every: int = 5

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """The options of a parsed command line, every value checked."""
        sizes = {name: _optional_int(getattr(args, name), f"--{name.replace('_', '-')}")
                 for name in ("limit", "batch_size", "save_every", "img_size")}  # fmt: skip
        device = parse_device(args.device)
        mean, std = check_statistics(args.mean, "--mean"), check_statistics(args.std, "--std", positive=True)
        theta = ThetaSettings(gamma=args.gamma, weighted=not args.unweighted, keypoint_backend=args.backend)
        own = cls._own(args)  # checked before the files named on the command line are read
        return cls(
            out=args.out, model=args.model, weights=args.weights, pretrained=args.pretrained,
            model_kwargs=parse_model_kwargs(args.model_kwargs or []), mean=mean, std=std, images=args.images,
            class_map=read_class_map(args.class_map) if args.class_map else None, data=args.data,
            theta=theta, device=device, quiet=args.quiet, resume=args.resume, **sizes, **own,
        )  # fmt: skip

    @classmethod
    def _own(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The checked values of the command's own options."""
        return {}

    def own_settings(self) -> dict[str, Any]:
        """The command's own settings, as the resume fingerprint and report.json hold them."""
        return {}


@dataclass(frozen=True)
class AnalyzeOptions(RunOptions):
    """``captum-sift analyze``: ``controls`` are the SPEC §9 controls computed with θ (``ThetaSettings.controls``)."""

    command: ClassVar[str] = "analyze"

    heads_layer: int | None = None
    controls: str = "fast"

    @property
    def analysis(self) -> ThetaSettings:
        """The θ settings of the data-set pass: ``theta`` with the controls."""
        return replace(self.theta, controls=self.controls)

    @classmethod
    def _own(cls, args: argparse.Namespace) -> dict[str, Any]:
        controls = getattr(args, "controls", "fast")
        if controls not in CONTROL_CHOICES:
            raise CaptumSiftError(f"expected --controls in {CONTROL_CHOICES}, got {controls!r}")
        # heads_layer is checked against the model's blocks once it is loaded; a figure's layer, so no part of
        # the resume fingerprint (the figure's caption names the layer)
        return {"heads_layer": args.heads_layer, "controls": controls}

    def own_settings(self) -> dict[str, Any]:
        return {"controls": self.controls}


@dataclass(frozen=True)
class MaskEvalOptions(RunOptions):
    """``captum-sift mask-eval``: ``fill`` as given (``fill_value`` parsed)."""

    command: ClassVar[str] = "mask-eval"

    ratios: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4)
    modes: tuple[str, ...] = ("top", "bottom", "random")
    fill: str = "0.0"
    seed: int = 0

    @property
    def fill_value(self) -> float | str:
        return parse_fill(self.fill)

    @classmethod
    def _own(cls, args: argparse.Namespace) -> dict[str, Any]:
        seed = check_int(args.seed, "--seed", 0, MAX_SEED)
        ratios, modes = check_plan(args.ratios, _names(args.modes), "--modes")
        parse_fill(args.fill)
        return {"ratios": tuple(ratios), "modes": tuple(modes), "fill": args.fill, "seed": seed}

    def own_settings(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios), "modes": list(self.modes), "fill": self.fill, "seed": self.seed}


@dataclass(frozen=True)
class CompareOptions(RunOptions):
    """``captum-sift compare`` (``--quick`` already applied: 16 images at most, 4 curve points, 4 IG steps)."""

    command: ClassVar[str] = "compare"

    methods: tuple[str, ...] = DEFAULT_METHODS
    fill: str = "0.0"
    steps: int = 8
    ig_steps: int = 16
    quantus: bool = True
    masks: Path | None = None
    road: bool = False

    @property
    def fill_value(self) -> float | str:
        return parse_fill(self.fill)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        if args.quick:
            limit = QUICK["limit"] if args.limit is None else min(args.limit, QUICK["limit"])
            args = argparse.Namespace(**{**vars(args), "limit": limit, "steps": QUICK["steps"],
                                         "ig_steps": QUICK["ig_steps"]})  # fmt: skip
        return super().from_args(args)

    @classmethod
    def _own(cls, args: argparse.Namespace) -> dict[str, Any]:
        methods = _names(args.methods)
        if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
            raise CaptumSiftError(f"expected distinct --methods among {','.join(METHODS)}, got {args.methods!r}")
        parse_fill(args.fill)
        steps, ig_steps = check_int(args.steps, "--steps", low=1), check_int(args.ig_steps, "--ig-steps", low=1)
        return {"methods": tuple(methods), "fill": args.fill, "steps": steps, "ig_steps": ig_steps,
                "quantus": not args.no_quantus, "masks": _masks_folder(args), "road": args.road}  # fmt: skip

    def own_settings(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "fill": self.fill, "steps": self.steps, "ig_steps": self.ig_steps,
                "quantus": self.quantus, "masks": None if self.masks is None else str(self.masks),
                "road": self.road}  # fmt: skip


def _masks_folder(args: argparse.Namespace) -> Path | None:
    """``--masks``: a folder of ground-truth masks of the --images folder's files, outside it."""
    if args.masks is None:
        return None
    if args.images is None:
        raise CaptumSiftError("--masks gives the ground truth of the files of --images; it needs --images "
                              "(the built-in Fashion-MNIST data has no masks)")  # fmt: skip
    masks = Path(args.masks)
    if not masks.is_dir():
        raise CaptumSiftError(f"--masks folder not found: {masks}")
    if masks.resolve().is_relative_to(Path(args.images).resolve()):
        raise CaptumSiftError(f"--masks {masks} lies inside --images {args.images}: its PNGs would be read as images")
    return masks


@dataclass(frozen=True)
class PretrainOptions:
    """``captum-sift pretrain``: the training hyper-parameters (checked by PretrainConfig) and where to work."""

    command: ClassVar[str] = "pretrain"

    out: Path
    config: PretrainConfig = field(default_factory=PretrainConfig)
    data: str = "embedded"
    limit: int = 10000
    cache_dir: Path | None = None
    resume: bool = False
    device: torch.device = torch.device("cpu")
    quiet: bool = False

    @property
    def cache(self) -> Path:
        """The keypoint-count cache folder (--cache-dir, else --out)."""
        return self.cache_dir if self.cache_dir is not None else self.out

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PretrainOptions:
        device = parse_device(args.device)
        limit = check_int(args.limit, "--limit", low=1)
        schedule = KeyShareSchedule(every=check_int(args.schedule_every, "--schedule-every", low=1))
        config = PretrainConfig(  # checks every number before any work
            masking=args.masking, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            mask_ratio=args.mask_ratio, schedule=asdict(schedule), seed=args.seed, probe_every=args.probe_every,
            img_size=args.img_size, patch_size=args.patch_size,
        )  # fmt: skip
        return cls(out=args.out, config=config, data=args.data, limit=limit, cache_dir=args.cache_dir,
                   resume=args.resume, device=device, quiet=args.quiet)  # fmt: skip


@dataclass(frozen=True)
class KeypointsOptions:
    """``captum-sift keypoints``."""

    command: ClassVar[str] = "keypoints"

    out: Path
    photos: tuple[str, ...] | None = None
    img_size: int = 224
    patch_size: int = 16
    backend: str = "kornia"
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KeypointsOptions:
        device = parse_device(args.device)
        size = check_int(args.img_size, "--img-size", low=1)
        patch_size = check_patch_size(args.patch_size, size, size)
        photos = tuple(args.photos) if args.photos else None
        return cls(out=args.out, photos=photos, img_size=size, patch_size=patch_size, backend=args.backend,
                   device=device)  # fmt: skip
