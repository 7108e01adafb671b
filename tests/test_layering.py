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


NET = ROOT / "draco" / "net"
PS = ROOT / "draco" / "ps"
#: The PS's asyncio shell (server.py and its parts server_*.py): the only modules of
#: draco/net that drive the PS's round logic.
PS_SHELL = {p.name for p in NET.glob("server*.py")}
#: The PS's composition root: builds the engine, the recorder and the shell, runs them.
PS_ROOT = {"service.py"}
#: The sans-IO protocol modules the PS's configuration may read limits from.
PROTOCOL_MODULES = {
    "draco.net.frames",
    "draco.net.messages",
    "draco.net.protocol",
    "draco.net.auth",
}


def _draco_modules(path: Path) -> set[str]:
    """Every ``draco.*`` module name ``path`` imports (top level or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("draco."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("draco."):
            # ``from draco.net import messages``: the module draco.net.messages.
            found.update(f"{node.module}.{a.name}" for a in node.names)
            found.add(str(node.module))
    return found


def _in(package: str, names: set[str]) -> set[str]:
    return {n for n in names if n == package or n.startswith(package + ".")}


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_imports_no_other_layer(path: Path) -> None:
    mods = _draco_modules(path)
    assert not (_in("draco.net", mods) | _in("draco.ps", mods) | _in("draco.tasks", mods)), (
        f"draco/core/{path.name} imports {sorted(mods)}"
    )


@pytest.mark.parametrize("path", sorted(NET.glob("*.py")), ids=lambda p: p.name)
def test_net_reaches_the_ps_only_from_its_shell(path: Path) -> None:
    assert "server.py" in PS_SHELL and "peer.py" not in PS_SHELL
    # draco/net is the wire (sans-IO protocol, the asyncio adapters) and the two shells; the
    # PS's round logic lives in draco/ps and only the PS shell drives it.
    if path.name in PS_SHELL:
        return
    mods = _in("draco.ps", _draco_modules(path))
    assert not mods, f"draco/net/{path.name} imports {sorted(mods)}: only the PS shell may"


@pytest.mark.parametrize("path", sorted(PS.glob("*.py")), ids=lambda p: p.name)
def test_ps_logic_is_not_networked(path: Path) -> None:
    # The round logic is pure: no event loop, no sockets, and of draco/net only the sans-IO
    # protocol's constants; the composition root (service.py) alone starts the shell.
    if path.name in PS_ROOT:
        return
    assert not _imports(path) & {"asyncio", "socket", "ssl", "selectors", "uvloop"}
    net = _in("draco.net", _draco_modules(path)) - {"draco.net"}
    beyond = {n for n in net if not any(n == p or n.startswith(p + ".") for p in PROTOCOL_MODULES)}
    assert not beyond, f"draco/ps/{path.name} imports {sorted(beyond)}"


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
