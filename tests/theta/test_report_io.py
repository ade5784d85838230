"""InterrelationReport's files: JSON and CSV written and read back exactly; damaged files refused with a reason."""

import json
import math

import pytest
import torch
from test_report import SETTINGS, _assert_same, hand_report

from captum_sift import CaptumSiftError
from captum_sift.theta.report import InterrelationReport
from captum_sift.theta.report_io import nan_to_none


@pytest.mark.parametrize("per_image", [True, False])
def test_json_round_trip_is_exact(tmp_path, per_image):
    report = hand_report().with_image_index([3, 2, 1, 0])
    report.save_json(tmp_path / "r.json", per_image=per_image)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and ("null" in text) == per_image  # JSON has no NaN: the per-image NaN are null
    back = InterrelationReport.load_json(tmp_path / "r.json")
    _assert_same(back, report if per_image else report.without_per_image())


def test_to_dict_holds_the_means_by_hand():
    data = hand_report().to_dict()
    assert list(data) == ["layers", "num_heads", "grid_size", "settings", "num_images", "sums", "counts", "means",
                          "extra", "curves", "positions", "per_image"]  # fmt: skip
    assert data["means"]["focus"] == [[0.625, 0.8125], [0.75, 0.625]]
    assert data["means"]["nk"][1] == [0.375, 0.5625]
    assert data["counts"]["kk"] == [[3, 4], [4, 3]]
    assert data["per_image"]["kk"][1][0] == [None, 0.5]  # NaN as null
    assert data["positions"] == {"key": [3, 1, 2, 2], "spurious": [1, 1, 1, 0]}
    only_sums = hand_report(slice(2, 3)).to_dict(per_image=False)
    assert "per_image" not in only_sums and only_sums["means"]["nk"][0] == [None, None]  # no image: null


def test_csv_round_trip_keeps_the_exact_sums(tmp_path):
    report = hand_report()
    report.save_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == ("layer,head,kk,kn,nk,nn,focus,focus_normalized,images_kk,images_nk,images_focus,"
                        "sum_kk,sum_nk,sum_focus,num_images,grid_h,grid_w,settings")  # fmt: skip
    assert len(lines) == 1 + 2 * 2
    # layer 2 (the second analysed layer), head 1: θ_KK 1.75 over 3 images, θ_NK 2.25 over 4, focus 2.5 over 4
    row = lines[4].split(",")
    assert row[:2] == ["2", "1"] and row[2] == "0.583333" and row[4] == "0.5625" and row[6] == "0.625"
    assert row[7] == f"{0.625 / math.log(4):.6g}" and row[8:14] == ["3", "4", "4", "1.75", "2.25", "2.5"]
    back = InterrelationReport.load_csv(tmp_path / "r.csv")
    assert not back.has_per_image and back.curves is None and back.positions is None
    assert (back.layers, back.num_heads, back.grid_size, back.num_images, back.settings) == (
        [0, 2], 2, (2, 2), 4, SETTINGS
    )  # fmt: skip
    for name in ("kk", "nk", "focus"):
        assert torch.equal(back.sums[name], report.sums[name]) and torch.equal(back.counts[name], report.counts[name])


def _damage(report, tmp_path, change):
    data = report.to_dict()
    change(data)
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["sums"]["kk"][0].__setitem__(0, 3.5), r"finite sums of 'kk' in \[0, 1 x count\], got 3.5"),
        (lambda d: d["counts"]["nk"][1].__setitem__(1, 2.0), "counts of 'nk' to be ints, got torch.float32"),
        (lambda d: d["positions"].__setitem__("spurious", [4, 1, 1, 0]), "0 <= spurious <= key <= images"),
        (lambda d: d["curves"].__setitem__("kk", [[0.5, 0.5]]), r"'kk' curves of shape \(4, 2\), got \(1, 2\)"),
        (lambda d: d["per_image"].pop("query_patch"), "KeyError"),
        (lambda d: d["per_image"]["focus"][0][0].__setitem__(0, 2.0), r"per-image 'focus' in \[0, 1.386\]"),
        (lambda d: d.__setitem__("layers", [2, 0]), "layers to be increasing ints >= 0"),
        (lambda d: d.__setitem__("num_images", -1), "num_images to be an int >= 0, got -1"),
    ],
)
def test_a_damaged_json_file_is_refused(tmp_path, change, message):
    path = _damage(hand_report(), tmp_path, change)
    with pytest.raises(CaptumSiftError, match=message):
        InterrelationReport.load_json(path)


def test_unreadable_files_are_refused(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(hand_report().to_dict())[:200])
    with pytest.raises(CaptumSiftError, match="cannot read a report from .*cut.json"):
        InterrelationReport.load_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(CaptumSiftError, match="expected a report dict, got list"):
        InterrelationReport.load_json(path)
    with pytest.raises(CaptumSiftError, match="cannot read a report from"):
        InterrelationReport.load_json(tmp_path / "missing.json")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(CaptumSiftError, match="expected a CSV written by InterrelationReport.save_csv"):
        InterrelationReport.load_csv(other)
    hand_report().save_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[11] = "x"  # sum_kk
    (tmp_path / "r.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]))
    with pytest.raises(CaptumSiftError, match="save_csv, got .*r.csv: could not convert string to float: 'x'"):
        InterrelationReport.load_csv(tmp_path / "r.csv")


def test_nan_to_none():
    assert nan_to_none({"a": [1.0, math.nan, [math.nan]], "b": "x"}) == {"a": [1.0, None, [None]], "b": "x"}
