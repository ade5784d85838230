"""SIFTInterrelation next to Captum's IntegratedGradients and FeatureAblation on the same patches.

A timm ViT (random weights: nothing is downloaded; pass --checkpoint for a
trained one), three scikit-image photos, the overlays side by side.

Run:  python examples/captum_quickstart.py [--out quickstart.png] [--quick]
"""

import argparse

import timm
import torch
from captum.attr import FeatureAblation, IntegratedGradients

from captum_sift.attr import SIFTInterrelation
from captum_sift.data import sample_images
from captum_sift.viz import overlay

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="vit_small_patch16_224")
parser.add_argument("--checkpoint", default=None)
parser.add_argument("--out", default="quickstart.png")
parser.add_argument("--quick", action="store_true", help="a tiny model on 64 px images")
args = parser.parse_args()

size = 64 if args.quick else 224
name = "vit_tiny_patch16_224" if args.quick else args.model
model = timm.create_model(name, pretrained=False, img_size=size, **({"depth": 4} if args.quick else {})).eval()
if args.checkpoint:
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))

photos = ["astronaut", "chelsea", "coffee"]
pixels = sample_images(photos, size=size)  # (3, 3, S, S) in [0, 1]
config = timm.data.resolve_model_data_config(model)
mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
inputs = (pixels - mean) / std  # what the model takes
with torch.no_grad():
    target = model(inputs).argmax(dim=1)

sift = SIFTInterrelation(model)  # keypoints counted on the un-normalised images
theta = sift.attribute(inputs, target=target)  # same shape as inputs; target is ignored by θ
ig = IntegratedGradients(model).attribute(inputs, target=target, n_steps=8 if args.quick else 50)
ablation = FeatureAblation(model).attribute(inputs, target=target, feature_mask=sift.feature_mask(inputs))
for attr in (theta, ig, ablation):
    assert attr.shape == inputs.shape

# Does θ rank patches like occluding them does? Spearman rho per image over the patches.
patch = model.patch_embed.patch_size[0]
for i, name in enumerate(photos):
    a = theta[i, 0, ::patch, ::patch].flatten()
    b = ablation[i, 0, ::patch, ::patch].flatten()
    rank_a, rank_b = a.argsort().argsort().float(), b.argsort().argsort().float()
    rho = torch.corrcoef(torch.stack([rank_a, rank_b]))[0, 1]
    print(f"{name}: Spearman rho(theta, FeatureAblation) over {a.numel()} patches = {rho:.2f}")

both = torch.cat([theta, ig.abs(), ablation.abs()])
titles = [f"{p}: θ" for p in photos] + [f"{p}: |IG|" for p in photos] + [f"{p}: |ablation|" for p in photos]
fig = overlay(torch.cat([pixels] * 3), both, titles=titles, ncols=3, minmax=True)
fig.savefig(args.out, dpi=100)
print(f"wrote {args.out}")
