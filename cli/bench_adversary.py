"""``draco-bench adversary``'s flags (the measuring code and its description:
``draco.bench.adversary``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from draco.bench import adversary
from draco.bench.adversary import CODES
from draco.cli import bench_common as common
from draco.core.lies import LIE_FAMILIES


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``adversary`` subcommand to ``draco-bench``'s subparsers."""
    return common.add_subcommand(
        subparsers,
        "adversary",
        "both codes against every lie family: refusals, silent errors, framed workers",
        adversary.__doc__,
        _add_arguments,
        adversary.run,
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_problem_flags(parser)
    parser.add_argument("--adversaries", type=int, default=5, help="s, liars present (5)")
    parser.add_argument("--trials", type=int, default=3, help="trials per family (default 3)")
    parser.add_argument(
        "--families",
        nargs="+",
        default=list(LIE_FAMILIES),
        metavar="FAMILY",
        help="lie families to try (default: all of draco.core.lies.LIE_FAMILIES)",
    )
    parser.add_argument(
        "--codes", nargs="+", default=list(CODES), choices=CODES, help="codes (default both)"
    )
    common.add_seed_json_flags(parser)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark standalone (the flags of ``draco-bench adversary``)."""
    return common.standalone("adversary", adversary.__doc__, _add_arguments, adversary.run, argv)


if __name__ == "__main__":
    sys.exit(main())
