"""Cost of the full patch-interrelation analysis vs a plain forward pass.

Prints, measured in this one run on this machine (random-init timm models,
counts given, CPU):

* time of ``analyze`` (all layers x heads: θ, the four classes, focus index,
  head-mean patch θ) / time of a plain default (fused-attention) forward,
  batch 8 at 224 px, for vit_base_patch16_224 (target <= 1.5), vit_tiny and
  vit_large;
* peak extra memory of the analysis over a plain forward: the growth of the
  peak RSS (VmHWM, reset just before the call) in two fresh processes, one
  running the forward, one the analysis, against the size of one layer's
  attention and of all L layers'. The children map every allocation of
  64 KiB or more on its own (glibc's ``MALLOC_MMAP_THRESHOLD_``), so the peak
  RSS follows the live tensors rather than the allocator's free lists
  (without it the same figure swung between -7 and +150 MiB from run to run;
  with it, runs agree to 0.1 MiB).

* the cost of the SPEC §9 controls computed in the same pass (``controls="fast"`` and ``"all"``): each
  as a ratio to ``analyze`` without controls and to a plain forward, batch 1 and 8, 1 and 2 threads,
  median of per-round ratios over interleaved rounds (target: fast <= 1.3 x analyze).

Usage: python benchmarks/analysis.py [--quick] [--models NAME ...] [--batch 8] [--controls-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import timm
import torch
from _timing import best_time, interleaved

from captum_sift import analyze


def build(name: str, img: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=img).eval()


def family_models(quick: bool) -> dict[str, torch.nn.Module]:
    """One ViT-B/16 architecture (ViT-Ti-like at 64 px with --quick) in each family, random weights."""
    import torchvision

    torch.manual_seed(0)
    size, depth, heads, dim, mlp = (64, 4, 3, 192, 768) if quick else (224, 12, 12, 768, 3072)
    models = {
        "timm": timm.create_model("vit_base_patch16_224", pretrained=False, img_size=size, depth=depth,
                                  num_heads=heads, embed_dim=dim),
        "torchvision": torchvision.models.VisionTransformer(size, 16, depth, heads, dim, mlp),
    }  # fmt: skip
    try:
        import transformers

        config = transformers.ViTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                                        intermediate_size=mlp, image_size=size, patch_size=16)  # fmt: skip
        models["hf"] = transformers.ViTForImageClassification(config)
    except ImportError:
        print("transformers not installed: no Hugging Face figure")
    return {name: model.eval() for name, model in models.items()}


def family_ratios(quick: bool, batch: int, repeats: int) -> None:
    """analyze / the family's own default forward (fused or sdpa attention), per family."""
    from captum_sift.vit.adapter import as_vit

    for family, model in family_models(quick).items():
        vit = as_vit(model)
        size = 64 if quick else 224
        x, counts = inputs(batch, size, size // vit.patch_size)

        def forward(vit=vit, x=x):
            with torch.no_grad():
                vit.logits(x)

        t_forward = best_time(forward, repeats)
        t_analysis = best_time(lambda vit=vit, x=x, counts=counts: analyze(vit, x, counts), repeats)
        print(f"RATIO analysis / forward time [family {family}, ViT-B/16 layout, batch {batch}x{size}px]: "
              f"{t_analysis / t_forward:.2f}  (forward {t_forward:.3f} s, analysis {t_analysis:.3f} s)")  # fmt: skip


def controls_ratios(name: str, img: int, rounds: int) -> None:
    """analyze with controls "fast" and "all" / analyze without controls, and / a plain forward."""
    model = build(name, img)
    grid = img // model.patch_embed.patch_size[0]
    threads = torch.get_num_threads()
    for num_threads in (1, 2):
        torch.set_num_threads(num_threads)
        for batch in (1, 8):
            x, counts = inputs(batch, img, grid)

            def forward(x=x):
                with torch.no_grad():
                    model(x)

            methods = {"forward": forward}
            for level in ("none", "fast", "all"):
                methods[level] = lambda x=x, c=counts, level=level: analyze(model, x, c, controls=level)
            best, to_forward = interleaved(methods, rounds, "forward")
            _, to_none = interleaved({k: methods[k] for k in ("none", "fast", "all")}, rounds, "none")
            print(f"CONTROLS [{name}, batch {batch}x{img}px, {num_threads} thr]: "
                  f"fast / analyze {to_none['fast']:.2f}, all / analyze {to_none['all']:.2f} (target fast <= 1.3); "
                  f"/ forward: analyze {to_forward['none']:.2f}, fast {to_forward['fast']:.2f}, "
                  f"all {to_forward['all']:.2f} (forward {best['forward']:.3f} s)")  # fmt: skip
    torch.set_num_threads(threads)


def inputs(batch: int, img: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g)
    counts = torch.randint(0, 4, (batch, grid * grid), generator=g) * (
        torch.rand(batch, grid * grid, generator=g) > 0.5
    )
    return x, counts


def _vm_hwm() -> int:
    """Peak resident set size of this process since the last reset, in bytes (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(mode: str, name: str, batch: int, img: int) -> None:
    """Run one forward or one analysis in this fresh process; print the peak RSS growth during it."""
    model = build(name, img)
    x, counts = inputs(batch, img, img // model.patch_embed.patch_size[0])
    with torch.no_grad():  # warm-up on one image: lazy imports and first-call set-up are not counted
        model(x[:1]) if mode == "forward" else analyze(model, x[:1], counts[:1])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _vm_hwm()
    with torch.no_grad():
        if mode == "forward":
            model(x)
        else:
            analyze(model, x, counts)
    print(json.dumps({"peak_growth": _vm_hwm() - base}))


def peak_growth(mode: str, name: str, batch: int, img: int) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--models", name, "--batch", str(batch), "--img", str(img)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 64 px, batch 2 (for the tests)")
    parser.add_argument(
        "--models", nargs="+", default=["vit_base_patch16_224", "vit_tiny_patch16_224", "vit_large_patch16_224"]
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--controls-only", action="store_true", help="only the cost of the controls")
    parser.add_argument("--child", choices=("forward", "analysis"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.models[0], args.batch, args.img)
        return
    if args.quick:
        args.models, args.batch, args.img, args.repeats = ["vit_tiny_patch16_224"], 2, 64, 1
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, CPU")
    controls_ratios(args.models[0], args.img, args.repeats + 2)
    if args.controls_only:
        return
    family_ratios(args.quick, args.batch, args.repeats)
    for name in args.models:
        model = build(name, args.img)
        grid = args.img // model.patch_embed.patch_size[0]
        x, counts = inputs(args.batch, args.img, grid)
        repeats = 1 if "large" in name else args.repeats

        def forward(model=model, x=x):
            with torch.no_grad():
                model(x)

        t_forward = best_time(forward, repeats)
        t_analysis = best_time(lambda model=model, x=x, counts=counts: analyze(model, x, counts), repeats)
        print(f"{name}: batch {args.batch}x{args.img}px, plain forward {t_forward:.3f} s, analysis {t_analysis:.3f} s")
        print(f"RATIO analysis / forward time [{name}]: {t_analysis / t_forward:.2f}"
              + ("  (target <= 1.5)" if name == "vit_base_patch16_224" else ""))  # fmt: skip
        heads, depth = model.blocks[0].attn.num_heads, len(model.blocks)
        tokens = model.num_prefix_tokens + grid * grid
        one_layer = args.batch * heads * tokens * tokens * 4
        extra = peak_growth("analysis", name, args.batch, args.img) - peak_growth("forward", name, args.batch, args.img)
        print(f"MEMORY extra peak of the analysis [{name}]: {extra / 2**20:.1f} MiB = "
              f"{extra / one_layer:.1f} x one layer's attention ({one_layer / 2**20:.1f} MiB), "
              f"{extra / (one_layer * depth):.2f} x all {depth} layers'")  # fmt: skip


if __name__ == "__main__":
    main()
