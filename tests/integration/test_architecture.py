"""The package's shape (docs/architecture.md): layers import downward only, no private name crosses a package,
no import circle, no file over 400 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "captum_sift"
# Each package may import from its own layer and the ones before it.
LAYERS = [
    {"errors", "_checks", "_dist", "_io"},
    {"keypoints"},
    {"vit"},
    {"theta"},
    {"attr"},
    {"masking"},
    {"faithfulness"},
    {"data", "viz", "mae"},
    {"cli", "__init__", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(module: str, path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(imported module, names, at module level, line) for every import of captum_sift inside ``module``."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    typing_only = {  # `if TYPE_CHECKING:` imports never run
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "captum_sift":
                found.append((target, [a.name for a in node.names], id(node) in top, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "captum_sift":
                    found.append((alias.name, [], id(node) in top, node.lineno))
    return found


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    areas = {_area(m) for m in _modules()}
    assert areas <= set(LAYER), sorted(areas - set(LAYER))


def test_packages_import_only_downward():
    wrong = []
    for module, path in _modules().items():
        for target, _, _, line in _imports(module, path):
            if target == "captum_sift" and _area(module) not in {"cli", "__init__", "__main__"}:
                wrong.append(f"{path.name}:{line} imports the top-level package")
            elif target != "captum_sift" and LAYER[_area(target)] > LAYER[_area(module)]:
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, wrong


def test_no_private_name_crosses_a_package():
    wrong = []
    for module, path in _modules().items():
        for target, names, _, line in _imports(module, path):
            if _area(target) == _area(module) or LAYER.get(_area(target)) == 0:
                continue
            private_module = any(part.startswith("_") for part in target.split(".")[2:])
            private_names = [n for n in names if n.startswith("_") and not n.endswith("__")]
            if private_module or private_names:
                wrong.append(f"{module}:{line} imports {target} {private_names}")
    assert not wrong, wrong


def test_no_import_circle_between_modules():
    graph = {}
    modules = _modules()
    for module, path in modules.items():
        edges = set()
        for target, names, _, _ in _imports(module, path):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in modules and candidate != module:
                    edges.add(candidate)
                    break
        graph[module] = edges - {m for m in edges if modules[m].name == "__init__.py" and module.startswith(m)}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_are_short_enough_to_read_in_one_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines"
