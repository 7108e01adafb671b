"""The parser plumbing the ``draco-bench`` subcommands share (their measuring code:
``draco.bench``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def add_subcommand(
    subparsers: Any, name: str, help_: str, doc: str | None, add_arguments: AddArguments, run: Run
) -> argparse.ArgumentParser:
    """Add ``draco-bench NAME`` (its module docstring ``doc`` as the description)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def standalone(
    name: str, doc: str | None, add_arguments: AddArguments, run: Run, argv: list[str] | None
) -> int:
    """Run one subcommand on its own (``python -m draco.cli.bench_NAME``, the tests)."""
    parser = argparse.ArgumentParser(prog=f"draco-bench {name}", description=doc)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_problem_flags(parser: argparse.ArgumentParser) -> None:
    """``--workers`` n and ``--dim`` d of the decode benchmarks (the paper's fc network)."""
    parser.add_argument("--workers", type=int, default=45, help="n (default 45)")
    parser.add_argument(
        "--dim", type=int, default=1_033_510, help="gradient length d (default 1033510)"
    )


def add_seed_json_flags(parser: argparse.ArgumentParser) -> None:
    """``--seed`` of the data and the liars, ``--json`` for one JSON object."""
    parser.add_argument("--seed", type=int, default=0, help="data and liar seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
