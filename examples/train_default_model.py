"""Train the embedded default model: a small timm ViT on Fashion-MNIST (CPU, deterministic).

Needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist).
Writes the weights (fp16 state dict), the 1,000-image evaluation subset and a
manifest with sha256 sums and the measured accuracy into captum_sift/_data/.

Run:  python examples/train_default_model.py [--epochs 8] [--out captum_sift/_data] [--quick]
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from captum_sift import count_keypoints
from captum_sift.data import (
    DEFAULT_ARCHITECTURE,
    DEFAULT_PATCH_SIZE,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    create_default_architecture,
    fashion_mnist_to_model_size,
    load_fashion_mnist,
)

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--embed-dim", type=int, default=DEFAULT_ARCHITECTURE["embed_dim"])
parser.add_argument("--depth", type=int, default=DEFAULT_ARCHITECTURE["depth"])
parser.add_argument("--heads", type=int, default=DEFAULT_ARCHITECTURE["num_heads"])
parser.add_argument("--mlp-ratio", type=float, default=DEFAULT_ARCHITECTURE["mlp_ratio"])
parser.add_argument("--pool", choices=("token", "avg"), default=DEFAULT_ARCHITECTURE.get("global_pool", "token"))
parser.add_argument("--augment", action="store_true", help="random flips and 2-px shifts")
parser.add_argument("--train-limit", type=int, default=None, help="train on the first N images (to compare settings)")
parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "captum_sift" / "_data"))
parser.add_argument("--quick", action="store_true", help="1 epoch on 2,000 images, writes nothing (for the tests)")
args = parser.parse_args()

torch.manual_seed(args.seed)
generator = torch.Generator().manual_seed(args.seed)
train_x, train_y = load_fashion_mnist("train")
test_x, test_y = load_fashion_mnist("test")
if args.train_limit:
    train_x, train_y = train_x[: args.train_limit], train_y[: args.train_limit]
if args.quick:
    train_x, train_y, test_x, test_y, args.epochs = train_x[:2000], train_y[:2000], test_x[:500], test_y[:500], 1
train_x, test_x = torch.from_numpy(train_x.copy()), torch.from_numpy(test_x.copy())
train_y, test_y = torch.from_numpy(train_y.astype(np.int64)), torch.from_numpy(test_y.astype(np.int64))

arch = {**DEFAULT_ARCHITECTURE, "embed_dim": args.embed_dim, "depth": args.depth, "num_heads": args.heads,
        "mlp_ratio": args.mlp_ratio, "global_pool": args.pool, "class_token": args.pool == "token"}  # fmt: skip
model = create_default_architecture(arch)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
steps = args.epochs * (len(train_x) // args.batch_size)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.15)


def to_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """28 px uint8 -> the model's normalised 112 px input."""
    return (fashion_mnist_to_model_size(images_uint8) - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def augment(batch: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 2 px, on the 28 px images."""
    flip = torch.rand(len(batch), generator=generator) < 0.5
    batch = torch.where(flip.view(-1, 1, 1), batch.flip(-1), batch)
    padded = F.pad(batch, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[:, dy : dy + 28, dx : dx + 28]


@torch.no_grad()
def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(to_input(images[i : i + 500])).argmax(1) == labels[i : i + 500]).sum())
        for i in range(0, len(images), 500)
    )
    return correct / len(images)


start = time.time()
for epoch in range(args.epochs):
    model.train()
    order = torch.randperm(len(train_x), generator=generator)
    total = 0.0
    for step in range(len(train_x) // args.batch_size):
        idx = order[step * args.batch_size : (step + 1) * args.batch_size]
        batch = augment(train_x[idx]) if args.augment else train_x[idx]
        logits = model(to_input(batch))
        loss = F.cross_entropy(logits, train_y[idx], label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
    acc = accuracy(test_x, test_y)
    print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / (step + 1):.4f}, "
          f"test accuracy {acc:.4f} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip

if args.quick:
    print("quick run: nothing written")
    raise SystemExit(0)

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
weights = out / "default_vit_fmnist.pt"
torch.save({k: v.half() for k, v in model.state_dict().items()}, weights)
# The shipped subset: the first 100 test images of every class, in test-set order.
keep = np.sort(np.concatenate([np.flatnonzero(test_y.numpy() == c)[:100] for c in range(10)]))
subset = out / "fashion_mnist_test_1000.npz"
np.savez_compressed(subset, images=test_x.numpy()[keep], labels=test_y.numpy()[keep].astype(np.uint8), index=keep)

# Measure what ships: the fp16 weights, loaded back.
model.load_state_dict({k: v.float() for k, v in torch.load(weights, weights_only=True).items()})
full_acc, subset_acc = accuracy(test_x, test_y), accuracy(test_x[keep], test_y[keep])
counts = count_keypoints(fashion_mnist_to_model_size(test_x[keep]), DEFAULT_PATCH_SIZE)
key_share = float((counts > 0).float().mean())
manifest = {
    "architecture": arch,
    "normalization": {"mean": [FASHION_MNIST_MEAN], "std": [FASHION_MNIST_STD]},
    "files": {
        "weights": {"name": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},
        "subset": {"name": subset.name, "sha256": hashlib.sha256(subset.read_bytes()).hexdigest()},
    },
    "training": {
        "command": "python examples/train_default_model.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - start),
        "torch": torch.__version__,
    },
    "test_accuracy": round(full_acc, 4),
    "subset_accuracy": round(subset_acc, 4),
    "subset_key_patch_share": round(key_share, 4),
}
(out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
print(json.dumps(manifest, indent=2))
