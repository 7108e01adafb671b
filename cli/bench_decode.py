"""``draco-bench decode``'s flags (the measuring code and its description:
``draco.bench.decode``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from draco.bench import decode
from draco.bench.decode import ATTACK, DEFAULT_ADVERSARIES, SLOWEST
from draco.cli import bench_common as common


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``decode`` subcommand to ``draco-bench``'s subparsers."""
    return common.add_subcommand(
        subparsers,
        "decode",
        "time DRACO's decoders against numpy's mean and robust aggregators",
        decode.__doc__,
        _add_arguments,
        decode.run,
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_problem_flags(parser)
    parser.add_argument(
        "--adversaries",
        type=int,
        nargs="+",
        default=list(DEFAULT_ADVERSARIES),
        help="values of s to measure, liars present (default 1 3 5)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per method; median reported (5)"
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=[f"attack:{ATTACK}", SLOWEST],
        metavar="FAMILY",
        help=f"lie families the codes are timed against (default attack:{ATTACK} {SLOWEST})",
    )
    parser.add_argument(
        "--skip-aggregators",
        action="store_true",
        help="time only numpy's mean and the two codes (the aggregators take minutes at "
        "ResNet-18 size, d = 11173962)",
    )
    common.add_seed_json_flags(parser)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark standalone (the flags of ``draco-bench decode``)."""
    return common.standalone("decode", decode.__doc__, _add_arguments, decode.run, argv)


if __name__ == "__main__":
    sys.exit(main())
