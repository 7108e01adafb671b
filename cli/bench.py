"""``draco-bench``: benchmarks that print one JSON object measured side by side in one run.

Subcommands: ``decode`` (decoders vs. aggregators, see ``draco.cli.bench_decode``), ``adversary``
(both codes against every lie family, see ``draco.cli.bench_adversary``), ``net`` (PS ingest
vs. a raw-socket baseline, see ``draco.cli.bench_net``) and ``siege`` (rounds/s alone vs.
under a flood of idle connections, see ``draco.cli.bench_siege``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="draco-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from draco.cli import bench_adversary, bench_decode, bench_net, bench_siege

    bench_decode.add_parser(sub)
    bench_adversary.add_parser(sub)
    bench_net.add_parser(sub)
    bench_siege.add_parser(sub)
    args = parser.parse_args(argv)
    from draco.errors import DracoError

    try:
        return int(args.func(args))
    except DracoError as exc:  # a user mistake or an unusable machine: one line, status 2
        print(f"draco-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
