"""Patch-interrelation analysis of a timm ViT on sample photos: Figs. 5, 6, 7a, 7b.

The weights are random here (no download); point --checkpoint at a trained
timm state dict to analyse a real model.

Run:  python examples/analyze_vit.py [--model vit_small_patch16_224] [--checkpoint FILE] [--out DIR] [--quick]
"""

import argparse
from pathlib import Path

import timm
import torch

from captum_sift import analyze, find_stages, viz
from captum_sift.data import sample_images

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="vit_small_patch16_224")
parser.add_argument("--checkpoint", default=None)
parser.add_argument("--out", default="analysis_out")
parser.add_argument("--quick", action="store_true", help="a tiny model on small images")
args = parser.parse_args()

size, depth = (64, 4) if args.quick else (224, None)
kwargs = {"img_size": size} | ({"depth": depth} if depth else {})
model = timm.create_model("vit_tiny_patch16_224" if args.quick else args.model, pretrained=False, **kwargs)
if args.checkpoint:
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))

images = sample_images(["astronaut", "chelsea", "coffee", "camera"], size=size)  # pixels in [0, 1]
report = analyze(model, images, image_space="pixel")
stages = find_stages(report)
print(report)
print("KK - NK gap per layer:", [round(v, 3) for v in stages.gap])
print("stages:", {name: stages[name] for name in ("retrieval", "capture", "coach")})

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
viz.plot_interrelation(report).figure.savefig(out / "interrelation.png", dpi=110)
viz.plot_focus_index(report).figure.savefig(out / "focus_index.png", dpi=110)
viz.plot_stages(report, stages).figure.savefig(out / "stages.png", dpi=110)
viz.plot_stage_heatmaps(report, stages, image=images[0]).savefig(out / "heatmaps.png", dpi=110)
report.save_json(out / "report.json")
report.save_csv(out / "per_layer_head.csv")
print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")
