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


# -- size: no module over ~600 lines, no function over ~80 lines of code (issue 14) ----------

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80  # lines of code: not blank, not only a comment, not the docstring

# Exempt files, each with the reason (none today). Each entry must still be over the limit:
# when one comes under it, test_size_allow_lists_are_current fails until it is removed here.
LONG_MODULES_ALLOWED: dict[str, str] = {}
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}

SIZED_FILES = sorted((ROOT / "draco").rglob("*.py")) + sorted((ROOT / "cli").glob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _code_lines(source: str) -> set[int]:
    """Line numbers that hold a token of code (blank and comment-only lines hold none)."""
    import io
    import tokenize

    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip and tok.type != tokenize.ENDMARKER:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def function_sizes(path: Path) -> dict[str, int]:
    """``Class.method`` / ``function`` -> lines of code of its body and signature, its
    docstring left out (nested functions count towards the function that holds them)."""
    source = path.read_text()
    code = _code_lines(source)
    sizes: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = set(range(child.lineno, (child.end_lineno or child.lineno) + 1))
                first = child.body[0] if child.body else None
                if (
                    isinstance(first, ast.Expr)
                    and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)
                ):
                    span -= set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
                name = prefix + child.name
                sizes[name] = max(sizes.get(name, 0), len(span & code))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename=str(path)), "")
    return sizes


@pytest.mark.parametrize(
    "path", [p for p in SIZED_FILES if _rel(p) not in LONG_MODULES_ALLOWED], ids=_rel
)
def test_modules_stay_under_600_lines(path: Path) -> None:
    # A newcomer should find each concept in one file they can read: split by job instead.
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_rel(path)} has {lines} lines (> {MAX_MODULE_LINES})"


@pytest.mark.parametrize("path", SIZED_FILES, ids=_rel)
def test_functions_stay_under_80_lines_of_code(path: Path) -> None:
    # A longer function is several steps: extract them as named functions.
    long = {
        name: n
        for name, n in function_sizes(path).items()
        if n > MAX_FUNCTION_LINES and f"{_rel(path)}::{name}" not in LONG_FUNCTIONS_ALLOWED
    }
    assert not long, f"{_rel(path)}: functions over {MAX_FUNCTION_LINES} lines of code: {long}"


def test_size_allow_lists_are_current() -> None:
    stale = [
        rel
        for rel in LONG_MODULES_ALLOWED
        if not (ROOT / rel).exists()
        or len((ROOT / rel).read_text().splitlines()) <= MAX_MODULE_LINES
    ]
    for entry in LONG_FUNCTIONS_ALLOWED:
        rel, name = entry.split("::")
        sizes = function_sizes(ROOT / rel) if (ROOT / rel).exists() else {}
        if sizes.get(name, 0) <= MAX_FUNCTION_LINES:
            stale.append(entry)
    assert not stale, f"now within the limits (or gone): remove from the allow-lists: {stale}"


def test_function_sizes_counts_code_not_docstrings_or_comments(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "class A:\n"
        "    def f(self):\n"
        '        """Doc\n\n        more doc.\n        """\n'
        "        # a comment\n"
        "\n"
        "        x = 1\n"
        "        def g():\n"
        "            return (1,\n"
        "                    2)\n"
        "        return x\n"
    )
    assert function_sizes(source) == {"A.f": 6, "A.f.g": 3}


# -- the layers of the tools: launcher, experiments, benchmarks (issue 14) --------------------

#: Library packages of the console commands: each its own job, above the run's layers.
TOOL_PACKAGES = ("draco.launch", "draco.experiment", "draco.bench")
#: The layers a run is made of; none of them may reach up into a tool or into cli/.
RUN_LAYERS = ("core", "net", "ps", "tasks")
LIBRARY_FILES = sorted((ROOT / "draco").rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=_rel)
def test_library_never_imports_cli(path: Path) -> None:
    # cli/ parses flags and calls the library; the library never calls back into a command.
    mods = _in("draco.cli", _draco_modules(path))
    assert not mods, f"{_rel(path)} imports {sorted(mods)}"


@pytest.mark.parametrize(
    "path",
    [p for p in LIBRARY_FILES if p.relative_to(ROOT / "draco").parts[0] in RUN_LAYERS],
    ids=_rel,
)
def test_run_layers_do_not_import_the_tools(path: Path) -> None:
    mods = _draco_modules(path)
    found = {m for package in TOOL_PACKAGES for m in _in(package, mods)}
    assert not found, f"{_rel(path)} imports {sorted(found)}"


@pytest.mark.parametrize(
    ("package", "other"),
    [(p, o) for p in TOOL_PACKAGES for o in TOOL_PACKAGES if p != o],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_tools_are_independent(package: str, other: str) -> None:
    folder = ROOT.joinpath(*package.split("."))
    assert folder.is_dir(), f"{package} is missing"
    for path in sorted(folder.rglob("*.py")):
        mods = _in(other, _draco_modules(path))
        assert not mods, f"{_rel(path)} imports {sorted(mods)}"


# -- cli/ is thin: argument parsing and main only (issue 14) ----------------------------------

CLI_FILES = sorted((ROOT / "cli").glob("*.py"))
MAX_CLI_LINES = 400  # cli/ps.py, the longest: draco-ps's ~60 flags with their help
#: Names every cli module may define: its parser, its (sub)commands' flag groups, its main.
CLI_FUNCTIONS = (
    "main",
    "build_parser",
    "build_*_parser",
    "add_parser",
    "add_arguments",
    "add_subcommand",
    "add_*_flags",
    "_add_*",
)
#: The other functions cli/ keeps, each with the reason: parsed flags into a library call.
CLI_GLUE: dict[str, str] = {
    "cli/ps.py::config_from_args": "the flags into a PSConfig (the task spec needs the code)",
    "cli/ps.py::run_keys": "draco-ps keys's main: the flags into credentials.issue_keys",
    "cli/run.py::options_from_args": "the launcher's own flags into a LaunchOptions",
    "cli/worker.py::parse_address": "the --ps HOST:PORT flag into (host, port)",
    "cli/worker.py::run_coroutine": "main's event loop, signals and errors into an exit status",
    "cli/bench_common.py::standalone": "a draco-bench subcommand's parser and main on its own",
}


def _cli_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", CLI_FILES, ids=_rel)
def test_cli_holds_parsers_and_main_only(path: Path) -> None:
    # The logic of a command lives in a library package (draco.ps.service, draco.launch,
    # draco.experiment, draco.bench, ...) where the tests and other programs can call it.
    import fnmatch

    tree = ast.parse(path.read_text(), filename=str(path))
    classes = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert not classes, f"{_rel(path)} defines classes {classes}: move them to the library"
    other = [
        name
        for name in _cli_functions(path)
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in CLI_FUNCTIONS)
        and f"{_rel(path)}::{name}" not in CLI_GLUE
    ]
    assert not other, f"{_rel(path)}: {other} are not parsing or main: move them to the library"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_CLI_LINES, f"{_rel(path)} has {lines} lines (> {MAX_CLI_LINES})"


def test_cli_glue_list_is_current() -> None:
    stale = [
        entry
        for entry in CLI_GLUE
        if not (ROOT / entry.split("::")[0]).exists()
        or entry.split("::")[1] not in _cli_functions(ROOT / entry.split("::")[0])
    ]
    assert not stale, f"gone: remove from CLI_GLUE: {stale}"
