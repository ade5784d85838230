"""Cost per image of SIFTInterrelation vs Captum's attributions, in plain forwards.

Prints, measured in this one run (random-init timm ViT, CPU, sample photos):
the time of one plain (fused) forward per image, and the time per image of
SIFTInterrelation (keypoint counting included), Captum's Saliency,
IntegratedGradients (50 steps) and FeatureAblation over the patches (the
same ``feature_mask``), attention rollout and raw attention, each as a
multiple of one forward. Targets: θ (keypoints counted) <= 1.2, rollout <= 1.2.

Usage: python benchmarks/attribution.py [--quick] [--model NAME] [--batch 4]
"""

from __future__ import annotations

import argparse

import timm
import torch
from _timing import best_time
from captum.attr import FeatureAblation, IntegratedGradients, Saliency

from captum_sift.attr import AttentionRollout, RawAttention, SIFTInterrelation
from captum_sift.data import SAMPLE_PHOTOS, sample_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 64 px, IG with 4 steps (for the tests)")
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    size, steps, name = 224, 50, args.model
    if args.quick:
        size, steps, name, args.batch, args.repeats = 64, 4, "vit_tiny_patch16_224", 2, 1
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    pixels = sample_images(list(SAMPLE_PHOTOS[: args.batch]), size=size)
    config = timm.data.resolve_model_data_config(model)
    x = (pixels - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        target = model(x).argmax(1)
    sift = SIFTInterrelation(model)
    mask = sift.feature_mask(x)

    def forward():
        with torch.no_grad():
            model(x)

    per_image = {
        "plain forward": best_time(forward, args.repeats),
        "SIFTInterrelation (counts included)": best_time(lambda: sift.attribute(x), args.repeats),
        "AttentionRollout": best_time(lambda: AttentionRollout(model).attribute(x), args.repeats),
        "RawAttention (last layer)": best_time(lambda: RawAttention(model).attribute(x), args.repeats),
        "Saliency": best_time(lambda: Saliency(model).attribute(x, target=target), args.repeats),
        f"IntegratedGradients ({steps} steps)": best_time(
            lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=steps, internal_batch_size=16), 1
        ),
        "FeatureAblation over patches": best_time(
            lambda: FeatureAblation(model).attribute(x, target=target, feature_mask=mask, perturbations_per_eval=16), 1
        ),
    }
    one = per_image["plain forward"]
    print(f"{name}, {size}px, batch {args.batch}, CPU, {torch.get_num_threads()} threads")
    for label, seconds in per_image.items():
        print(f"{label:>38s}: {seconds / args.batch * 1e3:8.1f} ms/image = {seconds / one:7.2f} forwards")
    print(f"RATIO SIFTInterrelation / forward: {per_image['SIFTInterrelation (counts included)'] / one:.2f}"
          "  (target <= 1.2)")  # fmt: skip
    print(f"RATIO AttentionRollout / forward: {per_image['AttentionRollout'] / one:.2f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
