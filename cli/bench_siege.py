"""``draco-bench siege``'s flags (the measuring code and its description:
``draco.bench.siege``)."""

from __future__ import annotations

import argparse
from typing import Any

from draco.bench import siege
from draco.cli.bench_common import add_subcommand


def add_parser(subparsers: Any) -> None:
    """Add the ``siege`` subcommand to ``draco-bench``'s subparsers."""
    add_subcommand(
        subparsers,
        "siege",
        "rounds/s of an honest run alone vs. under a flood of idle connections",
        siege.__doc__,
        _add_arguments,
        siege.run,
    )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=15, help="logical workers (one process)")
    p.add_argument("--adversaries", type=int, default=2, help="s of the repetition code")
    p.add_argument("--rounds", type=int, default=300, help="rounds per run")
    p.add_argument("--warmup", type=int, default=20, help="rounds not timed at the start")
    p.add_argument("--dim", type=int, default=1000, help="least-squares parameters")
    p.add_argument(
        "--floods", type=int, nargs="+", default=[64, 1000], help="idle connections per flood"
    )
    p.add_argument("--flood-pause", type=float, default=0.2, help="seconds before replacing")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
