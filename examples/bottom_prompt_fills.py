"""Does Bottom masking act as a prompt? Fills compared on the embedded default (paper §5.1, Fig. 8).

For every fill (0.0 = the normalised mean gray, each image's mean colour, a
blur, and dropping the tokens), the accuracy with the Top / Bottom /
Random / Spurious patches masked at 5 % and 10 %, with the unmasked
baseline, 95 % Wilson intervals and exact McNemar p-values against it.
Writes the table as markdown (and JSON with --json).

Usage: python examples/bottom_prompt_fills.py [--quick] [--limit 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

from captum_sift.data import default_dataset, default_model
from captum_sift.masking import evaluate_masking

FILLS = (0.0, "mean", "blur", "drop")
MODES = ("top", "bottom", "random", "spurious")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 images (for the tests)")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    limit = 64 if args.quick else args.limit
    model = default_model()
    images, labels = default_dataset(limit=limit)
    results = {}
    print(f"embedded default, {limit} images; accuracy (McNemar p against the unmasked baseline)")
    for fill in FILLS:
        start = time.perf_counter()
        table = evaluate_masking(model, images, labels, ratios=args.ratios, modes=MODES, fill=fill,
                                 image_space="pixel", progress=False)  # fmt: skip
        results[str(fill)] = table.rows()
        print(f"\nfill {fill!s}: unmasked {table.baseline['accuracy']:.3f}  ({time.perf_counter() - start:.1f} s)")
        print("| mode | " + " | ".join(f"{r:.0%}" for r in args.ratios) + " |")
        print("| --- |" + " --- |" * len(args.ratios))
        for mode in MODES:
            cells = []
            for ratio in args.ratios:
                row = next(r for r in table.rows() if r["mode"] == mode and r["ratio"] == ratio)
                cells.append(f"{row['accuracy']:.3f} (p {row['p_value']:.2g})")
            print(f"| {mode} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
