"""``draco-bench net``'s flags, ``--vote`` included (the measuring code and its
description: ``draco.bench.net`` and, for whole PS rounds, ``draco.bench.vote``)."""

from __future__ import annotations

import argparse
from typing import Any

from draco.bench import net


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "net",
        help="PS ingest throughput vs. a raw-socket baseline",
        description=net.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workers", type=int, default=45, help="connections (payloads per round)")
    p.add_argument("--dim", type=int, default=1033510, help="float32 values per payload")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per path (median)")
    p.add_argument(
        "--trials", type=int, default=1, help="raw/project pairs, order alternating (median)"
    )
    p.add_argument(
        "--no-payload-checks",
        action="store_true",
        help="leave out RoundCollector.offer (for attribution only; the PS always checks)",
    )
    p.add_argument(
        "--raw-loop",
        action="store_true",
        help="also measure raw recv_into on the event loop (no parsing) in every trial",
    )
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    _add_vote_flags(p)  # --vote full|digest: whole PS rounds (draco/bench/vote.py)
    p.set_defaults(func=net.run)


def _add_vote_flags(p: argparse.ArgumentParser) -> None:
    """The round benchmark's flags (``draco-bench net`` adds them to its own)."""
    p.add_argument(
        "--vote",
        choices=("full", "digest"),
        default=None,
        help="benchmark whole PS rounds with this vote instead of raw ingest",
    )
    p.add_argument("--adversaries", type=int, default=5, help="s (with --vote)")
    p.add_argument("--rounds", type=int, default=6, help="rounds per run (with --vote)")
    p.add_argument("--warmup", type=int, default=1, help="rounds left out of the figures")
    p.add_argument(
        "--link",
        default=None,
        metavar="RATE",
        help="shape the PS's ingress to RATE (tc tbf, e.g. 1gbit) between network namespaces",
    )
    p.add_argument(
        "--link-both", action="store_true", help="with --link: shape the PS's egress too"
    )
