"""MaskingTable as an accumulator: merge, state_dict round trip, one-process all_reduce, atomic CSV."""

import csv
import json

import pytest
import torch

from captum_sift import CaptumSiftError
from captum_sift.masking.stats import mcnemar_exact, wilson_interval
from captum_sift.masking.table import MaskingTable, write_rows_csv

PLAN = [("top", 0.1), ("random", 0.25)]


def outcomes(n: int, seed: int) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, generator=g) < 0.7
    return base, {cell: torch.rand(n, generator=g) < 0.5 for cell in PLAN}


def table_of(base: torch.Tensor, masked: dict, settings: dict | None = None) -> MaskingTable:
    table = MaskingTable(settings=settings or {"fill": "0.0"})
    table.baseline_correct += int(base.sum())
    table.total += int(base.numel())
    for (mode, ratio), ok in masked.items():
        table.add(mode, ratio, ok, base)
    return table


def test_counts_by_hand():
    base = torch.tensor([True, True, False, False, True])
    masked = torch.tensor([True, False, True, False, False])
    table = table_of(base, {("top", 0.1): masked})
    assert table.cells[("top", 0.1)] == {"correct": 2, "total": 5, "worse": 2, "better": 1}
    rows = table.rows()
    assert rows[0] == {"mode": "none", "ratio": 0.0, "accuracy": 0.6, "ci_low": wilson_interval(3, 5)[0],
                       "ci_high": wilson_interval(3, 5)[1], "n": 5, "delta": 0.0, "worse": 0, "better": 0,
                       "p_value": 1.0}  # fmt: skip
    assert rows[1]["accuracy"] == 0.4 and rows[1]["delta"] == pytest.approx(-0.2)
    assert rows[1]["p_value"] == mcnemar_exact(2, 1) == 1.0
    assert table.accuracy("top", 0.1) == 0.4


def test_merge_of_two_halves_equals_one_pass():
    base, masked = outcomes(11, seed=3)
    whole = table_of(base, masked)
    first = table_of(base[:4], {k: v[:4] for k, v in masked.items()})
    second = table_of(base[4:], {k: v[4:] for k, v in masked.items()})
    merged = first.merge(second)
    assert merged == whole
    assert merged.rows() == whole.rows()
    assert first.total == 4 and second.total == 7  # the halves are left as they were
    assert MaskingTable(settings={"fill": "0.0"}).merge(whole) == whole  # an empty table fits any plan


def test_merge_refuses_other_settings_plans_and_types():
    base, masked = outcomes(4, seed=0)
    table = table_of(base, masked)
    with pytest.raises(CaptumSiftError, match="same settings"):
        table.merge(table_of(base, masked, {"fill": "mean"}))
    with pytest.raises(CaptumSiftError, match="same modes x ratios"):
        table.merge(table_of(base, {("top", 0.1): masked[("top", 0.1)]}))
    with pytest.raises(CaptumSiftError, match="expected a MaskingTable to merge, got dict"):
        table.merge({})


def test_state_dict_round_trip_is_exact():
    base, masked = outcomes(9, seed=1)
    table = table_of(base, masked)
    restored = MaskingTable(settings=dict(table.settings))
    restored.load_state_dict(json.loads(json.dumps(table.state_dict())), num_cells=len(PLAN))
    assert restored == table
    assert restored.rows() == table.rows()
    assert str(restored) == str(table)
    # the first names of the same methods
    assert MaskingTable.state is MaskingTable.state_dict and MaskingTable.load_state is MaskingTable.load_state_dict


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(baseline_correct=10), "expected baseline_correct to be an int >= 0 and <= 9, got 10"),
        (lambda s: s.update(total=-1), "expected total to be an int >= 0, got -1"),
        (lambda s: s["cells"][0].__setitem__(0, "left"), "expected a cell of a mode in"),
        (lambda s: s["cells"][0][2].update(total=8), "expected counts >= 0 over 9 images"),
        (lambda s: s["cells"][0][2].update(worse=9, better=1), "expected counts of at most 9 images"),
        (lambda s: s["cells"].pop(), "expected 2 cells, got 1"),
    ],
)
def test_load_state_dict_refuses_damaged_counts(change, message):
    base, masked = outcomes(9, seed=1)
    table = table_of(base, masked)
    state = json.loads(json.dumps(table.state_dict()))
    change(state)
    fresh = MaskingTable()
    with pytest.raises(CaptumSiftError, match=message):
        fresh.load_state_dict(state, num_cells=len(PLAN))
    assert fresh == MaskingTable()  # nothing replaced


def test_all_reduce_in_one_process_keeps_the_counts_and_fills_the_plan():
    base, masked = outcomes(6, seed=2)
    table = table_of(base, masked)
    before = {k: dict(v) for k, v in table.cells.items()}
    table.all_reduce(["top", "random"], [0.1, 0.25])
    assert table.cells[("top", 0.1)] == before[("top", 0.1)]
    assert table.cells[("random", 0.25)] == before[("random", 0.25)]
    assert table.cells[("top", 0.25)] == {"correct": 0, "total": 0, "worse": 0, "better": 0}  # a cell of the plan


def test_save_csv_writes_the_rows(tmp_path):
    base, masked = outcomes(5, seed=4)
    table = table_of(base, masked)
    table.save_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["mode"] for r in read] == ["none", "top", "random"]
    assert [float(r["accuracy"]) for r in read] == [r["accuracy"] for r in table.rows()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_a_failed_csv_write_leaves_no_file_and_the_old_one_whole(tmp_path, monkeypatch):
    def fail(self, rows):
        self.writerow(rows[0])  # half of the table is written
        raise OSError("disk full")

    rows = [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.5}]
    monkeypatch.setattr(csv.DictWriter, "writerows", fail)
    with pytest.raises(OSError, match="disk full"):
        write_rows_csv(tmp_path / "t.csv", rows)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "t.csv").write_text("old\n")
    with pytest.raises(OSError, match="disk full"):
        write_rows_csv(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
