"""Every Python snippet in README.md and docs/tutorial.md runs as written; docs/api.md names import."""

import importlib
import re
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.+?)\n```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/tutorial.md"])
def test_snippets_run_as_written(page, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("cv2")
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # figures and reports land here
    blocks = python_blocks(ROOT / page)
    assert blocks, f"no python block in {page}"
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page} block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"{page}, python block {i + 1} failed: {exc!r}\n{block}") from exc
    import matplotlib.pyplot as plt

    plt.close("all")


def _documented_names() -> list[tuple[str, str]]:
    """(module, name) for every backticked name in the first column of docs/api.md's tables."""
    out = []
    module = None
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        heading = re.match(r"## `([\w.]+)`", line)
        if heading:
            module = heading.group(1)
            continue
        if line.startswith("## "):
            module = None
        if module is None or not line.startswith("| `"):
            continue
        first = line.split(" | ")[0]
        for item in re.findall(r"`([^`]+)`", first):
            name = re.match(r"[\w.]+", item).group(0)
            out.append((module, name))
    return out


def test_every_name_on_the_api_page_imports_from_where_it_says():
    names = _documented_names()
    assert len(names) > 60
    missing = []
    for module, name in names:
        if "." in name:  # a path below captum_sift, e.g. mae.pretrain.PretrainConfig
            *parts, attr = name.split(".")
            module, name = ".".join(["captum_sift", *parts]), attr
        if not hasattr(importlib.import_module(module), name):
            missing.append(f"{module}.{name}")
    assert not missing, missing
