"""MAE pre-training with random or guided masking, a linear probe, checkpoints and DDP.

Everything random is derived from (seed, epoch, step), never from a global RNG
state, so ``resume`` continues exactly, and under ``torchrun`` the ranks split
each global batch (and its masking noise) so that the per-epoch losses match
one process up to float tolerance.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import check_int, check_number
from .._io import atomic_path
from ..errors import CaptumSiftError
from .masking import KeyShareSchedule
from .model import MaskedAutoencoder

__all__ = ["MAX_PRETRAIN_SEED", "PretrainConfig", "cached_keypoint_counts", "linear_probe", "pretrain"]


#: The largest seed: step generators are seeded with (seed x 100003 + epoch) x 100003 + step < 2**64.
MAX_PRETRAIN_SEED = 2**30 - 1


@dataclass
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain` (the defaults fit a 2-core CPU)."""

    masking: str = "guided"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    mask_ratio: float = 0.75
    schedule: dict[str, Any] = field(default_factory=lambda: asdict(KeyShareSchedule()))
    seed: int = 0
    probe_every: int = 1
    img_size: int = 112
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    decoder_dim: int = 32
    decoder_depth: int = 1
    pixel_mean: float = 0.2860  # input normalisation (Fashion-MNIST's statistics by default)
    pixel_std: float = 0.3530

    def __post_init__(self) -> None:
        # Stored as Python numbers (numpy and 0-d tensor numbers accepted), so that asdict() is JSON-ready.
        for name in ("epochs", "batch_size", "probe_every", "img_size", "patch_size", "in_chans", "embed_dim",
                     "depth", "num_heads", "decoder_dim", "decoder_depth"):  # fmt: skip
            setattr(self, name, check_int(getattr(self, name), name, low=1))
        for name in ("lr", "pixel_std"):
            setattr(self, name, check_number(getattr(self, name), name, 0, low_open=True))
        self.weight_decay = check_number(self.weight_decay, "weight_decay")
        self.seed = check_int(self.seed, "seed", 0, MAX_PRETRAIN_SEED)
        self.mask_ratio = check_number(self.mask_ratio, "mask_ratio", 0, 1, low_open=True, high_open=True)
        if self.img_size % self.patch_size:
            raise CaptumSiftError(
                f"expected img_size a multiple of patch_size, got {self.img_size} and {self.patch_size}"
            )

    def build(self) -> MaskedAutoencoder:
        import timm

        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            encoder = timm.create_model(
                "vit_tiny_patch16_224", pretrained=False, img_size=self.img_size, patch_size=self.patch_size,
                in_chans=self.in_chans, embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                num_classes=0,
            )  # fmt: skip
            return MaskedAutoencoder(encoder, decoder_dim=self.decoder_dim, decoder_depth=self.decoder_depth,
                                     decoder_heads=4, mask_ratio=self.mask_ratio, masking=self.masking)  # fmt: skip


def cached_keypoint_counts(
    images: torch.Tensor, patch_size: int, cache_dir: str | Path | None, dataset: str, **detector: Any
) -> torch.Tensor:
    """:func:`~captum_sift.count_keypoints` of a data set, computed once and cached.

    The file name is keyed by the data set name, the image size, the patch
    size, the detector settings and a hash of the image bytes.
    """
    from ..keypoints import count_keypoints

    settings = json.dumps({"patch": patch_size, "shape": list(images.shape), **detector}, sort_keys=True)
    digest = hashlib.sha1(settings.encode() + (images * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"keypoints-{dataset}-{images.shape[-1]}px-p{patch_size}-{digest[:16]}.pt"
        if path.exists():
            try:
                cached = torch.load(path, weights_only=True)
            except Exception as exc:
                raise CaptumSiftError(f"keypoint cache {path} is damaged ({type(exc).__name__}); delete it") from exc
            grid = (images.shape[-2] // patch_size) * (images.shape[-1] // patch_size)
            if (
                not isinstance(cached, torch.Tensor)
                or tuple(cached.shape) != (images.shape[0], grid)
                or cached.is_floating_point()
                or cached.is_complex()
                or cached.dtype == torch.bool
                or (cached.numel() and int(cached.min()) < 0)
            ):
                raise CaptumSiftError(
                    f"keypoint cache {path} does not hold ({images.shape[0]}, {grid}) integer counts >= 0; delete it"
                )
            return cached
    counts = count_keypoints(images, patch_size, **detector).flatten(1)  # it works in chunks itself
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # every torchrun rank counts and writes a whole file
            torch.save(counts, tmp)
    return counts


def linear_probe(
    mae: MaskedAutoencoder,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    steps: int = 100,
) -> float:
    """Test accuracy of a logistic regression (L-BFGS) on frozen, standardised encoder features."""
    was_training = mae.training
    mae.eval()
    try:
        feats = [torch.cat([mae.features(x[i : i + 500]) for i in range(0, len(x), 500)]) for x, _ in (train, test)]
    finally:
        mae.train(was_training)
    mean, std = feats[0].mean(0), feats[0].std(0) + 1e-6
    f_train, f_test = (feats[0] - mean) / std, (feats[1] - mean) / std
    classes = int(max(train[1].max(), test[1].max())) + 1
    weight = torch.zeros(f_train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(f_train @ weight + bias, train[1]) + 1e-4 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((f_test @ weight + bias).argmax(1) == test[1]).float().mean())


def _lr(config: PretrainConfig, epoch_float: float) -> float:
    """Linear warm-up, then cosine decay (MAE's schedule)."""
    if epoch_float < config.warmup_epochs:
        return config.lr * epoch_float / config.warmup_epochs
    progress = (epoch_float - config.warmup_epochs) / max(config.epochs - config.warmup_epochs, 1)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def pretrain(
    config: PretrainConfig,
    images: torch.Tensor,
    counts: torch.Tensor,
    probe_train: tuple[torch.Tensor, torch.Tensor],
    probe_test: tuple[torch.Tensor, torch.Tensor],
    out: str | Path | None = None,
    *,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    stop_after_epoch: int | None = None,
) -> list[dict[str, float]]:
    """Pre-train an MAE on ``images`` (pixels in [0, 1]) and probe it; returns the per-epoch history.

    With ``out``, every epoch writes ``history.csv`` and ``checkpoint.pt``
    (loaded back with ``weights_only=True`` by ``resume``).
    ``stop_after_epoch`` ends the run early (to test resuming).
    """
    import torch.distributed as dist

    if config.masking not in ("random", "guided"):
        raise CaptumSiftError(f"expected masking 'random' or 'guided', got {config.masking!r}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if config.batch_size % world:
        raise CaptumSiftError(f"expected --batch-size divisible by the {world} processes, got {config.batch_size}")
    device = torch.device(device)
    schedule = KeyShareSchedule(**config.schedule)
    mae = config.build().to(device)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.95))  # fmt: skip
    history: list[dict[str, float]] = []
    start_epoch = 0
    out_dir = Path(out) if out is not None else None
    data_digest = _data_digest(images)
    if resume and out_dir is not None and (out_dir / "checkpoint.pt").exists():
        history, start_epoch = _resume(out_dir / "checkpoint.pt", config, data_digest, mae, optimizer)
    model = torch.nn.parallel.DistributedDataParallel(mae) if distributed else mae
    steps = len(images) // config.batch_size
    if steps == 0:
        raise CaptumSiftError(f"expected at least one batch: {len(images)} images < --batch-size {config.batch_size}")
    for epoch in range(start_epoch, config.epochs):
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
        beta = schedule(epoch)
        loss = _train_epoch(model, optimizer, config, images, counts, epoch, beta, rank, world, device, progress)
        if distributed:
            loss = loss.to(device)
            dist.all_reduce(loss)
            loss = loss.cpu() / world
        row = {"epoch": epoch + 1, "key_share": beta if config.masking == "guided" else float("nan"),
               "loss": float(loss), "probe_accuracy": float("nan")}  # fmt: skip
        if (epoch + 1) % config.probe_every == 0 or epoch + 1 == config.epochs:
            row["probe_accuracy"] = linear_probe(mae, _normalised(config, probe_train), _normalised(config, probe_test))
        history.append(row)
        if rank == 0 and out_dir is not None:
            _save_epoch(out_dir, mae, optimizer, history, config, data_digest)
        if distributed:
            dist.barrier()
    return history


def _data_digest(images: torch.Tensor) -> str:
    """sha256 of the images as 8-bit pixels: a checkpoint resumes only on the images it was trained on."""
    return hashlib.sha256((images * 255).round().to(torch.uint8).cpu().numpy().tobytes()).hexdigest()


def _normalised(config: PretrainConfig, pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) with the images normalised by the config's pixel statistics."""
    return (pair[0] - config.pixel_mean) / config.pixel_std, pair[1]


def _resume(
    ckpt: Path,
    config: PretrainConfig,
    data_digest: str,
    mae: MaskedAutoencoder,
    optimizer: torch.optim.Optimizer,
) -> tuple[list[dict[str, float]], int]:
    """Load ``ckpt`` into ``mae`` and ``optimizer`` after checking its config and images; (history, epoch)."""
    advice = f"delete {ckpt} or run without --resume"
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        old_config, old_digest = dict(state["config"]), state.get("data_sha256")
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CaptumSiftError(f"--resume: cannot read {ckpt} ({reason}); {advice}") from exc
    if old_config != json.loads(json.dumps(asdict(config))):
        new = asdict(config)
        differ = sorted(
            k for k in set(new) | set(old_config) if json.loads(json.dumps(new.get(k))) != old_config.get(k)
        )
        raise CaptumSiftError(f"--resume: {ckpt} was written with another configuration; these differ: {differ}")
    if old_digest != data_digest:
        raise CaptumSiftError(f"--resume: {ckpt} was trained on other images (their sha256 differs); {advice}")
    try:
        mae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return state["history"], int(state["epoch"])
    except Exception as exc:
        raise CaptumSiftError(f"--resume: {ckpt} does not fit this model ({type(exc).__name__}); {advice}") from exc


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: PretrainConfig,
    images: torch.Tensor,
    counts: torch.Tensor,
    epoch: int,
    beta: float,
    rank: int,
    world: int,
    device: torch.device,
    progress: bool,
) -> torch.Tensor:
    """One epoch of this process's share of every global batch; the mean loss over the steps (float64, 0-d).

    The order of the images and every step's masking noise come from (seed, epoch, step) alone.
    """
    from tqdm.auto import tqdm

    steps = len(images) // config.batch_size
    local = config.batch_size // world
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    model.train()
    total = torch.zeros((), dtype=torch.float64)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress or rank != 0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, epoch + step / steps)
        batch = order[step * config.batch_size : (step + 1) * config.batch_size]
        step_gen = torch.Generator().manual_seed((config.seed * 100_003 + epoch) * 100_003 + step)
        noise = torch.rand(2, config.batch_size, counts.shape[1], generator=step_gen)
        mine = slice(rank * local, (rank + 1) * local)  # this process's share of the global batch
        x = ((images[batch[mine]] - config.pixel_mean) / config.pixel_std).to(device)
        loss, _, _ = model(x, counts[batch[mine]].to(device), beta, noise=noise[:, mine])
        if not math.isfinite(float(loss.detach())):
            raise CaptumSiftError(
                f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1} "
                f"(--lr {config.lr:g} is too large?); nothing of this epoch was saved"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / steps


def _save_epoch(
    out_dir: Path,
    mae: MaskedAutoencoder,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    config: PretrainConfig,
    data_digest: str,
) -> None:
    """``history.csv`` and ``checkpoint.pt`` after the last epoch of ``history``, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "key_share", "loss", "probe_accuracy"])
        writer.writeheader()
        writer.writerows(history)
    state = {"model": mae.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
             "epoch": history[-1]["epoch"], "config": json.loads(json.dumps(asdict(config))),
             "data_sha256": data_digest}  # fmt: skip
    with atomic_path(out_dir / "checkpoint.pt") as tmp:
        torch.save(state, tmp)
