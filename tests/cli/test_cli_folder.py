"""cli/folder.py: report.json (NaN as null, written whole or not at all), index.html, the stage line, the outputs."""

import json

from captum_sift.cli.folder import OUTPUT_FILES, clear_outputs, stage_line, write_index, write_json


def test_write_json_writes_nan_as_null_and_leaves_no_temporary_file(tmp_path):
    write_json(tmp_path / "report.json", {"a": float("nan"), "b": [1.5, float("nan")]})
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": None, "b": [1.5, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_index_escapes_and_links(tmp_path):
    document = {"settings": {"model": "<vit>"}, "num_images": 3, "warnings": ["careful & slow"],
                "skipped_files": [["a<b>.jpg", "broken"]], "table": "x < y",
                "stages": {"error": "too few layers"}, "data_files": "report.json, mask_eval.csv"}  # fmt: skip
    write_index(tmp_path, "captum-sift mask-eval", document, {"mask_eval.png": "accuracy & ratio"})
    page = (tmp_path / "index.html").read_text()
    assert "<th>model</th><td>&lt;vit&gt;</td>" in page and "<p>3 images.</p>" in page
    assert '<p style="color:#b00;font-weight:bold">careful &amp; slow</p>' in page
    assert "<li>a&lt;b&gt;.jpg: broken</li>" in page and "<pre>x &lt; y</pre>" in page
    assert "<p>No stages: too few layers</p>" in page
    assert '<img src="mask_eval.png" alt="accuracy &amp; ratio">' in page
    assert '<a href="report.json">report.json</a>, <a href="mask_eval.csv">mask_eval.csv</a>' in page


def test_stage_line():
    info = {"retrieval": [0], "capture": [1, 2], "coach": [3], "confidence": {"capture_start": 0.9,
            "coach_start": None}, "clear": True, "verdict": "clear"}  # fmt: skip
    assert stage_line(info) == (
        "stages: Retrieval [0], Capture [1, 2], Coach [3] (boundary confidence: capture_start 0.90); clear"
    )
    assert stage_line({**info, "clear": False}).startswith("NO CLEAR STAGES (best split shown): ")
    assert stage_line({"error": "flat"}) == "no stages: flat"


def test_clear_outputs_removes_only_the_outputs(tmp_path):
    for name in (*OUTPUT_FILES, "notes.txt", ".partial-analyze-rank0-of-1.json"):
        (tmp_path / name).write_text("x")
    clear_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".partial-analyze-rank0-of-1.json", "notes.txt"]
