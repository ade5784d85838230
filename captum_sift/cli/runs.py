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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .._dist import all_gather_objects, barrier, init_from_env
from .._io import write_text_atomic
from ..errors import CaptumSiftError
from ..theta.report import nan_to_none
from ..theta.settings import ThetaSettings
from ..vit.adapter import ViTAdapter, as_vit, eval_mode


# -- settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """Everything ``captum-sift analyze`` / ``mask-eval`` does, typed (built from the command line once)."""

    command: str
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
    device: str = "cpu"
    quiet: bool = False
    resume: bool = False
    save_every: int = 5
    ratios: tuple[float, ...] = ()
    modes: tuple[str, ...] = ()
    fill: str = "0.0"
    seed: int = 0
    methods: tuple[str, ...] = ()
    steps: int = 8
    ig_steps: int = 16
    quantus: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """The config of parsed ``captum-sift analyze`` / ``mask-eval`` arguments."""
        from .._checks import check_int

        for name in ("limit", "batch_size", "save_every", "img_size"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise CaptumSiftError(f"expected --{name.replace('_', '-')} >= 1, got {value}")
        parse_device(args.device)
        mean, std = check_statistics(args.mean, "--mean"), check_statistics(args.std, "--std", positive=True)
        if getattr(args, "seed", None) is not None:
            check_int(args.seed, "--seed", 0, MAX_SEED)
        theta = ThetaSettings(gamma=args.gamma, weighted=not args.unweighted, keypoint_backend=args.backend)
        extra: dict[str, Any] = {}
        if args.command == "mask-eval":
            from ..masking.apply import check_plan

            modes = [m.strip() for m in args.modes.split(",") if m.strip()]
            ratios, modes = check_plan(args.ratios, modes, "--modes")
            parse_fill(args.fill)
            extra = {"ratios": tuple(ratios), "modes": tuple(modes), "fill": args.fill, "seed": args.seed}
        elif args.command == "compare":
            from ..faithfulness.compare import METHODS

            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
                raise CaptumSiftError(f"expected distinct --methods among {','.join(METHODS)}, got {args.methods!r}")
            parse_fill(args.fill)
            for name in ("steps", "ig_steps"):
                if getattr(args, name) < 1:
                    raise CaptumSiftError(f"expected --{name.replace('_', '-')} >= 1, got {getattr(args, name)}")
            extra = {"methods": tuple(methods), "fill": args.fill, "steps": args.steps, "ig_steps": args.ig_steps,
                     "quantus": not args.no_quantus}  # fmt: skip
        return cls(
            command=args.command, out=args.out, model=args.model, weights=args.weights, pretrained=args.pretrained,
            model_kwargs=parse_model_kwargs(args.model_kwargs or []), images=args.images, data=args.data,
            mean=mean, std=std,
            class_map=read_class_map(args.class_map) if args.class_map else None,
            img_size=args.img_size, limit=args.limit, batch_size=args.batch_size, theta=theta, device=args.device,
            quiet=args.quiet, resume=args.resume, save_every=args.save_every, **extra,
        )  # fmt: skip


#: The largest --seed: the random mode and pre-training derive generator seeds from seed x 1e10.
MAX_SEED = 2**30 - 1


def check_statistics(values: list[float] | None, name: str, positive: bool = False) -> tuple[float, ...] | None:
    """``--mean`` / ``--std``: finite numbers (std > 0), one per channel or one for every channel."""
    from .._checks import check_number

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
    import ast

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


# -- model and data -------------------------------------------------------------------
def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CaptumSiftError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = _one_line(exc) or type(exc).__name__
        raise CaptumSiftError(f"cannot read weights file {path} with weights_only=True: {reason}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CaptumSiftError(f"expected a state dict in {path}, got {type(state).__name__}")
    return state


@dataclass(frozen=True)
class LoadedModel:
    vit: ViTAdapter
    name: str
    random_weights: bool
    img_size: int | None
    files_sha256: str | None = None  # of an hf: folder's weight and config files


RANDOM_WARNING = (
    "WARNING: the model has random weights (no --weights, no --pretrained): its attention, stages and "
    "accuracy describe an untrained network, not a trained ViT"
)


#: Options that choose where and how a model is loaded, not what it is: never taken from --model-kwargs
#: (trust_remote_code would run the folder's Python code; the others read other files or the network).
LOADER_OPTIONS = frozenset({
    "trust_remote_code", "local_files_only", "revision", "code_revision", "cache_dir", "token", "use_auth_token",
    "force_download", "resume_download", "proxies", "subfolder", "mirror", "from_tf", "from_flax", "use_safetensors",
    "weights_only", "device_map", "offload_folder", "state_dict", "config", "pretrained_model_name_or_path",
    "output_loading_info", "return_unused_kwargs", "gguf_file", "variant", "key_mapping", "quantization_config",
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "weights", "progress",
})  # fmt: skip


def _check_model_kwargs(config: RunConfig) -> None:
    loaders = sorted(k for k, _ in config.model_kwargs if k in LOADER_OPTIONS)
    if loaders:
        raise CaptumSiftError(
            f"--model-kwargs takes constructor options, not loader options: {loaders} "
            "(a folder's Python code is never run; weights come from --weights, --pretrained or the hf folder)"
        )


def _create(config: RunConfig, num_classes: int | None) -> tuple[nn.Module, Any, str]:
    """(network, Hugging Face image processor or None, name) for ``--model``."""
    spec, kwargs = config.model or "", dict(config.model_kwargs)
    _check_model_kwargs(config)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    with torch.random.fork_rng():  # the same random weights in every process and run
        torch.manual_seed(0)
        if spec.startswith("hf:"):
            return _create_hf(spec[3:], config)
        if spec.startswith("torchvision:"):
            import torchvision

            name = spec[len("torchvision:") :]
            if config.img_size:
                kwargs.setdefault("image_size", config.img_size)
            try:
                weights = None
                if config.pretrained:
                    weights = torchvision.models.get_model_weights(name).DEFAULT
                    _check_torch_hub_cache(weights.url, f"torchvision:{name}")
                model = torchvision.models.get_model(name, weights=weights, **kwargs)
            except CaptumSiftError:
                raise
            except Exception as exc:  # unknown name, bad option, or weights that cannot be read
                raise CaptumSiftError(f"cannot create torchvision model {name!r}: {_one_line(exc)}") from exc
            return model, None, spec
        import timm

        if config.img_size:
            kwargs.setdefault("img_size", config.img_size)
        try:
            if config.pretrained:
                _check_timm_cache(spec)
            with _offline():
                model = timm.create_model(spec, pretrained=config.pretrained, **kwargs)
        except CaptumSiftError:
            raise
        except Exception as exc:
            raise CaptumSiftError(f"cannot create timm model {spec!r}: {_one_line(exc)}") from exc
        return model, None, spec


def _not_cached(name: str, where: str) -> CaptumSiftError:
    return CaptumSiftError(
        f"--pretrained: the weights of {name} are not in the local cache ({where}); nothing is downloaded at run "
        "time: fetch them once online (e.g. by creating the model in Python), or pass --weights FILE"
    )


def _check_torch_hub_cache(url: str, name: str) -> None:
    """torch.hub's download cache holds the file of ``url`` (else one line, at once)."""
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
    if not path.is_file():
        raise _not_cached(name, str(path))


def _check_timm_cache(name: str) -> None:
    """timm's pretrained weights of ``name`` are cached (Hugging Face hub cache or torch.hub's), else one line."""
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown name: timm.create_model says so
        return
    if cfg is None:
        return
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        names = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        for filename in (*names, getattr(cfg, "hf_hub_filename", None)):
            if filename and isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                return
        raise _not_cached(name, f"Hugging Face hub cache, repo {repo}")
    url = getattr(cfg, "url", None)
    if url:
        _check_torch_hub_cache(url, name)
        return
    if getattr(cfg, "file", None) and not Path(cfg.file).is_file():
        raise _not_cached(name, cfg.file)


class _offline:
    """The Hugging Face libraries in offline mode for the block (no network retries), restored after."""

    def __enter__(self) -> None:
        self.env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.constants = None
        try:
            from huggingface_hub import constants

            self.constants, self.old = constants, constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        except ImportError:  # pragma: no cover - timm needs huggingface_hub
            pass

    def __exit__(self, *exc: object) -> None:
        for key, value in self.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.constants is not None:
            self.constants.HF_HUB_OFFLINE = self.old


def _hf_folder(path: str) -> Path:
    """The save_pretrained folder of ``hf:PATH`` (a folder path, or a repo id in the local cache)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    looks_like_id = path.count("/") <= 1 and not path.startswith(("/", ".", "~")) and path.strip() == path != ""
    if looks_like_id:
        try:
            from huggingface_hub import snapshot_download

            with _offline():
                return Path(snapshot_download(path, local_files_only=True))
        except Exception:
            pass
        raise CaptumSiftError(
            f"Hugging Face model folder not found: {path!r} is neither a folder nor a model in the local cache"
        )
    raise CaptumSiftError(f"Hugging Face model folder not found: {path}")


#: Files of a save_pretrained folder that decide the model (the resume fingerprint hashes them).
HF_MODEL_FILES = ("*.safetensors", "*.bin", "*.json", "*.index.json")


def hf_fingerprint(folder: Path) -> str:
    """sha256 over the names and bytes of the folder's weight and config files."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted({p for pattern in HF_MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _create_hf(path: str, config: RunConfig) -> tuple[nn.Module, Any, str]:
    try:
        import transformers
    except ImportError as exc:
        raise CaptumSiftError(
            "--model hf:... needs transformers: pip install transformers (from a clone of captum_sift: "
            "pip install -c constraints.txt '.[hf]')"
        ) from exc
    if config.pretrained:
        raise CaptumSiftError("--pretrained does not apply to hf: models: their weights are read from the folder")
    folder = _hf_folder(path)
    try:
        with _offline():
            hf_config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise CaptumSiftError(f"cannot read the Hugging Face config in {path!r}: {_one_line(exc)}") from exc
    if hf_config.model_type == "vit_mae":
        raise CaptumSiftError(
            f"{path!r} is a ViT-MAE encoder: it drops a random share of the patch tokens at every forward "
            "(and shuffles the rest), so patches have no fixed place; MAE encoders are not supported - "
            "analyse a ViT fine-tuned from it (ViTForImageClassification)"
        )
    unknown = sorted(k for k, _ in config.model_kwargs if not hasattr(hf_config, k))
    if unknown:
        raise CaptumSiftError(f"--model-kwargs for hf: are fields of the folder's config; it has no {unknown}")
    for key, value in config.model_kwargs:
        setattr(hf_config, key, value)
    architectures = hf_config.architectures or []
    auto = (
        transformers.AutoModelForImageClassification
        if any(a.endswith(("ForImageClassification", "ForImageClassificationWithTeacher")) for a in architectures)
        else transformers.AutoModel
    )
    logs = transformers.utils.logging
    bars, verbosity = logs.is_progress_bar_enabled(), logs.get_verbosity()
    logs.disable_progress_bar()  # stderr is for the one-line errors; what the logs said is checked below
    logs.set_verbosity_error()
    try:
        with _offline():
            model, info = auto.from_pretrained(folder, config=hf_config, local_files_only=True,
                                               trust_remote_code=False, output_loading_info=True)  # fmt: skip
    except Exception as exc:
        raise CaptumSiftError(f"cannot load Hugging Face model {path!r} offline: {_one_line(exc)}") from exc
    finally:
        logs.set_verbosity(verbosity)
        if bars:
            logs.enable_progress_bar()
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        text = "; ".join(f"{k.replace('_', ' ')} ({len(v)}): {', '.join(map(str, v[:4]))}" for k, v in problems.items())
        raise CaptumSiftError(
            f"the weights in {path!r} do not fit its {type(model).__name__} (a part would run with random weights "
            f"or be dropped): {text}"
        )
    processor = None
    if (folder / "preprocessor_config.json").is_file():
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise CaptumSiftError(f"cannot read the image processor in {path!r}: {_one_line(exc)}") from exc
    return model, processor, f"hf:{path}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


def load_model(config: RunConfig) -> LoadedModel:
    """The model the config names, its adapter, and whether its weights are random."""
    from ..data.datasets import create_default_architecture, default_model

    if config.model is not None and config.model.startswith("hf:"):
        files_sha256 = hf_fingerprint(_hf_folder(config.model[3:]))
    else:
        files_sha256 = None
    if config.model is None and config.weights is None and not config.model_kwargs:
        if config.pretrained:
            raise CaptumSiftError("--pretrained needs --model: the embedded default is already trained")
        vit = as_vit(default_model(), mean=config.mean, std=config.std)
        return LoadedModel(vit, "embedded default: ViT trained on Fashion-MNIST", False, vit.img_size)
    state = _load_state(config.weights) if config.weights else None
    processor = None
    if config.model is None:
        model, name = create_default_architecture(), "default architecture"
    else:
        num_classes = None
        if state is not None:
            head = next((state[k] for k in ("head.weight", "heads.head.weight") if k in state), None)
            num_classes = int(head.shape[0]) if isinstance(head, torch.Tensor) else None
        model, processor, name = _create(config, num_classes)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise CaptumSiftError(f"weights {config.weights} do not fit {name}: {' '.join(first[:3])[:400]}") from exc
        name += f" + {config.weights}"
    hf = (config.model or "").startswith("hf:")
    random_weights = state is None and not config.pretrained and not hf
    if random_weights:
        name += " (random weights, seed 0)"
    elif config.pretrained:
        name += " (pretrained)"
    try:
        vit = as_vit(model.eval(), image_processor=processor, mean=config.mean, std=config.std)
    except IndexError as exc:  # an empty list of blocks (e.g. --model-kwargs depth=0)
        raise CaptumSiftError(f"expected a model with at least one attention block, got {name} with none") from exc
    if vit.depth < 1:
        raise CaptumSiftError(f"expected a model with at least one attention block, got {name} with none")
    img_size = vit.img_size
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None)
    if isinstance(size, dict) and size.get("height"):
        img_size = int(size["height"])
    return LoadedModel(vit, name, random_weights, img_size, files_sha256)


@dataclass
class _InMemory:
    images: torch.Tensor  # (N, C, S, S) pixels in [0, 1]
    labels: torch.Tensor
    source: str = ""  # what the data is made from, for the resume fingerprint

    def fingerprint(self) -> str:
        return self.source

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def load(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[tuple[str, str]]]:
        idx = torch.tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx], list(indices), []


def _data_source(full: bool) -> str:
    """What the built-in data is made from: the shipped file's sha256, or the idx files' sizes and times."""
    from ..data.datasets import FASHION_MNIST_ROOT, _checked_file, _sha256

    if not full:
        return "sha256:" + _sha256(_checked_file("subset"))
    files = sorted(FASHION_MNIST_ROOT.glob("t10k-*"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def load_data(config: RunConfig, loaded: LoadedModel) -> tuple[Any, str]:
    """The data source the config names (lazy for folders), and a description."""
    from ..data.datasets import DEFAULT_IMG_SIZE, ImageFolder, check_memory, default_dataset

    channels = loaded.vit.in_chans
    size = config.img_size or loaded.img_size or 224
    check_batch_memory(loaded.vit, size, min(config.batch_size, config.limit or config.batch_size), config.device)
    if config.images is not None:
        class_map = dict(config.class_map) if config.class_map is not None else None
        return ImageFolder(config.images, size, channels, class_map), f"image folder {config.images}"
    images, labels = default_dataset(full=config.data == "fashion-mnist-full")
    images, labels = images[: config.limit], labels[: config.limit]  # before resizing: only what is used
    check_memory(images.shape[0] * channels * size * size * 4 * 2, f"{images.shape[0]} images at {size} px")
    if channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if size != DEFAULT_IMG_SIZE:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 255).round() / 255
    full = config.data == "fashion-mnist-full"
    name = "Fashion-MNIST test set (10,000)" if full else "embedded Fashion-MNIST (1,000)"
    return _InMemory(images.contiguous(), labels, _data_source(full)), name


def check_batch_memory(vit: ViTAdapter, size: int, batch_size: int, device: str) -> None:
    """Refuse, with the figure, a batch whose attention maps cannot fit in memory (before any work).

    One block holds the attention scores and probabilities of every head,
    B x heads x T^2 float32 values each (T tokens), plus the captured
    probabilities of every block: (2 + depth) x B x heads x T^2 x 4 bytes.
    """
    from ..data.datasets import check_memory

    tokens = (size // vit.patch_size) ** 2 + vit.num_prefix_tokens
    need = (2 + vit.depth) * batch_size * vit.num_heads * tokens**2 * 4 + batch_size * vit.in_chans * size**2 * 4 * 8
    check_memory(need, f"a batch of {batch_size} images at {size} px ({tokens} tokens)", device)


@dataclass
class Run:
    config: RunConfig
    device: torch.device
    rank: int
    world: int
    loaded: LoadedModel
    source: Any
    data_name: str
    batches: list[list[int]]
    lock: Any = None
    warnings: list[str] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def finish(self) -> None:
        """After a successful run: remove this rank's partial sums (kept after a failure, for --resume);
        rank 0 also removes those of an earlier run with another number of processes."""
        _partial_path(self).unlink(missing_ok=True)
        if self.main:
            for path in _partial_files(self.config):
                path.unlink(missing_ok=True)

    def release(self) -> None:
        """Release the output folder's lock (after success or failure)."""
        if self.lock is not None and not self.lock.closed:
            release_lock(self.lock)

    @property
    def vit(self) -> ViTAdapter:
        return self.loaded.vit


def parse_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise CaptumSiftError(f"expected --device cpu, cuda or cuda:N, got {text!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaptumSiftError("--device cuda asked for, but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise CaptumSiftError(f"expected --device cpu, cuda or cuda:N, got {text!r}")
    return device


def prepare_out(out: Path, rank: int = 0) -> Any:
    """Create ``out`` (checked writable before any work) and lock it for this rank; -> the open lock file."""
    import fcntl

    if out.exists() and not out.is_dir():
        raise CaptumSiftError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CaptumSiftError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from exc
    lock = open(out / f".lock-rank{rank}", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise CaptumSiftError(f"the output folder {out} is in use by another captum-sift run") from None
    return lock


def release_lock(lock: Any) -> None:
    """Close a lock file of :func:`prepare_out` and remove it."""
    lock.close()
    Path(lock.name).unlink(missing_ok=True)


def on_every_rank(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank; if it raised CaptumSiftError on any, every rank raises that one message.

    So that under torchrun a bad input ends every process with the same line
    instead of leaving the others to die on a closed connection.
    """
    try:
        result, message = fn(), None
    except CaptumSiftError as exc:
        result, message = None, str(exc)
    message = next((m for m in all_gather_objects(message) if m), None)
    if message:
        raise CaptumSiftError(message)
    return result


def setup(config: RunConfig) -> Run:
    device = parse_device(config.device)
    rank, world = init_from_env(device)

    def build() -> Run:
        lock = prepare_out(config.out, rank)
        try:
            loaded = load_model(config)
            loaded.vit.model.to(device)
            source, data_name = load_data(config, loaded)
        except BaseException:
            lock.close()
            raise
        indices = list(range(len(source)))[: config.limit]
        shard = indices[rank::world]  # every image on exactly one rank
        batches = [shard[i : i + config.batch_size] for i in range(0, len(shard), config.batch_size)]
        return Run(config, device, rank, world, loaded, source, data_name, batches, lock)

    run = on_every_rank(build)
    if run.loaded.random_weights and rank == 0:
        print(RANDOM_WARNING, flush=True)
    return run


# -- checkpoints and the batch loop ----------------------------------------------------
def _partial_files(config: RunConfig) -> list[Path]:
    """The partial-sum files of this command in --out, of any number of processes."""
    import re

    pattern = re.compile(rf"\.partial-{re.escape(config.command)}-rank\d+-of-\d+\.json")
    return [p for p in config.out.glob(f".partial-{config.command}-rank*") if pattern.fullmatch(p.name)]


def _partial_path(run: Run) -> Path:
    return run.config.out / f".partial-{run.config.command}-rank{run.rank}-of-{run.world}.json"


def _digest(state: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def _save_partial(run: Run, state: dict[str, Any]) -> None:
    write_text_atomic(_partial_path(run), json.dumps({"state": state, "sha256": _digest(state)}))


def _load_partial(run: Run, settings: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """The partial state of an interrupted run (``--resume``), fully checked; None when starting fresh."""
    path = _partial_path(run)
    if not run.config.resume:
        return None
    others = sorted({int(p.name.rsplit("-of-", 1)[1][:-5]) for p in _partial_files(run.config)} - {run.world})
    if others and not path.exists():
        raise CaptumSiftError(
            f"--resume: the partial sums in {run.config.out} were written by {others[0]} process(es), this run has "
            f"{run.world}; resume with {others[0]} (torchrun --nproc_per_node {others[0]}) or run without --resume"
        )
    if not path.exists():
        return None
    advice = f"delete {path} or run without --resume to start fresh"
    try:
        document = json.loads(path.read_text())
        state = document["state"]
        damaged = document["sha256"] != _digest(state)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, RecursionError,
            OverflowError, ValueError) as exc:  # fmt: skip
        raise CaptumSiftError(f"--resume: {path} is damaged ({type(exc).__name__}); {advice}") from exc
    if damaged:
        raise CaptumSiftError(f"--resume: {path} does not match its checksum (damaged or edited); {advice}")
    old = state.get("settings") if isinstance(state, dict) else None
    if not isinstance(old, dict):
        raise CaptumSiftError(f"--resume: {path} holds no settings; {advice}")
    if old != settings:
        differ = sorted(k for k in set(settings) | set(old) if settings.get(k) != old.get(k))
        raise CaptumSiftError(f"--resume: {path} was written by another run; these settings differ: {differ}")
    done = state.get("batches_done")
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= len(run.batches):
        raise CaptumSiftError(f"--resume: {path} has batches_done={done!r}, not in [0, {len(run.batches)}]; {advice}")
    if not isinstance(state.get("skipped"), list):
        raise CaptumSiftError(f"--resume: {path} has no list of skipped files; {advice}")
    try:
        check(state)
    except (CaptumSiftError, KeyError, TypeError, ValueError, OverflowError, RecursionError, IndexError) as exc:
        raise CaptumSiftError(f"--resume: {path} holds invalid partial results ({exc}); {advice}") from exc
    return state


def _settings(run: Run) -> dict[str, Any]:
    from ..data.datasets import _sha256

    c = run.config
    settings = {
        "model": run.loaded.name, "model_kwargs": [list(kv) for kv in c.model_kwargs],
        "weights_sha256": _sha256(c.weights) if c.weights else None, "random_weights": run.loaded.random_weights,
        "model_files_sha256": run.loaded.files_sha256,
        "data": run.data_name, "data_fingerprint": run.source.fingerprint(), "images": len(run.source),
        "class_map": [list(kv) for kv in c.class_map] if c.class_map else None,
        "img_size": run.source.size, "limit": c.limit,
        "batch_size": c.batch_size, "gamma": c.theta.gamma, "weighted": c.theta.weighted,
        "backend": c.theta.keypoint_backend, "mean": list(run.vit.mean), "std": list(run.vit.std),
        "world_size": run.world, "captum_sift": __version__,
    }  # fmt: skip
    if c.command == "mask-eval":
        settings |= {"ratios": list(c.ratios), "modes": list(c.modes), "fill": c.fill, "seed": c.seed}
    if c.command == "compare":
        settings |= {"methods": list(c.methods), "fill": c.fill, "steps": c.steps, "ig_steps": c.ig_steps,
                     "quantus": c.quantus}  # fmt: skip
    return settings


def _batch_loop(
    run: Run,
    settings: dict[str, Any],
    restore: Callable[[dict[str, Any]], None],
    step: Callable[[torch.Tensor, torch.Tensor, list[int]], None],
    snapshot: Callable[[], dict[str, Any]],
) -> list[list[str]]:
    """Resume, run ``step`` on every batch of this rank, save partial sums every few batches; -> skipped files."""
    from tqdm.auto import tqdm

    partial = on_every_rank(lambda: _load_partial(run, settings, restore))
    done, skipped = (partial["batches_done"], partial["skipped"]) if partial else (0, [])
    bar = tqdm(total=len(run.batches), initial=done, desc=run.config.command, unit="batch",
               disable=run.config.quiet or not run.main)  # fmt: skip

    def loop() -> None:
        nonlocal skipped
        for b in range(done, len(run.batches)):
            images, labels, read, bad = run.source.load(run.batches[b])
            skipped += [list(item) for item in bad]
            if images.shape[0]:
                step(images.to(run.device), labels, read)
            bar.update(1)
            if (b + 1) % run.config.save_every == 0 or b + 1 == len(run.batches):
                _save_partial(run, {"settings": settings, "batches_done": b + 1, "skipped": skipped, **snapshot()})

    try:
        on_every_rank(loop)  # an error on one rank ends every rank with its message
    finally:
        bar.close()
    return skipped


def _versions() -> dict[str, str]:
    import captum
    import kornia
    import timm
    import torchvision

    versions = {
        "captum_sift": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "captum": captum.__version__, "kornia": kornia.__version__,
        "python": platform.python_version(),
    }  # fmt: skip
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    return versions


def _gather_skipped(skipped: list[list[str]]) -> list[list[str]]:
    return [item for part in all_gather_objects(skipped) for item in part]


# -- analyze -------------------------------------------------------------------------
def run_analyze(config: RunConfig) -> None:
    from ..theta.analysis import analyze
    from ..theta.report import InterrelationReport

    run = setup(config)
    try:
        settings = _settings(run)
        holder: dict[str, InterrelationReport | None] = {"total": None}

        def restore(partial: dict[str, Any]) -> None:
            report = InterrelationReport.from_dict(partial["report"]) if partial["report"] is not None else None
            if report is not None:
                expected = (list(range(run.vit.depth)), run.vit.num_heads)
                done_images = sum(len(b) for b in run.batches[: partial["batches_done"]])
                if (report.layers, report.num_heads) != expected or report.num_images > done_images:
                    raise CaptumSiftError(
                        f"expected a report of layers and heads {expected} and at most {done_images} images, "
                        f"got {report.layers}, {report.num_heads} and {report.num_images}"
                    )
                _check_sum_ranges(report)
            holder["total"] = report

        def step(images: torch.Tensor, _labels: torch.Tensor, read: list[int]) -> None:
            part = analyze(run.vit, images, settings=config.theta, image_space="pixel").without_per_image()
            part = part.with_image_index(read)  # the stage bootstrap takes the images in data-set order
            holder["total"] = part if holder["total"] is None else holder["total"].merge(part)

        def snapshot() -> dict[str, Any]:
            return {"report": holder["total"].to_dict(per_image=False) if holder["total"] is not None else None}

        skipped = _batch_loop(run, settings, restore, step, snapshot)
        total = holder["total"] if holder["total"] is not None else _empty_report(run)  # a rank with no image joins too
        total.all_reduce(run.device)
        _conclude(
            run, total.num_images, "analysed", skipped, lambda files: _write_analysis(run, total, settings, files)
        )
    finally:
        run.release()


#: Every file analyze, mask-eval, compare and keypoints write into --out.
OUTPUT_FILES = (
    "report.json", "per_layer_head.csv", "index.html", "keypoints.png", "interrelation.png", "focus_index.png",
    "stages.png", "heatmaps.png", "spurious.png", "spurious_positions.png", "mask_eval.csv", "mask_eval.png",
    "masked_examples.png", "compare.csv", "compare.json", "deletion.png", "insertion.png", "sanity.png",
    "overlays.png", "counts.csv", "summary.json",
)  # fmt: skip


def _check_sum_ranges(report: Any) -> None:
    """Partial sums within what their images can give: θ in [0, 1] and the focus index in [0, log N] per image."""
    import math

    patches = report.grid_size[0] * report.grid_size[1]
    for name, high in (("kk", 1.0), ("nk", 1.0), ("focus", math.log(max(patches, 2)))):
        sums, counts = report.sums[name].double(), report.counts[name].double()
        limit = counts * high * (1 + 1e-9) + 1e-9
        if not bool(((sums >= -1e-9) & (sums <= limit)).all()):
            raise CaptumSiftError(f"expected sums of {name!r} in [0, {high:.4g} x images], got up to {sums.max():.4g}")


def _conclude(run: Run, images: int, done: str, skipped: list[list[str]], write: Callable[[list], None]) -> None:
    """After the reduction, on every rank: refuse an empty run, gather the skipped files, rank 0 writes."""
    if images == 0:  # the same on every rank after the reduction, so no rank is left waiting
        raise CaptumSiftError(f"no image could be {done} (all were unreadable or the selection is empty)")
    skipped = _gather_skipped(skipped)
    if run.main:
        for name in OUTPUT_FILES:  # a previous run's outputs would stand beside these as if they belonged
            (run.config.out / name).unlink(missing_ok=True)
        write(skipped)
    barrier()
    run.finish()


def _empty_report(run: Run):
    """A report of no image with this run's layers, heads and grid (zero sums and counts)."""
    from ..theta.report import STORED, InterrelationReport

    shape = (run.vit.depth, run.vit.num_heads)
    side = run.source.size // run.vit.patch_size
    return InterrelationReport(
        layers=list(range(run.vit.depth)), num_heads=shape[1], grid_size=(side, side), settings={}, num_images=0,
        sums={n: torch.zeros(shape, dtype=torch.float64) for n in STORED},
        counts={n: torch.zeros(shape, dtype=torch.long) for n in STORED},
        curves={n: torch.zeros(0, shape[0]) for n in ("kk", "focus")},
        positions={n: torch.zeros(side * side, dtype=torch.long) for n in ("key", "spurious")},
    )  # fmt: skip


def _warnings(run: Run) -> list[str]:
    return ([RANDOM_WARNING] if run.loaded.random_weights else []) + run.warnings


def _first_images(run: Run, n: int = 8) -> torch.Tensor:
    first = run.batches[0] if run.batches else []
    images, *_ = run.source.load(first[:n])
    return images


def _write_analysis(run: Run, report, settings: dict[str, Any], skipped: list[list[str]]) -> None:
    import matplotlib.pyplot as plt

    from .. import viz
    from ..keypoints import detect_keypoints
    from ..theta.analysis import analyze
    from ..theta.report import QUANTITIES
    from ..theta.stages import find_stages

    out = run.config.out
    patch = run.vit.patch_size
    figures = {}
    try:
        stages = find_stages(report)
        stage_info: dict[str, Any] = stages.to_dict()
    except CaptumSiftError as exc:
        stages, stage_info = None, {"error": str(exc)}
    examples = _first_images(run)
    sample = None  # one analysis of the example images serves the heatmaps and the spurious figure
    if examples.shape[0]:
        sample = analyze(run.vit, examples.to(run.device), settings=run.config.theta, image_space="pixel")
        keypoints = detect_keypoints(examples, backend=run.config.theta.keypoint_backend)
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
        if sample is not None:
            viz.plot_stage_heatmaps(sample, stages, image_index=0, image=examples[0]).savefig(
                out / "heatmaps.png", dpi=110
            )
            figures["heatmaps.png"] = "attention of one query patch at a layer of each stage (Fig. 7b)"
    if sample is not None:
        from ..theta.analysis import patch_scores_from_report

        scores = patch_scores_from_report(sample).cpu()
        fig = viz.plot_spurious(examples, scores, sample.keypoint_counts, patch,
                                min_keypoints=run.config.theta.min_keypoints)  # fmt: skip
        fig.savefig(out / "spurious.png", dpi=100)
        figures["spurious.png"] = "spurious patches (§5.1): Key patches whose θ < 0.5, outlined in red"
    if report.positions is not None:
        viz.plot_spurious_positions(report).figure.savefig(out / "spurious_positions.png", dpi=110)
        figures["spurious_positions.png"] = "how often each patch position is flagged spurious among its Key images"
    plt.close("all")
    data = report.to_dict(per_image=False)
    document = {
        "settings": settings, "versions": _versions(), "num_images": report.num_images,
        "layers": report.layers, "num_heads": report.num_heads, "grid_size": list(report.grid_size),
        "means": data["means"], "image_counts": {n: report.image_count(n).tolist() for n in ("kk", "nk", "focus")},
        "layer_means": {n: report.layer_mean(n).tolist() for n in QUANTITIES},
        "sums": data["sums"], "counts": data["counts"], "curves": data.get("curves"), "stages": stage_info,
        "skipped_files": skipped,
        "data_files": "report.json, per_layer_head.csv",
        "warnings": _warnings(run),
        "spurious_positions": (
            {n: report.positions[n].view(*report.grid_size).tolist() for n in ("key", "spurious")}
            if report.positions is not None else None
        ),
    }  # fmt: skip
    write_text_atomic(out / "report.json", json.dumps(nan_to_none(document), indent=1))
    report.save_csv(out / "per_layer_head.csv")
    _write_index(out, "captum-sift analyze", document, figures)
    print(f"analysed {report.num_images} images; {_stage_line(stage_info)}; wrote {out}/index.html")


def _stage_line(info: dict[str, Any]) -> str:
    """One line on the stages for stdout and index.html."""
    if "error" in info:
        return f"no stages: {info['error']}"
    conf = info.get("confidence") or {}
    text = ", ".join(f"{k} {v:.2f}" for k, v in conf.items() if v is not None) or "none"
    head = "stages" if info.get("clear", True) else "NO CLEAR STAGES (best split shown)"
    return (f"{head}: Retrieval {info['retrieval']}, Capture {info['capture']}, Coach {info['coach']} "
            f"(boundary confidence: {text}); {info.get('verdict', '')}")  # fmt: skip


def _write_index(out: Path, title: str, document: dict[str, Any], figures: dict[str, str]) -> None:
    settings = document["settings"]
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items()
    )
    summary = "".join(
        f'<p style="color:#b00;font-weight:bold">{html.escape(w)}</p>' for w in document.get("warnings", [])
    )
    if "stages" in document and "error" not in document["stages"]:
        st = document["stages"]
        style = "" if st.get("clear", True) else ' style="color:#b00;font-weight:bold"'
        summary += f"<p{style}>{html.escape(_stage_line(st))}.</p><p>{html.escape(st['rule'])}</p>"
    elif "stages" in document:
        summary += f"<p>No stages: {html.escape(document['stages']['error'])}</p>"
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
    files = ", ".join(
        f'<a href="{html.escape(name)}">{html.escape(name)}</a>'
        for name in (n.strip() for n in document.get("data_files", "report.json").split(","))
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head>
<body><h1>{title}</h1><p>{document.get("num_images", "")} images.</p>{summary}
<table>{rows}</table>{figs}
<p>Data: {files}.</p></body></html>
"""
    write_text_atomic(out / "index.html", page)


# -- mask-eval -----------------------------------------------------------------------
# -- compare -------------------------------------------------------------------------
def run_compare(config: RunConfig) -> None:
    """Attribution methods side by side (:func:`captum_sift.faithfulness.compare.compare`), gathered over ranks."""
    from ..faithfulness.compare import ComparisonTable, compare
    from ..masking.evaluate import read_logits
    from ..vit.inputs import to_model_and_pixels

    fill = parse_fill(config.fill)
    run = setup(config)
    try:
        settings = _settings(run)
        holder = {"table": ComparisonTable()}

        def restore(state: dict[str, Any]) -> None:
            holder["table"] = ComparisonTable.from_dict(state["table"])

        def step(images: torch.Tensor, _labels: torch.Tensor, read: list[int]) -> None:
            with torch.no_grad(), eval_mode(run.vit.model):  # explain what the model predicts
                logits = run.vit.logits(to_model_and_pixels(run.vit, images, "pixel")[0])
            targets = read_logits(
                logits, logits.shape[0], f"the batch from image {read[0]} (its predicted classes)"
            ).argmax(dim=1)
            part = compare(run.vit, images, targets, config.methods, image_space="pixel", steps=config.steps,
                           fill=fill, quantus_metrics=config.quantus, ig_steps=config.ig_steps,
                           batch_size=len(images), progress=False)  # fmt: skip
            holder["table"] = holder["table"].merge(part) if holder["table"].values else part

        def snapshot() -> dict[str, Any]:
            return {"table": holder["table"].to_dict()}

        skipped = _batch_loop(run, settings, restore, step, snapshot)
        table = _gather_tables(holder["table"])
        first = next(iter(table.values.values()), {})
        images = len(first.get("deletion_auc", []))
        _conclude(run, images, "compared", skipped, lambda files: _write_compare(run, table, settings, files))
    finally:
        run.release()


def _gather_tables(table: Any) -> Any:
    """Every rank's comparison table merged (every rank gets the whole)."""
    from ..faithfulness.compare import ComparisonTable

    parts = all_gather_objects(table.to_dict())
    if len(parts) == 1:
        return table
    merged = ComparisonTable()
    for part in parts:
        other = ComparisonTable.from_dict(part)
        if other.values:
            merged = merged.merge(other) if merged.values else other
    return merged


def _write_compare(run: Run, table: Any, settings: dict[str, Any], skipped: list[list[str]]) -> None:
    import matplotlib.pyplot as plt

    from ..faithfulness import explain, patch_attribution
    from ..masking.evaluate import read_logits, write_rows_csv
    from ..vit.inputs import to_model_and_pixels

    out = run.config.out
    rows = table.rows()
    write_rows_csv(out / "compare.csv", rows)
    figures = {}
    n_images = next(iter(table.curves.values()))["n"]
    for kind in ("deletion", "insertion"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, entry in table.curves.items():
            ax.plot(entry["points"], [v / entry["n"] for v in entry[kind]], "-o", ms=3, label=method)
        ax.set_xlabel("share of patches " + ("masked, most relevant first" if kind == "deletion" else "revealed"))
        ax.set_ylabel("probability of the predicted class")
        ax.set_title(f"{kind} curves, mean over {n_images} images", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{kind}.png", dpi=110)
        figures[f"{kind}.png"] = f"{kind} curve of every method (AUC in compare.csv)"
    names = [m for m in table.values if "mprt_complexity_change" in table.values[m]]
    if names:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(names, [table.mean(m, "mprt_complexity_change") for m in names])
        ax.set_ylabel("complexity change, randomised weights")
        ax.set_title("parameter-randomisation sanity check (Quantus EfficientMPRT): ~0 = insensitive", fontsize=8)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "sanity.png", dpi=110)
        figures["sanity.png"] = "does each method's attribution change when the model's weights are randomised?"
    examples = _first_images(run, 4).to(run.device)
    if examples.shape[0]:
        x, _ = to_model_and_pixels(run.vit, examples, "pixel")
        with torch.no_grad(), eval_mode(run.vit.model):
            targets = read_logits(run.vit.logits(x), x.shape[0], "the overlay images").argmax(dim=1)
        methods, grid, (h, w) = list(table.values), run.vit.grid(x), examples.shape[-2:]
        fig, axes = plt.subplots(len(methods), len(x), figsize=(2.2 * len(x), 2.2 * len(methods)), squeeze=False)
        for r, method in enumerate(methods):
            attributions = explain(method, run.vit, x, targets, ig_steps=run.config.ig_steps)
            scores = patch_attribution(attributions, run.vit.patch_size).detach().cpu()
            for c in range(len(x)):
                ax = axes[r][c]
                ax.imshow(examples[c].cpu().permute(1, 2, 0).squeeze().numpy(), cmap="gray", extent=(0, w, h, 0))
                ax.imshow(scores[c].view(*grid).numpy(), cmap="jet", alpha=0.5, extent=(0, w, h, 0),
                          interpolation="nearest")  # fmt: skip
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(method, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "overlays.png", dpi=90)
        figures["overlays.png"] = "every method's per-patch relevance on the same images (one row per method)"
    plt.close("all")
    # "images" of the settings counts the data source; the table holds the images compared (--limit, skipped files)
    shown = {("images_in_data" if k == "images" else k): v for k, v in settings.items()}
    document = {"settings": {"images_compared": n_images, **shown}, "versions": _versions(), "num_images": n_images,
                "rows": rows, "skipped_files": skipped, "table": str(table), "warnings": _warnings(run),
                "curves": table.curves, "data_files": "compare.json, compare.csv"}  # fmt: skip
    (out / "compare.json").write_text(json.dumps(nan_to_none(document), indent=1))
    _write_index(out, "captum-sift compare", document, figures)
    print(table)
    print(f"wrote {out}/" + ", ".join(["compare.csv", "compare.json", *figures, "index.html"]))


def run_mask_eval(config: RunConfig) -> None:
    from ..masking.evaluate import MaskingTable, evaluate_batch

    fill = parse_fill(config.fill)
    run = setup(config)
    try:
        settings = _settings(run)
        table = MaskingTable(settings=settings)

        def step(images: torch.Tensor, labels: torch.Tensor, read: list[int]) -> None:
            if bool((labels < 0).any()):
                raise CaptumSiftError("mask-eval needs labels: put the images in one sub-folder per class")
            evaluate_batch(table, run.vit, images, labels, torch.tensor(read), ratios=config.ratios, modes=config.modes,
                           fill=fill, seed=config.seed, settings=config.theta, image_space="pixel")  # fmt: skip

        _check_classes(run)
        with eval_mode(run.vit.model):
            cells = len(config.modes) * len(config.ratios)
            skipped = _batch_loop(run, settings, lambda state: table.load_state(state, cells), step, table.state)
        table.all_reduce(config.modes, config.ratios, run.device)
        _conclude(run, table.total, "evaluated", skipped, lambda files: _write_mask_eval(run, table, settings, files))
    finally:
        run.release()


def _check_classes(run: Run) -> None:
    """Folder labels are sub-folder indices: warn when their number differs from the model's outputs."""
    from ..data.datasets import ImageFolder

    if not isinstance(run.source, ImageFolder) or run.source.class_map is not None:
        return
    from ..vit.inputs import to_model_and_pixels

    with torch.no_grad(), eval_mode(run.vit.model):
        probe = torch.full((1, run.vit.in_chans, run.source.size, run.source.size), 0.5, device=run.device)
        outputs = int(run.vit.logits(to_model_and_pixels(run.vit, probe, "pixel")[0]).shape[1])
    folders = len(run.source.classes)
    if folders != outputs:
        message = (
            f"WARNING: the image folder has {folders} class sub-folders, labelled 0..{folders - 1} in sorted order, "
            f"but the model has {outputs} outputs: accuracy compares folder indices with the model's classes; "
            'pass --class-map FILE.json ({"folder": class index}) if they differ'
        )
        run.warnings.append(message)
        if run.main:
            print(message, flush=True)


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


#: The largest |--fill| (model space: normalised inputs are a few units; float32 overflows at 3.4e38).
MAX_FILL = 1e6


def _write_mask_eval(run: Run, table, settings: dict[str, Any], skipped: list[list[str]]) -> None:
    import matplotlib.pyplot as plt

    from .. import viz
    from ..masking.prompt import patch_scores

    out = run.config.out
    table.save_csv(out / "mask_eval.csv")
    viz.plot_mask_curve(table).figure.savefig(out / "mask_eval.png", dpi=110)
    figures = {"mask_eval.png": "accuracy vs mask ratio per mode, 95 % bands, unmasked baseline"}
    examples = _first_images(run, 1)
    if examples.shape[0]:
        scores = patch_scores(run.vit, examples.to(run.device), settings=run.config.theta, image_space="pixel")
        ratios = tuple(float(r) for r in run.config.ratios)
        viz.plot_mask_grid(examples[0], scores[0].cpu(), run.vit.patch_size, ratios, table=table,
                           fill=parse_fill(run.config.fill), mean=run.vit.mean, std=run.vit.std,
                           ).savefig(out / "masked_examples.png", dpi=110)  # fmt: skip
        figures["masked_examples.png"] = "one image masked Top (row 1) and Bottom (row 2) at each ratio (Fig. 8)"
    plt.close("all")
    document = {"settings": settings, "versions": _versions(), "num_images": table.total, "rows": table.rows(),
                "skipped_files": skipped, "table": str(table), "warnings": _warnings(run),
                "data_files": "report.json, mask_eval.csv"}  # fmt: skip
    write_text_atomic(out / "report.json", json.dumps(nan_to_none(document), indent=1))
    _write_index(out, "captum-sift mask-eval", document, figures)
    print(table)
    print(f"wrote {out}/mask_eval.csv, mask_eval.png, masked_examples.png, index.html")


# -- pretrain ------------------------------------------------------------------------
def pretrain_data(
    data: str, img_size: int, limit: int | None
) -> tuple[str, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(name, pre-training images, their labels, probe test set), pixels in [0, 1] at ``img_size``."""
    from ..data.datasets import default_dataset, fashion_mnist_to_model_size, load_fashion_mnist

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

    from ..data.datasets import check_memory
    from ..mae.masking import KeyShareSchedule
    from ..mae.pretrain import PretrainConfig, cached_keypoint_counts, pretrain

    device = parse_device(args.device)
    if args.limit is not None and args.limit < 1:
        raise CaptumSiftError(f"expected --limit >= 1, got {args.limit}")
    if args.schedule_every < 1:
        raise CaptumSiftError(f"expected --schedule-every >= 1, got {args.schedule_every}")
    config = PretrainConfig(  # checks every number before any work
        masking=args.masking, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, mask_ratio=args.mask_ratio,
        schedule=asdict(KeyShareSchedule(every=args.schedule_every)), seed=args.seed, probe_every=args.probe_every,
        img_size=args.img_size, patch_size=args.patch_size,
    )  # fmt: skip
    n_images = 1000 if args.data == "embedded" else min(args.limit, 60000) + 2000
    tokens = (config.img_size // config.patch_size) ** 2 + 1
    check_memory(  # the images in float32 (twice while resizing), and one batch's attention with its gradients
        n_images * config.img_size**2 * 4 * 3
        + config.batch_size * config.num_heads * tokens**2 * 4 * 3 * (config.depth + config.decoder_depth),
        f"pre-training on {n_images} images at --img-size {config.img_size} with --batch-size {config.batch_size}",
        device,
    )
    cache = args.cache_dir if args.cache_dir is not None else args.out
    if cache.exists() and not cache.is_dir():
        raise CaptumSiftError(f"--cache-dir {cache} exists and is not a folder")
    rank, _ = init_from_env(device)
    lock = on_every_rank(lambda: prepare_out(args.out, rank))
    try:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaptumSiftError(f"cannot create the keypoint cache folder {cache}: {exc.strerror or exc}") from exc
        name, images, labels, probe_test = pretrain_data(args.data, args.img_size, args.limit)
        counts = cached_keypoint_counts(images, args.patch_size, cache, name)
        history = pretrain(config, images, counts, (images[:5000], labels[:5000]), probe_test, args.out,
                           resume=args.resume, device=device, progress=not args.quiet)  # fmt: skip
        if rank == 0:
            key_share = float((counts > 0).float().mean())
            document = {**asdict(config), "data": name, "key_patch_share": key_share, "versions": _versions()}
            write_text_atomic(args.out / "config.json", json.dumps(document, indent=1))
            for row in history:
                print(f"epoch {row['epoch']:3d}  β {row['key_share']:.2f}  loss {row['loss']:.4f}  "
                      f"probe accuracy {row['probe_accuracy']:.4f}")  # fmt: skip
            print(f"wrote {args.out}/history.csv, checkpoint.pt, config.json")
        barrier()
    finally:
        release_lock(lock)
