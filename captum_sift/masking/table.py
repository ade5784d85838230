"""The accuracy table of masking runs: counts per mode x ratio, merged, reduced, saved and resumed."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._checks import as_int, check_int
from .._io import atomic_path
from ..errors import CaptumSiftError
from .apply import MODES
from .stats import mcnemar_exact, wilson_interval

__all__ = ["MaskingTable", "write_rows_csv"]

#: The counts of one mode x ratio cell: images correct masked, images, and the discordant pairs of the paired test.
FIELDS = ("correct", "total", "worse", "better")


@dataclass
class MaskingTable:
    """Accuracy per mode x ratio, the unmasked baseline, 95 % intervals and paired tests.

    An accumulator of counts: :meth:`add` a batch, :meth:`merge` two tables,
    :meth:`all_reduce` over torch.distributed ranks, :meth:`state_dict` /
    :meth:`load_state_dict` for checkpoints of a long run.
    """

    baseline_correct: int = 0
    total: int = 0
    cells: dict[tuple[str, float], dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, mode: str, ratio: float, masked_ok: torch.Tensor, base_ok: torch.Tensor) -> None:
        cell = self.cells.setdefault((mode, ratio), dict.fromkeys(FIELDS, 0))
        cell["correct"] += int(masked_ok.sum())
        cell["total"] += int(masked_ok.numel())
        cell["worse"] += int((base_ok & ~masked_ok).sum())
        cell["better"] += int((~base_ok & masked_ok).sum())

    @property
    def baseline(self) -> dict[str, float]:
        low, high = wilson_interval(self.baseline_correct, self.total)
        return {"accuracy": self.baseline_correct / max(self.total, 1), "ci_low": low, "ci_high": high, "n": self.total}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per mode x ratio (baseline first, mode "none", ratio 0)."""
        base = self.baseline
        out = [{"mode": "none", "ratio": 0.0, **base, "delta": 0.0, "worse": 0, "better": 0, "p_value": 1.0}]
        for (mode, ratio), cell in self.cells.items():
            low, high = wilson_interval(cell["correct"], cell["total"])
            accuracy = cell["correct"] / cell["total"]
            out.append({
                "mode": mode, "ratio": ratio, "accuracy": accuracy, "ci_low": low, "ci_high": high,
                "n": cell["total"], "delta": accuracy - base["accuracy"], "worse": cell["worse"],
                "better": cell["better"], "p_value": mcnemar_exact(cell["worse"], cell["better"]),
            })  # fmt: skip
        return out

    def accuracy(self, mode: str, ratio: float) -> float:
        cell = self.cells[(mode, ratio)]
        return cell["correct"] / cell["total"]

    def merge(self, other: MaskingTable) -> MaskingTable:
        """One table of both tables' images, every count added (same settings and cells; an empty table fits any)."""
        if not isinstance(other, MaskingTable):
            raise CaptumSiftError(f"expected a MaskingTable to merge, got {type(other).__name__}")
        if self.settings != other.settings:
            raise CaptumSiftError(
                f"expected tables of the same settings to merge, got {self.settings} and {other.settings}"
            )
        if self.total and other.total and set(self.cells) != set(other.cells):
            raise CaptumSiftError(
                f"expected tables of the same modes x ratios to merge, got {sorted(self.cells)} and "
                f"{sorted(other.cells)}"
            )
        merged = MaskingTable(self.baseline_correct + other.baseline_correct, self.total + other.total,
                              settings=dict(self.settings))  # fmt: skip
        for table in (self, other):
            for key, cell in table.cells.items():
                into = merged.cells.setdefault(key, dict.fromkeys(FIELDS, 0))
                for name in FIELDS:
                    into[name] += cell[name]
        return merged

    def all_reduce(self, modes: Sequence[str], ratios: Sequence[float], device: torch.device | str = "cpu") -> None:
        """Sum the counts over torch.distributed ranks, in place (every rank calls it with the same plan)."""
        from .._dist import all_reduce_sum

        keys = [(m, float(r)) for m in modes for r in ratios]
        flat = [self.baseline_correct, self.total]
        flat += [self.cells.get(k, dict.fromkeys(FIELDS, 0))[f] for k in keys for f in FIELDS]
        summed = all_reduce_sum(torch.tensor(flat, dtype=torch.long), torch.device(device)).tolist()
        self.baseline_correct, self.total = summed[0], summed[1]
        for i, key in enumerate(keys):
            self.cells[key] = dict(zip(FIELDS, summed[2 + 4 * i : 6 + 4 * i], strict=True))

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready counts (partial results of a long run)."""
        return {
            "baseline_correct": self.baseline_correct, "total": self.total,
            "cells": [[m, r, c] for (m, r), c in self.cells.items()],
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], num_cells: int | None = None) -> None:
        """Counts from :meth:`state_dict` (replacing the current ones), checked for shape and ranges."""
        base, total, cells = state["baseline_correct"], state["total"], state["cells"]
        total = check_int(total, "total", low=0)
        base = check_int(base, "baseline_correct", 0, total)
        loaded = {}
        for mode, ratio, cell in cells:
            if mode not in MODES or not isinstance(cell, dict) or set(cell) != set(FIELDS):
                raise CaptumSiftError(
                    f"expected a cell of a mode in {MODES} with counts {sorted(FIELDS)}, got {cell!r}"
                )
            counts = {k: as_int(v) for k, v in cell.items()}
            if any(v is None or v < 0 for v in counts.values()) or counts["total"] != total:
                raise CaptumSiftError(f"expected counts >= 0 over {total} images in cell {mode} {ratio}, got {cell}")
            if counts["correct"] > total or counts["worse"] + counts["better"] > total:
                raise CaptumSiftError(f"expected counts of at most {total} images in cell {mode} {ratio}, got {cell}")
            loaded[(mode, float(ratio))] = counts
        if num_cells is not None and total > 0 and len(loaded) != num_cells:
            raise CaptumSiftError(f"expected {num_cells} cells, got {len(loaded)}")
        self.baseline_correct, self.total, self.cells = base, total, loaded

    #: :meth:`state_dict` under its first name.
    state = state_dict
    #: :meth:`load_state_dict` under its first name.
    load_state = load_state_dict

    def save_csv(self, path: str | Path) -> None:
        """:meth:`rows` as a CSV file, written whole or not at all."""
        write_rows_csv(path, self.rows())

    def __str__(self) -> str:
        lines = [f"{'mode':>7s} {'ratio':>6s} {'acc':>7s} {'95% CI':>17s} {'delta':>7s} {'p':>8s}"]
        for r in self.rows():
            lines.append(
                f"{r['mode']:>7s} {r['ratio']:6.2f} {r['accuracy']:7.3f} [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}] "
                f"{r['delta']:+7.3f} {r['p_value']:8.2g}"
            )
        return "\n".join(lines)


def write_rows_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of a table (dicts with the same keys, in order) as a CSV file with a header, written whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
