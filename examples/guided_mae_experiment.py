"""Random vs guided curriculum masking for MAE pre-training on Fashion-MNIST (paper Fig. 9).

Same model, data, optimiser and budget for both; several seeds each. For every
run: reconstruction loss and linear-probe accuracy (frozen encoder) per epoch.
Reported: the probe-accuracy-vs-epoch curves with their seed spread, and the
number of epochs each run needs to reach 95 % of random masking's final
accuracy (mean over seeds), with the ratio guided / random per seed.

Run:  python examples/guided_mae_experiment.py [--seeds 0 1 2] [--epochs 20] [--every 2]
                                              [--data embedded|fashion-mnist-full] [--limit 4000]
                                              [--out experiment_out] [--quick]
"""

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from captum_sift.cli.pretrain import pretrain_data  # noqa: E402
from captum_sift.mae.masking import KeyShareSchedule  # noqa: E402
from captum_sift.mae.pretrain import PretrainConfig, cached_keypoint_counts, pretrain  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--every", type=int, default=2, help="epochs per step of the key share (paper: 10)")
parser.add_argument("--data", choices=("embedded", "fashion-mnist-full"), default="fashion-mnist-full")
parser.add_argument("--limit", type=int, default=4000, help="training images of fashion-mnist-full")
parser.add_argument("--img-size", type=int, default=112)
parser.add_argument("--patch-size", type=int, default=16)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--out", default="experiment_out")
parser.add_argument("--quick", action="store_true", help="seconds: 32 px, 2 epochs, 1 seed, embedded data")
args = parser.parse_args()
if args.quick:
    args.seeds, args.epochs, args.every, args.data, args.img_size, args.patch_size, args.batch_size = (
        [0], 2, 1, "embedded", 32, 8, 100,
    )  # fmt: skip

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
name, images, labels, probe_test = pretrain_data(args.data, args.img_size, args.limit)
counts = cached_keypoint_counts(images, args.patch_size, out, name)
print(f"data {name}: {len(images)} images at {args.img_size} px, patch {args.patch_size}, "
      f"{float((counts > 0).float().mean()):.1%} of patches Key; probe test set {len(probe_test[0])}")  # fmt: skip

curves: dict[str, dict[int, list[float]]] = {"random": {}, "guided": {}}
losses: dict[str, dict[int, list[float]]] = {"random": {}, "guided": {}}
start = time.time()
for seed in args.seeds:
    for masking in ("random", "guided"):
        config = PretrainConfig(masking=masking, epochs=args.epochs, seed=seed, batch_size=args.batch_size,
                                schedule=asdict(KeyShareSchedule(every=args.every)), img_size=args.img_size,
                                patch_size=args.patch_size)  # fmt: skip
        history = pretrain(config, images, counts, (images, labels), probe_test)
        curves[masking][seed] = [row["probe_accuracy"] for row in history]
        losses[masking][seed] = [row["loss"] for row in history]
        print(f"seed {seed} {masking:>6s}: probe accuracy by epoch "
              f"{[round(a, 3) for a in curves[masking][seed]]} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip

final_random = statistics.mean(curves["random"][s][-1] for s in args.seeds)
target = 0.95 * final_random


def epochs_to_target(curve):
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target), math.nan)


reach = {m: {s: epochs_to_target(curves[m][s]) for s in args.seeds} for m in curves}
ratios = [reach["guided"][s] / reach["random"][s] for s in args.seeds]
summary = {
    "setup": {k: v for k, v in vars(args).items() if k != "out"} | {"data_name": name, "train_images": len(images)},
    "final_probe_accuracy": {m: [curves[m][s][-1] for s in args.seeds] for m in curves},
    "target": target,
    "epochs_to_target": {m: [reach[m][s] for s in args.seeds] for m in curves},
    "ratio_guided_over_random": ratios,
    "ratio_mean": statistics.mean(ratios) if ratios else math.nan,
    "ratio_std": statistics.stdev(ratios) if len(ratios) > 1 else math.nan,
    "curves": curves,
    "losses": losses,
    "seconds": round(time.time() - start),
}
(out / "results.json").write_text(json.dumps(summary, indent=1))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
epochs = list(range(1, args.epochs + 1))
for masking, color in (("random", "tab:gray"), ("guided", "tab:red")):
    for ax, data in ((axes[0], curves), (axes[1], losses)):
        runs = torch.tensor([data[masking][s] for s in args.seeds])
        mean, spread = runs.mean(0), runs.std(0) if len(args.seeds) > 1 else torch.zeros(len(epochs))
        ax.plot(epochs, mean, "-o", ms=3, color=color, label=f"{masking} masking")
        ax.fill_between(epochs, mean - spread, mean + spread, color=color, alpha=0.2)
axes[0].axhline(target, ls=":", color="black", label="95 % of random's final")
axes[0].set(xlabel="epoch", ylabel="linear-probe accuracy", title="Fig. 9: probe accuracy (mean ± std over seeds)")
axes[1].set(xlabel="epoch", ylabel="reconstruction loss (masked patches)", title="MAE loss")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "fig9_guided_mae.png", dpi=110)

print(f"95 % of random's final probe accuracy ({final_random:.4f}) = {target:.4f}")
for m in ("random", "guided"):
    print(f"{m:>6s}: epochs to reach it per seed {summary['epochs_to_target'][m]}, "
          f"final accuracy {summary['final_probe_accuracy'][m]}")  # fmt: skip
print(f"RATIO guided / random epochs: {summary['ratio_mean']:.2f} ± {summary['ratio_std']:.2f} (per seed {ratios})")
print(f"wrote {out}/results.json and fig9_guided_mae.png")
