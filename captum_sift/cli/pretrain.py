"""``captum-sift pretrain``: MAE pre-training with random or guided curriculum masking (SPEC §8)."""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from .._dist import barrier, init_from_env
from .._io import write_text_atomic
from ..data import check_memory, default_dataset, fashion_mnist_to_model_size, load_fashion_mnist, resize_8bit
from ..errors import CaptumSiftError
from ..mae.pretrain import cached_keypoint_counts, pretrain
from .folder import versions
from .options import PretrainOptions
from .runner import on_every_rank, prepare_out, release_lock

__all__ = ["pretrain_data", "run_pretrain"]


def pretrain_data(
    data: str, img_size: int, limit: int | None
) -> tuple[str, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(name, pre-training images, their labels, probe test set), pixels in [0, 1] at ``img_size``."""
    if data == "embedded":
        images, labels = default_dataset()
        if img_size != images.shape[-1]:
            images = resize_8bit(images, img_size)
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


def _check_memory(options: PretrainOptions) -> None:
    """The images in float32 (twice while resizing), and one batch's attention with its gradients."""
    config = options.config
    n_images = 1000 if options.data == "embedded" else min(options.limit, 60000) + 2000
    tokens = (config.img_size // config.patch_size) ** 2 + 1
    check_memory(
        n_images * config.img_size**2 * 4 * 3
        + config.batch_size * config.num_heads * tokens**2 * 4 * 3 * (config.depth + config.decoder_depth),
        f"pre-training on {n_images} images at --img-size {config.img_size} with --batch-size {config.batch_size}",
        options.device,
    )


def run_pretrain(options: PretrainOptions) -> None:
    """Pre-train, probe every few epochs, write history.csv, checkpoint.pt and config.json into --out."""
    config, out, cache = options.config, options.out, options.cache
    _check_memory(options)
    if cache.exists() and not cache.is_dir():
        raise CaptumSiftError(f"--cache-dir {cache} exists and is not a folder")
    rank, _ = init_from_env(options.device)
    lock = on_every_rank(lambda: prepare_out(out, rank))
    try:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaptumSiftError(f"cannot create the keypoint cache folder {cache}: {exc.strerror or exc}") from exc
        name, images, labels, probe_test = pretrain_data(options.data, config.img_size, options.limit)
        counts = cached_keypoint_counts(images, config.patch_size, cache, name)
        history = pretrain(config, images, counts, (images[:5000], labels[:5000]), probe_test, out,
                           resume=options.resume, device=options.device, progress=not options.quiet)  # fmt: skip
        if rank == 0:
            key_share = float((counts > 0).float().mean())
            document = {**asdict(config), "data": name, "key_patch_share": key_share, "versions": versions()}
            write_text_atomic(out / "config.json", json.dumps(document, indent=1))
            for row in history:
                print(f"epoch {row['epoch']:3d}  β {row['key_share']:.2f}  loss {row['loss']:.4f}  "
                      f"probe accuracy {row['probe_accuracy']:.4f}")  # fmt: skip
            print(f"wrote {out}/history.csv, checkpoint.pt, config.json")
        barrier()
    finally:
        release_lock(lock)
