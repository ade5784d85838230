"""The model a command names: timm, torchvision, a Hugging Face folder, or the embedded default."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
import torch.hub
import torchvision
from torch import nn

from ..data import create_default_architecture, default_model
from ..errors import CaptumSiftError
from ..vit.adapter import ViTAdapter, as_vit
from .options import RunOptions, one_line

__all__ = ["LOADER_OPTIONS", "RANDOM_WARNING", "LoadedModel", "hf_fingerprint", "load_model"]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CaptumSiftError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = one_line(exc) or type(exc).__name__
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


def _check_model_kwargs(options: RunOptions) -> None:
    loaders = sorted(k for k, _ in options.model_kwargs if k in LOADER_OPTIONS)
    if loaders:
        raise CaptumSiftError(
            f"--model-kwargs takes constructor options, not loader options: {loaders} "
            "(a folder's Python code is never run; weights come from --weights, --pretrained or the hf folder)"
        )


def _create(options: RunOptions, num_classes: int | None) -> tuple[nn.Module, Any, str]:
    """(network, Hugging Face image processor or None, name) for ``--model``."""
    spec, kwargs = options.model or "", dict(options.model_kwargs)
    _check_model_kwargs(options)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    with torch.random.fork_rng():  # the same random weights in every process and run
        torch.manual_seed(0)
        if spec.startswith("hf:"):
            return _create_hf(spec[3:], options)
        if spec.startswith("torchvision:"):
            name = spec[len("torchvision:") :]
            if options.img_size:
                kwargs.setdefault("image_size", options.img_size)
            try:
                weights = None
                if options.pretrained:
                    weights = torchvision.models.get_model_weights(name).DEFAULT
                    _check_torch_hub_cache(weights.url, f"torchvision:{name}")
                model = torchvision.models.get_model(name, weights=weights, **kwargs)
            except CaptumSiftError:
                raise
            except Exception as exc:  # unknown name, bad option, or weights that cannot be read
                raise CaptumSiftError(f"cannot create torchvision model {name!r}: {one_line(exc)}") from exc
            return model, None, spec
        import timm  # startup cost: seconds, paid only by a command that builds a timm model

        if options.img_size:
            kwargs.setdefault("img_size", options.img_size)
        try:
            if options.pretrained:
                _check_timm_cache(spec)
            with _offline():
                model = timm.create_model(spec, pretrained=options.pretrained, **kwargs)
        except CaptumSiftError:
            raise
        except Exception as exc:
            raise CaptumSiftError(f"cannot create timm model {spec!r}: {one_line(exc)}") from exc
        return model, None, spec


def _not_cached(name: str, where: str) -> CaptumSiftError:
    return CaptumSiftError(
        f"--pretrained: the weights of {name} are not in the local cache ({where}); nothing is downloaded at run "
        "time: fetch them once online (e.g. by creating the model in Python), or pass --weights FILE"
    )


def _check_torch_hub_cache(url: str, name: str) -> None:
    """torch.hub's download cache holds the file of ``url`` (else one line, at once)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
    if not path.is_file():
        raise _not_cached(name, str(path))


def _check_timm_cache(name: str) -> None:
    """timm's pretrained weights of ``name`` are cached (Hugging Face hub cache or torch.hub's), else one line."""
    import timm.models  # startup cost, as above

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown name: timm.create_model says so
        return
    if cfg is None:
        return
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        names = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        for filename in (*names, getattr(cfg, "hf_hub_filename", None)):
            cached = filename and huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(cached, str):
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
        self.old = huggingface_hub.constants.HF_HUB_OFFLINE
        huggingface_hub.constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc: object) -> None:
        for key, value in self.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        huggingface_hub.constants.HF_HUB_OFFLINE = self.old


def _hf_folder(path: str) -> Path:
    """The save_pretrained folder of ``hf:PATH`` (a folder path, or a repo id in the local cache)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    looks_like_id = path.count("/") <= 1 and not path.startswith(("/", ".", "~")) and path.strip() == path != ""
    if looks_like_id:
        try:
            with _offline():
                return Path(huggingface_hub.snapshot_download(path, local_files_only=True))
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
    digest = hashlib.sha256()
    files = sorted({p for pattern in HF_MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _create_hf(path: str, options: RunOptions) -> tuple[nn.Module, Any, str]:
    try:
        import transformers  # optional dependency (extra hf)
    except ImportError as exc:
        raise CaptumSiftError(
            "--model hf:... needs transformers: pip install transformers (from a clone of captum_sift: "
            "pip install -c constraints.txt '.[hf]')"
        ) from exc
    if options.pretrained:
        raise CaptumSiftError("--pretrained does not apply to hf: models: their weights are read from the folder")
    folder = _hf_folder(path)
    try:
        with _offline():
            hf_config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise CaptumSiftError(f"cannot read the Hugging Face config in {path!r}: {one_line(exc)}") from exc
    if hf_config.model_type == "vit_mae":
        raise CaptumSiftError(
            f"{path!r} is a ViT-MAE encoder: it drops a random share of the patch tokens at every forward "
            "(and shuffles the rest), so patches have no fixed place; MAE encoders are not supported - "
            "analyse a ViT fine-tuned from it (ViTForImageClassification)"
        )
    unknown = sorted(k for k, _ in options.model_kwargs if not hasattr(hf_config, k))
    if unknown:
        raise CaptumSiftError(f"--model-kwargs for hf: are fields of the folder's config; it has no {unknown}")
    for key, value in options.model_kwargs:
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
        raise CaptumSiftError(f"cannot load Hugging Face model {path!r} offline: {one_line(exc)}") from exc
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
    if (folder / "preprocessor_options.json").is_file():
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise CaptumSiftError(f"cannot read the image processor in {path!r}: {one_line(exc)}") from exc
    return model, processor, f"hf:{path}"


def load_model(options: RunOptions) -> LoadedModel:
    """The model the options name, its adapter, and whether its weights are random."""
    if options.model is not None and options.model.startswith("hf:"):
        files_sha256 = hf_fingerprint(_hf_folder(options.model[3:]))
    else:
        files_sha256 = None
    if options.model is None and options.weights is None and not options.model_kwargs:
        if options.pretrained:
            raise CaptumSiftError("--pretrained needs --model: the embedded default is already trained")
        vit = as_vit(default_model(), mean=options.mean, std=options.std)
        return LoadedModel(vit, "embedded default: ViT trained on Fashion-MNIST", False, vit.img_size)
    state = _load_state(options.weights) if options.weights else None
    processor = None
    if options.model is None:
        model, name = create_default_architecture(), "default architecture"
    else:
        num_classes = None
        if state is not None:
            head = next((state[k] for k in ("head.weight", "heads.head.weight") if k in state), None)
            num_classes = int(head.shape[0]) if isinstance(head, torch.Tensor) else None
        model, processor, name = _create(options, num_classes)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise CaptumSiftError(f"weights {options.weights} do not fit {name}: {' '.join(first[:3])[:400]}") from exc
        name += f" + {options.weights}"
    hf = (options.model or "").startswith("hf:")
    random_weights = state is None and not options.pretrained and not hf
    if random_weights:
        name += " (random weights, seed 0)"
    elif options.pretrained:
        name += " (pretrained)"
    try:
        vit = as_vit(model.eval(), image_processor=processor, mean=options.mean, std=options.std)
    except IndexError as exc:  # an empty list of blocks (e.g. --model-kwargs depth=0)
        raise CaptumSiftError(f"expected a model with at least one attention block, got {name} with none") from exc
    if vit.depth < 1:
        raise CaptumSiftError(f"expected a model with at least one attention block, got {name} with none")
    img_size = vit.img_size
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None)
    if isinstance(size, dict) and size.get("height"):
        img_size = int(size["height"])
    return LoadedModel(vit, name, random_weights, img_size, files_sha256)
