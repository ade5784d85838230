"""Every Python snippet in README.md and docs/tutorial.md runs as written; docs/api.md names import."""

import importlib
import importlib.util
import re
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[2]


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
        try:
            _resolve(module, name)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{name}")
    assert not missing, missing


def _api_tables() -> list[tuple[str | None, list[str]]]:
    """(module, rows) of every table of docs/api.md, rows as their first cells' text."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt().enable("table").parse((ROOT / "docs" / "api.md").read_text())
    tables, module, cell_of_row = [], None, None
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            heading = re.match(r"`([\w.]+)`", tokens[i + 1].content)
            module = heading.group(1) if heading else None
        elif token.type == "table_open":
            tables.append((module, []))
        elif token.type == "tr_open":
            cell_of_row = 0
        elif token.type in ("td_open", "th_open"):
            cell_of_row += 1
        elif token.type == "inline" and cell_of_row == 1 and tables and tokens[i - 1].type == "td_open":
            tables[-1][1].append(token.content)
    return tables


def test_every_table_row_of_the_api_page_renders_as_a_table_row():
    """A row separated from its header by a blank line or a paragraph renders as text, not as a row."""
    text = (ROOT / "docs" / "api.md").read_text()
    source_rows = [line for line in text.splitlines() if line.startswith("| `")]
    rendered = [row for _, rows in _api_tables() for row in rows]
    assert len(rendered) == len(source_rows), "rows outside a table: " + str(
        [r for r in source_rows if r.split(" | ")[0].lstrip("| ").strip("`") not in " ".join(rendered)]
    )


_SIGNATURE = re.compile(r"^([A-Za-z_][\w.]*)\((.*)\)$")


def _documented_signatures() -> list[tuple[str, str, str]]:
    """(module, name, parameter text) of every `name(params)` in the first column of docs/api.md's tables."""
    out = []
    for module, rows in _api_tables():
        for first in rows:
            for item in re.findall(r"`([^`]+)`", first):
                match = _SIGNATURE.match(item.split(" -> ")[0].strip())
                if module and match:
                    out.append((module, match.group(1), match.group(2)))
    return out


def _resolve(module: str, name: str):
    """``name`` in ``module``: a plain name, a path below captum_sift (``mae.pretrain.PretrainConfig``) or
    ``Class.method``."""
    first, *rest = name.split(".")
    if rest and importlib.util.find_spec(f"captum_sift.{first}") is not None:
        *parts, attr = name.split(".")
        return getattr(importlib.import_module(".".join(["captum_sift", *parts])), attr)
    target = getattr(importlib.import_module(module), first)
    for attr in rest:
        target = getattr(target, attr)
    return target


def test_every_signature_on_the_api_page_is_the_code_s():
    """Names, order, kinds (positional / keyword-only / *args / **kwargs) and defaults of each documented call."""
    import ast
    import inspect

    signatures = _documented_signatures()
    assert len(signatures) > 50
    wrong = []
    for module, name, params in signatures:
        obj = _resolve(module, name)
        actual = inspect.signature(obj)
        try:
            tree = ast.parse(f"def f({params}): pass").body[0].args
        except SyntaxError:
            wrong.append(f"{module}.{name}: page ({params}) is not a parameter list")
            continue
        documented = []
        positional = tree.posonlyargs + tree.args
        pos_defaults = [None] * (len(positional) - len(tree.defaults)) + tree.defaults
        documented += [(a.arg, "POSITIONAL", d) for a, d in zip(positional, pos_defaults, strict=True)]
        if tree.vararg:
            documented.append((tree.vararg.arg, "VAR_POSITIONAL", None))
        documented += [(a.arg, "KEYWORD_ONLY", d) for a, d in zip(tree.kwonlyargs, tree.kw_defaults, strict=True)]
        if tree.kwarg:
            documented.append((tree.kwarg.arg, "VAR_KEYWORD", None))
        code = [
            (p.name, "POSITIONAL" if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else p.kind.name, p)
            for p in actual.parameters.values()
            if p.name != "self"
        ]
        if [(n, k) for n, k, _ in documented] != [(n, k) for n, k, _ in code]:
            wrong.append(f"{module}.{name}: page ({params}) vs code {actual}")
            continue
        for (pname, _, node), (_, _, parameter) in zip(documented, code, strict=True):
            has_default = parameter.default is not inspect.Parameter.empty
            variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            if (node is None) == has_default and not variadic:
                wrong.append(f"{module}.{name}: default of {pname}: page {ast.unparse(node) if node else 'none'}")
            elif node is not None and not (isinstance(node, ast.Constant) and node.value is ...):
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    value = ast.unparse(node)  # a name, e.g. DEFAULT_METHODS: the code's default has that name
                    if getattr(importlib.import_module(obj.__module__), value, object()) != parameter.default:
                        wrong.append(f"{module}.{name}: default of {pname}: page {value}, code {parameter.default!r}")
                    continue
                if value != parameter.default and not (isinstance(value, list) and tuple(value) == parameter.default):
                    wrong.append(f"{module}.{name}: default of {pname}: page {value!r}, code {parameter.default!r}")
    assert not wrong, "\n".join(wrong)


def test_the_api_page_names_every_command():
    import argparse

    from captum_sift.cli.main import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    section = (ROOT / "docs" / "api.md").read_text().split("## Command line", 1)[1]
    missing = [name for name in commands if f"`{name}`" not in section and f"`captum-sift {name}`" not in section]
    assert not missing, missing
