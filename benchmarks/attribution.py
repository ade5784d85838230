"""Cost per image of SIFTInterrelation vs Captum's attributions, in plain forwards.

Prints, measured in this one run (random-init timm ViT, CPU, sample photos):
the time of one plain (fused) forward per image, and the time per image of
SIFTInterrelation (keypoint counting included, and with the counts given),
attention rollout and raw attention (the last layer), Captum's Saliency,
IntegratedGradients (50 steps) and FeatureAblation over the patches (the
same ``feature_mask``), each as a multiple of one forward, and the minor
page faults of one call of each fast method. Targets: θ (keypoints counted)
<= 1.2, rollout <= 1.2, gradient rollout <= 2.5; AttnLRP's cost is printed
beside them (no target).

This machine's speed drifts by 10-20 % within a minute (other tenants), so the
fast methods run in interleaved rounds (forward, θ, ..., forward, θ, ...):
``median`` is the median over rounds of the method's time / the same round's
forward time (the headline ``RATIO``: a slow minute slows both), ``best`` the
best round of each, whose ratio depends on one lucky round. The fast methods
are timed with torch's default thread count and again with one thread
(``ONE THREAD``); IntegratedGradients and FeatureAblation (~100-200 forwards)
once, default threads. ``IN A ROW``: the forward, θ and rollout each over all
the sample photos and their mirror images in batches, one method after
itself, as over a data set (what a call leaves behind is paid by the same
method's next call, not by another's), the median over rounds of the ratio
to the forward's time in the same round.

``MEMORY``: the extra peak memory of one call of each method on
``--memory-model`` (ViT-B) with ``--memory-batch`` (8) images at 224 px,
above what is in use before it (model and input): CUDA's allocator peak on
a GPU, else the process's peak resident set (``/proc/self/clear_refs``
resets it), as MB and as a multiple of a plain no-grad forward's.

Usage: python benchmarks/attribution.py [--quick] [--model NAME] [--batch 4] [--rounds 9]
       [--memory-model vit_base_patch16_224] [--memory-batch 8]
"""

from __future__ import annotations

import argparse
import resource

import timm
import torch
from _memory import can_measure, extra_peak_bytes
from _timing import best_time, in_a_row, interleaved
from captum.attr import FeatureAblation, IntegratedGradients, Saliency

from captum_sift.attr import AttentionRollout, AttnLRP, GradientRollout, RawAttention, SIFTInterrelation
from captum_sift.data import SAMPLE_PHOTOS, sample_images
from captum_sift.keypoints import count_keypoints

THETA, ROLLOUT, GRADIENT = "SIFTInterrelation (counts included)", "AttentionRollout", "GradientRollout (target)"
LRP = "AttnLRP (target)"
TARGETS = {THETA: 1.2, ROLLOUT: 1.2, GRADIENT: 2.5, LRP: None}


def report(label: str, best: dict, median: dict, batch: int) -> None:
    one = best["plain forward"]
    for name, seconds in best.items():
        line = f"{name:>38s}: {seconds / batch * 1e3:8.1f} ms/image (best) = {seconds / one:7.2f} forwards"
        print(line + (f", median ratio {median[name]:.2f}" if name in median else ""))
    for name, target in TARGETS.items():
        print(
            f"{label}RATIO {name.split()[0]} / forward: {median[name]:.2f}  (median of paired rounds; "
            f"best rounds {best[name] / one:.2f}; " + (f"target <= {target})" if target else "no target)")
        )


def report_in_a_row(label: str, ratios: dict, batches: int, rounds: int) -> None:
    print(
        f"{label}IN A ROW over {batches} different batches (median of {rounds} rounds): "
        + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items())
    )
    for name in (THETA, ROLLOUT):
        print(f"{label}IN A ROW RATIO {name.split()[0]} / forward: {ratios[name]:.2f}  (target <= 1.2)")


def page_faults(fn) -> int:
    """Minor page faults during one ``fn()``: memory the allocator handed back to the OS and touches again.

    ~1.5 us each on this VM; they follow glibc's trim/mmap thresholds, so they
    change with what ran before (tens of thousands per call in some orders).
    """
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 64 px, IG with 4 steps (for the tests)")
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--memory-model", default="vit_base_patch16_224")
    parser.add_argument("--memory-batch", type=int, default=8)
    args = parser.parse_args()
    size, steps, name = 224, 50, args.model
    if args.quick:
        size, steps, name, args.batch, args.rounds = 64, 4, "vit_tiny_patch16_224", 2, 1
        args.memory_model, args.memory_batch = "vit_tiny_patch16_224", 2
    memory(args.memory_model, args.memory_batch, size)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    pixels = sample_images(list(SAMPLE_PHOTOS[: args.batch]), size=size)
    config = timm.data.resolve_model_data_config(model)
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (pixels - mean) / std
    with torch.no_grad():
        target = model(x).argmax(1)
    sift = SIFTInterrelation(model)
    counts = count_keypoints(pixels, 16)
    mask = sift.feature_mask(x)

    def forward_of(images):
        with torch.no_grad():
            model(images)

    fast = {
        "plain forward": lambda: forward_of(x),
        THETA: lambda: sift.attribute(x),
        "SIFTInterrelation (counts given)": lambda: sift.attribute(x, keypoint_counts=counts),
        ROLLOUT: lambda: AttentionRollout(model).attribute(x),
        "RawAttention (last layer)": lambda: RawAttention(model).attribute(x),
        GRADIENT: lambda: GradientRollout(model).attribute(x, target=target),
        LRP: lambda: AttnLRP(model).attribute(x, target=target),
        "Saliency": lambda: Saliency(model).attribute(x, target=target),
    }
    # A data set's pass: the photos and their mirror images in batches, each method over all of them in a row.
    every = pixels if args.quick else sample_images(size=size)
    every = torch.cat([every, every.flip(-1)])
    batches = [((b - mean) / std).contiguous() for b in every.split(args.batch) if len(b) == args.batch]
    row_rounds = max(1, args.rounds // 2)
    row = {"plain forward": forward_of, THETA: sift.attribute, ROLLOUT: lambda b: AttentionRollout(model).attribute(b)}
    threads = torch.get_num_threads()
    print(f"{name}, {size}px, batch {args.batch}, CPU, {threads} threads, best of {args.rounds} interleaved rounds")
    best, median = interleaved(fast, args.rounds, "plain forward")
    best[f"IntegratedGradients ({steps} steps)"] = best_time(
        lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=steps, internal_batch_size=16), 1
    )
    best["FeatureAblation over patches"] = best_time(
        lambda: FeatureAblation(model).attribute(x, target=target, feature_mask=mask, perturbations_per_eval=16), 1
    )
    report("", best, median, args.batch)
    faults = {name: page_faults(fn) for name, fn in fast.items()}  # one more interleaved round
    print("PAGE FAULTS per call (minor, the whole process): " + ", ".join(f"{k} {v}" for k, v in faults.items()))
    report_in_a_row("", in_a_row(row, batches, row_rounds, "plain forward"), len(batches), row_rounds)
    torch.set_num_threads(1)
    try:
        print(f"one thread (torch.set_num_threads(1)), best of {args.rounds} interleaved rounds")
        report("ONE THREAD ", *interleaved(fast, args.rounds, "plain forward"), args.batch)
        report_in_a_row("ONE THREAD ", in_a_row(row, batches, row_rounds, "plain forward"), len(batches), row_rounds)
    finally:
        torch.set_num_threads(threads)


def memory(name: str, batch: int, size: int) -> None:
    """Extra peak memory of one call of each method (after one untimed call), see the module docstring."""
    device = torch.device("cpu")
    if not can_measure(device):
        print("MEMORY: not measured (needs Linux's /proc/self/clear_refs)")
        return
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        target = model(x).argmax(1)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    methods = {
        "plain forward": forward,
        "SIFTInterrelation (counts given)": lambda: SIFTInterrelation(model).attribute(
            x, keypoint_counts=torch.ones(batch, (size // 16) ** 2, dtype=torch.long)
        ),
        ROLLOUT: lambda: AttentionRollout(model).attribute(x),
        "RawAttention (last layer)": lambda: RawAttention(model).attribute(x),
        GRADIENT: lambda: GradientRollout(model).attribute(x, target=target),
        LRP: lambda: AttnLRP(model).attribute(x, target=target),
        "Saliency (forward + backward)": lambda: Saliency(model).attribute(x, target=target),
    }
    print(f"MEMORY {name}, {size}px, batch {batch}, CPU, extra peak resident memory of one call (after a warm-up):")
    extra = {}
    for label, fn in methods.items():
        fn()
        extra[label] = extra_peak_bytes(fn, device)
    for label, value in extra.items():
        print(f"MEMORY {label}: {value / 2**20:.0f} MB = {value / extra['plain forward']:.1f} plain forwards")


if __name__ == "__main__":
    main()
