"""ComparisonTable as an accumulator: merge, state_dict / load_state_dict, all_reduce over processes."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from captum_sift import CaptumSiftError
from captum_sift.faithfulness import ComparisonTable


def _part(offset: float) -> ComparisonTable:
    """A table of 2 images of one method: per-image AUCs, curve sums, one timed round."""
    table = ComparisonTable()
    table.add("theta", "deletion_auc", [offset + 0.1, offset + 0.2])
    table.add_curves("theta", [0.0, 0.5, 1.0], torch.tensor([[1.0, 0.5, 0.0], [0.8, 0.4, offset]]),
                     torch.tensor([[0.0, 0.5, 1.0], [0.1, 0.2, 0.3]]))  # fmt: skip
    table.add_time("theta", 0.2 + offset, 2, 0.1)
    return table


def test_merge_concatenates_values_adds_curves_and_lists_rounds():
    a, b, c = _part(0.0), _part(1.0), _part(2.0)
    merged = a.merge(b, c)
    assert merged.values["theta"]["deletion_auc"] == [0.1, 0.2, 1.1, 1.2, 2.1, 2.2]
    assert merged.curves["theta"]["n"] == 6
    assert merged.curves["theta"]["deletion"] == pytest.approx([5.4, 2.7, 3.0])  # 3 x (1.8, 0.9) and 0 + 1 + 2
    assert [round(s, 6) for s, _, _ in merged.timing["theta"]] == [0.2, 1.2, 2.2]
    assert merged.to_dict() == a.merge(b).merge(c).to_dict()
    assert a.values["theta"]["deletion_auc"] == [0.1, 0.2]  # the parts are left as they were
    with pytest.raises(CaptumSiftError, match="expected ComparisonTables to merge, got int"):
        a.merge(b, 5)


def test_state_dict_round_trips_through_json_and_load_replaces():
    table = _part(0.0).merge(_part(1.0))
    state = json.loads(json.dumps(table.state_dict()))
    other = _part(5.0)
    other.load_state_dict(state)
    assert other.state_dict() == table.state_dict() and other.cost == table.cost
    assert ComparisonTable.from_dict(state).state_dict() == table.state_dict() == table.to_dict()
    before = other.state_dict()
    for bad in ({"values": 3}, {"values": {}, "curves": {}, "timing": {"theta": [[0.1, 2]]}}, {"values": {}}):
        with pytest.raises(CaptumSiftError, match="expected a comparison table"):
            other.load_state_dict(bad)
        assert other.state_dict() == before  # a refused state changes nothing


def test_all_reduce_in_one_process_changes_nothing():
    table = _part(0.0)
    before = json.dumps(table.state_dict())
    table.all_reduce()
    assert json.dumps(table.state_dict()) == before


def _all_reduce_rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        table = _part(float(rank)) if rank != 1 else ComparisonTable()  # rank 1 saw no image
        table.all_reduce("cpu")
        with open(f"{out}.{rank}", "w") as f:
            json.dump(table.state_dict(), f)
    finally:
        dist.destroy_process_group()


def test_all_reduce_gathers_every_rank_in_rank_order(tmp_path):
    mp.spawn(_all_reduce_rank, args=(3, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=3)
    whole = _part(0.0).merge(ComparisonTable(), _part(2.0)).state_dict()
    for rank in range(3):
        assert json.loads((tmp_path / f"out.{rank}").read_text()) == json.loads(json.dumps(whole))
