"""Count SIFT keypoints per ViT patch on sample photos and draw them (paper Fig. 3).

Run:  python examples/count_keypoints.py [--out keypoints.png] [--quick]
"""

import argparse

import torch

from captum_sift import count_keypoints, detect_keypoints
from captum_sift.data import sample_images
from captum_sift.viz import plot_keypoints_grid

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="keypoints.png")
parser.add_argument("--quick", action="store_true", help="two small images")
args = parser.parse_args()

names = ["astronaut", "chelsea"] if args.quick else ["astronaut", "chelsea", "coffee", "camera"]
size, patch = (64, 16) if args.quick else (224, 16)
images = sample_images(names, size=size)  # (B, 3, S, S) in [0, 1], as the model sees them

keypoints = detect_keypoints(images)  # per image: (K, 4) rows x, y, sigma, response
counts = count_keypoints(images, patch)  # (B, S/P, S/P) keypoint count t_j per patch
is_key = counts >= 1  # SPEC §1: Key(j) <=> t_j >= 1

for name, k, key in zip(names, keypoints, is_key, strict=True):
    print(f"{name}: {k.shape[0]} keypoints, {int(key.sum())}/{key.numel()} Key patches")
assert torch.equal(counts.sum(dim=(1, 2)), torch.tensor([k.shape[0] for k in keypoints]))

fig = plot_keypoints_grid(images, keypoints, patch, titles=names)
fig.savefig(args.out, dpi=110)
print(f"wrote {args.out}")
