"""The house rules of docs/architecture.md: which layers may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


TORCH_TASKS = ROOT / "draco" / "tasks" / "torch"
CORE_FILES = sorted((ROOT / "draco" / "core").glob("*.py"))
SANS_IO_FILES = [
    ROOT / "draco" / "net" / f
    for f in (
        "frames.py",
        "wireformat.py",
        "framedecoder.py",
        "arraypool.py",
        "messages.py",
        "protocol.py",
        "auth.py",
    )
]


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_imports_numpy_only(path: Path) -> None:
    # threadpoolctl: BLAS thread control only (draco/core/blas_threads.py), no maths.
    allowed = {"numpy", "draco", "__future__"} | (
        {"threadpoolctl"} if path.name == "blas_threads.py" else set()
    )
    third_party = _imports(path) - allowed
    import sys

    assert third_party <= set(sys.stdlib_module_names), f"{path.name} imports {third_party}"
    assert "asyncio" not in third_party


@pytest.mark.parametrize("path", [p for p in SANS_IO_FILES if p.exists()], ids=lambda p: p.name)
def test_sans_io_modules_touch_no_sockets(path: Path) -> None:
    assert not _imports(path) & {"asyncio", "socket", "torch", "uvloop", "selectors"}


@pytest.mark.parametrize(
    "path",
    [p for p in (ROOT / "draco").rglob("*.py") if not p.is_relative_to(TORCH_TASKS)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_torch_only_under_tasks_torch(path: Path) -> None:
    assert "torch" not in _imports(path)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "cli":  # installed as draco.cli (pyproject's package-dir)
        parts = ["draco", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _draco_imports(path: Path, modules: set[str]) -> set[str]:
    """Every draco module ``path`` imports, at the top or inside a function (both can loop)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from draco.tasks.torch import cifar`` imports the module draco.tasks.torch.cifar.
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else node.module for t in targets]
        else:
            continue
        found.update(t for t in targets if t in modules)
    return found


def test_no_import_circles() -> None:
    # A circle (even through an import inside a function) means two modules that cannot be
    # read, tested or moved apart; issue 14 broke train/data <-> train/synthetic.
    files = [
        p for p in sorted((ROOT / "draco").rglob("*.py")) + sorted((ROOT / "cli").glob("*.py"))
    ]
    modules = {_module_name(p) for p in files}
    graph = {_module_name(p): _draco_imports(p, modules) for p in files}
    packages = {m for m in modules if any(o.startswith(m + ".") for o in modules)}
    # A package's __init__ re-exporting its modules is not a circle: leave packages out.
    graph = {m: {t for t in deps if t not in packages} for m, deps in graph.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                circles.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
