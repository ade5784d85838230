"""What a command writes into --out: report.json (or compare.json), index.html, the versions that made them."""

from __future__ import annotations

import html
import json
import platform
from pathlib import Path
from typing import Any

import captum
import kornia
import torch
import torchvision

from .. import __version__
from .._io import write_text_atomic
from ..theta.report_io import nan_to_none
from .control_lines import CONTROLS_EXPLAINED

__all__ = ["OUTPUT_FILES", "clear_outputs", "stage_line", "versions", "write_index", "write_json"]

#: Every file analyze, mask-eval, compare and keypoints write into --out.
OUTPUT_FILES = (
    "report.json", "per_layer_head.csv", "index.html", "keypoints.png", "interrelation.png", "focus_index.png",
    "stages.png", "heatmaps.png", "spurious.png", "spurious_positions.png", "mask_eval.csv", "mask_eval.png",
    "masked_examples.png", "compare.csv", "compare.json", "deletion.png", "insertion.png", "sanity.png",
    "overlays.png", "counts.csv", "summary.json", "theta_heads.png",
)  # fmt: skip


def clear_outputs(out: Path) -> None:
    """Remove a previous run's outputs, which would stand beside this run's as if they belonged."""
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)


def versions() -> dict[str, str]:
    """The versions of captum_sift, Python and the libraries that computed the results."""
    import timm  # startup cost: seconds, paid only by a command that reports its versions

    found = {
        "captum_sift": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "captum": captum.__version__, "kornia": kornia.__version__,
        "python": platform.python_version(),
    }  # fmt: skip
    try:
        import transformers  # optional dependency (extra hf)

        found["transformers"] = transformers.__version__
    except ImportError:
        pass
    return found


def write_json(path: Path, document: dict[str, Any]) -> None:
    """A JSON document, NaN written as null, whole or not at all."""
    write_text_atomic(path, json.dumps(nan_to_none(document), indent=1))


def stage_line(info: dict[str, Any]) -> str:
    """One line on the stages (``Stages.to_dict()``, or ``{"error": ...}``) for stdout and index.html."""
    if "error" in info:
        return f"no stages: {info['error']}"
    conf = info.get("confidence") or {}
    text = ", ".join(f"{k} {v:.2f}" for k, v in conf.items() if v is not None) or "none"
    head = "stages" if info.get("clear", True) else "NO CLEAR STAGES (best split shown)"
    return (f"{head}: Retrieval {info['retrieval']}, Capture {info['capture']}, Coach {info['coach']} "
            f"(boundary confidence: {text}); {info.get('verdict', '')}")  # fmt: skip


def _summary(document: dict[str, Any]) -> str:
    """The warnings, the stages, the table and the skipped files as HTML paragraphs."""
    summary = "".join(
        f'<p style="color:#b00;font-weight:bold">{html.escape(w)}</p>' for w in document.get("warnings", [])
    )
    if "stages" in document and "error" not in document["stages"]:
        st = document["stages"]
        style = "" if st.get("clear", True) else ' style="color:#b00;font-weight:bold"'
        summary += f"<p{style}>{html.escape(stage_line(st))}.</p><p>{html.escape(st['rule'])}</p>"
    elif "stages" in document:
        summary += f"<p>No stages: {html.escape(document['stages']['error'])}</p>"
    controls = document.get("controls")
    if controls:
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in controls["verdicts"])
        summary += f"<h2>Controls</h2><p>{html.escape(CONTROLS_EXPLAINED)}</p><ul>{lines}</ul>"
    if "table" in document:
        summary += "<pre>" + html.escape(document["table"]) + "</pre>"
    skipped = document.get("skipped_files") or []
    if skipped:
        items = "".join(f"<li>{html.escape(p)}: {html.escape(r)}</li>" for p, r in skipped)
        summary += f"<p>Skipped {len(skipped)} unreadable file(s):</p><ul>{items}</ul>"
    return summary


def write_index(out: Path, title: str, document: dict[str, Any], figures: dict[str, str]) -> None:
    """index.html: the summary, the settings, every figure with its caption, links to the data files."""
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in document["settings"].items()
    )
    figs = "".join(
        f'<figure><img src="{name}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for name, c in figures.items()
    )
    files = ", ".join(
        f'<a href="{html.escape(name)}">{html.escape(name)}</a>'
        for name in (n.strip() for n in document.get("data_files", "report.json").split(","))
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head>
<body><h1>{title}</h1><p>{document.get("num_images", "")} images.</p>{_summary(document)}
<table>{rows}</table>{figs}
<p>Data: {files}.</p></body></html>
"""
    write_text_atomic(out / "index.html", page)
