"""``draco-plot``: test accuracy against round and against wall time, several runs in one figure.

Example::

    draco-plot runs/draco runs/median runs/clean --out accuracy.png

Each RUN_DIR's ``metrics.jsonl`` supplies the points: the records that carry
``test_accuracy``. The x axes are the record's ``round`` + 1 (rounds completed) and the
elapsed wall time: ``elapsed_seconds`` when a record has it, otherwise the running sum of the
per-round ``wall_seconds``. A run is labelled with its folder name, or with ``--label``.

matplotlib is an optional dependency (``pip install 'draco[plot]'``); without it the command
says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from draco.errors import DracoError
from draco.experiment.curves import load_curve, plot_curves


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="draco-plot",
        description="Plot test accuracy vs round and vs wall time for one or more runs.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--out", type=Path, required=True, help="image file to write (.png, .pdf, .svg)"
    )
    parser.add_argument(
        "--label", action="append", default=None, help="legend label per RUN_DIR, in order"
    )
    parser.add_argument("--title", default=None, help="figure title")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels: list[str | None] = list(args.label or [])
    if labels and len(labels) != len(args.run_dirs):
        print(
            f"draco-plot: got {len(labels)} --label for {len(args.run_dirs)} run directories",
            file=sys.stderr,
        )
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "draco-plot: matplotlib is not installed; install it with "
            "`pip install matplotlib` (or `pip install 'draco[plot]'`)",
            file=sys.stderr,
        )
        return 2
    labels += [None] * (len(args.run_dirs) - len(labels))
    try:
        curves = [load_curve(d, lab) for d, lab in zip(args.run_dirs, labels, strict=True)]
        plot_curves(curves, args.out, args.title)
    except (DracoError, OSError) as exc:
        print(f"draco-plot: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
