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


CORE_FILES = sorted((ROOT / "draco" / "core").glob("*.py"))
SANS_IO_FILES = [
    ROOT / "draco" / "net" / f for f in ("frames.py", "messages.py", "protocol.py", "auth.py")
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
    [p for p in (ROOT / "draco").rglob("*.py") if "train" not in p.parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_torch_only_under_train(path: Path) -> None:
    assert "torch" not in _imports(path)
