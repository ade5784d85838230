"""Known-truth benchmark: does an explanation find the planted shortcut, and does masking it help?

A small ViT (the embedded default's architecture) is trained on
Fashion-MNIST images that carry a marker whose texture *is* the label
(``captum_sift.data.shortcut``); it is then tested on images whose marker is
unrelated to the label. For every attribution method this prints how often
the marker patch is the method's top-1 / top-5 patch, and the decorrelated
accuracy after masking the method's top-k or bottom-k patches, next to the
oracle (mask exactly the marker) and random masks; θ's spurious selection
(§5.1: the Key patches with the lowest θ) is scored the same way. Then
``faithfulness.compare`` takes the marker as the ground-truth mask of the
first ``--localise`` test images and prints its table: Quantus's pointing
game, relevance mass / rank accuracy and top-5 intersection, and ROAD
(pytorch-grad-cam) beside deletion / insertion.

The trained weights are cached (``--cache``), keyed by the data and the
training settings, so a second run only evaluates.

Usage: python examples/shortcut_benchmark.py [--quick] [--data embedded|fashion-mnist-full] [--train 8000]
       [--test 500] [--epochs 6] [--localise 100] [--cache DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from captum_sift.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    create_default_architecture,
    default_dataset,
    fashion_mnist_to_model_size,
    load_fashion_mnist,
)
from captum_sift.data.shortcut import marker_masks, plant_markers
from captum_sift.faithfulness import compare, explain, patch_attribution
from captum_sift.masking import scores_and_counts
from captum_sift.masking.apply import mask_images, select_patches
from captum_sift.theta.settings import ThetaSettings
from captum_sift.vit.adapter import as_vit

METHODS = ("theta", "rollout", "raw_attention", "gradient_rollout", "attnlrp", "saliency", "integrated_gradients",
           "gradcam", "random")  # fmt: skip
#: ROAD's percentiles here (pytorch-grad-cam's default is 10, ..., 90: three times the sparse solves).
ROAD = (20, 50, 80)


def load(data: str, n_train: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if data == "embedded":
        images, labels = default_dataset()
        n_test = min(n_test, 200)
        return images[: len(images) - n_test][:n_train], labels[: len(images) - n_test][:n_train], \
            images[len(images) - n_test :], labels[len(images) - n_test :]  # fmt: skip
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    return (fashion_mnist_to_model_size(train_x[:n_train]), torch.as_tensor(train_y[:n_train]).long(),
            fashion_mnist_to_model_size(test_x[:n_test]), torch.as_tensor(test_y[:n_test]).long())  # fmt: skip


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, cache: Path, key: str) -> torch.nn.Module:
    model = create_default_architecture()
    path = cache / f"shortcut-vit-{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        print(f"loaded the trained model from {path}")
        return model.eval()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(images) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        total = 0.0
        for i in range(0, len(images), 64):
            idx = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(normalise(images[idx])), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} ({time.perf_counter() - start:.0f} s)")
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)]) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="embedded data, 200 train / 40 test, 1 epoch")
    parser.add_argument("--data", choices=("embedded", "fashion-mnist-full"), default="fashion-mnist-full")
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--k", type=int, default=1, help="patches masked per image")
    parser.add_argument(
        "--agreement",
        type=float,
        default=0.8,
        help="share of training images whose marker is their label's (the shortcut's strength)",
    )
    parser.add_argument("--localise", type=int, default=100, help="test images of the localisation table")
    parser.add_argument("--cache", type=Path, default=Path("shortcut_cache"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.data, args.train, args.test, args.epochs, args.localise = "embedded", 200, 40, 1, 4
    train_x, train_y, test_x, test_y = load(args.data, args.train, args.test)
    marked_train, _, _ = plant_markers(train_x, train_y, correlated=True, seed=0, agreement=args.agreement)
    marked_test, marker, _ = plant_markers(test_x, test_y, correlated=False, seed=1)
    same_test, _, _ = plant_markers(test_x, test_y, correlated=True, seed=1)
    key = hashlib.sha256(f"{args.data}-{args.train}-{args.epochs}-{args.agreement}-v3".encode()).hexdigest()[:12]
    model = train(marked_train, train_y, args.epochs, args.cache, key)
    x, xs = normalise(marked_test), normalise(same_test)
    results: dict = {
        "data": args.data, "train_images": len(train_x), "test_images": len(test_x), "epochs": args.epochs,
        "agreement": args.agreement,
        "train_accuracy": accuracy(model, normalise(marked_train), train_y),
        "correlated_test_accuracy": accuracy(model, xs, test_y),
        "decorrelated_test_accuracy": accuracy(model, x, test_y),
        "clean_test_accuracy": accuracy(model, normalise(test_x), test_y), "methods": {},
    }  # fmt: skip
    print(json.dumps({k: v for k, v in results.items() if k != "methods"}, indent=1))
    vit = as_vit(model)
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    n = vit.grid(x)[0] * vit.grid(x)[1]

    def masked_accuracy(selected: torch.Tensor) -> float:
        return accuracy(model, mask_images(x, selected, vit.patch_size, 0.0), test_y)

    oracle = torch.zeros(len(x), n, dtype=torch.bool).scatter_(1, marker.view(-1, 1), True)
    results["oracle_mask_marker_accuracy"] = masked_accuracy(oracle)
    print(f"oracle (mask the marker): {results['oracle_mask_marker_accuracy']:.3f}")
    print(f"{'method':>22s} {'top-1':>6s} {'top-5':>6s} {'mask top-k':>11s} {'mask bottom-k':>14s} {'s/img':>7s}")
    for method in METHODS:
        start = time.perf_counter()
        scores = torch.cat([
            patch_attribution(explain(method, vit, x[i : i + 32], predicted[i : i + 32], ig_steps=16, seed=i), 16)
            for i in range(0, len(x), 32)
        ])  # fmt: skip
        seconds = (time.perf_counter() - start) / len(x)
        rank = (scores > scores.gather(1, marker.view(-1, 1))).sum(1)
        row = {"top1": float((rank == 0).float().mean()), "top5": float((rank < 5).float().mean()),
               "mask_top_k_accuracy": masked_accuracy(select_patches(scores, args.k / n, "top")),
               "mask_bottom_k_accuracy": masked_accuracy(select_patches(scores, args.k / n, "bottom")),
               "seconds_per_image": seconds}  # fmt: skip
        results["methods"][method] = row
        print(f"{method:>22s} {row['top1']:6.3f} {row['top5']:6.3f} {row['mask_top_k_accuracy']:11.3f} "
              f"{row['mask_bottom_k_accuracy']:14.3f} {seconds:7.3f}")  # fmt: skip
    theta, counts = scores_and_counts(vit, x, None, ThetaSettings())
    spurious = select_patches(theta, args.k / n, "spurious", keypoint_counts=counts)
    held = counts.gather(1, marker.view(-1, 1)).squeeze(1) >= 1
    hit = spurious.gather(1, marker.view(-1, 1)).squeeze(1)
    results["spurious"] = {
        "marker_is_key_share": float(held.float().mean()),
        "flags_marker_where_key": float(hit[held].float().mean()) if bool(held.any()) else float("nan"),
        "mask_accuracy": masked_accuracy(spurious),
    }
    print(f"θ spurious (lowest-θ Key patch): flags the marker in {results['spurious']['flags_marker_where_key']:.3f} "
          f"of the images where it holds keypoints ({results['spurious']['marker_is_key_share']:.2f} of all); "
          f"masking it: {results['spurious']['mask_accuracy']:.3f}")  # fmt: skip
    n_loc = min(args.localise, len(x))
    road, steps = (ROAD, 8) if not args.quick else ((50,), 2)
    start = time.perf_counter()
    table = compare(vit, x[:n_loc], predicted[:n_loc], METHODS, masks=marker_masks(marker[:n_loc], x.shape[-2:]),
                    road=road, steps=steps, quantus_metrics=False, timing_rounds=0, batch_size=50,
                    progress=False)  # fmt: skip
    print(f"localisation of the marker, {n_loc} decorrelated test images (ROAD percentiles {road}; "
          f"{time.perf_counter() - start:.0f} s):\n{table}")  # fmt: skip
    results["localisation"] = {"images": n_loc, "road_percentiles": list(road), "rows": table.rows()}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
