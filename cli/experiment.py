"""``draco-experiment``: a grid of ``draco-run`` runs from one TOML file, resumable, tabulated.

Example (the paper's Table 1; see benchmarks/paper/)::

    draco-experiment benchmarks/paper/table1.toml
    draco-experiment benchmarks/paper/table1.toml --only s=5      # a slice of the grid
    draco-experiment benchmarks/paper/table1.toml --report-only   # tables + figures only

The file::

    [experiment]
    name = "table1"
    results = "../results/table1"   # relative to this file (or --out DIR)
    target_accuracy = 0.88          # -> --target-accuracy of every run
    reference = "geometric_median"  # optional: speedup column = reference / method
    worker_procs = 2                # draco-run --worker-procs

    [flags]                         # draco-ps flags shared by every run (dashes or _)
    workers = 45
    model = "fc"
    dataset = "mnist"
    rounds = 120

    [grid]                          # the runs: every combination
    method = ["repetition", "cyclic", "geometric_median"]
    attack = ["constant"]           # "none" = a clean run
    adversaries = [1, 3, 5]
    seed = [0]

    [methods.centered_clipping]     # optional, per method: its own flags
    code = "none"
    aggregator = "centered_clipping"
    aggregator_options = { tau = 10.0 }
    lr = 0.1

    [attacks.alie]                  # optional, per attack
    attack_options = { z = 1.0 }

A method named like a DRACO code (repetition, cyclic) runs ``--code NAME``; one named like an
aggregator runs ``--code none --aggregator NAME``; a ``[methods.NAME]`` table overrides both.

Each run goes to ``RESULTS/runs/<method>-<attack>-s<S>-seed<K>/`` (its output in ``.log`` next
to it). A run whose ``summary.json`` exists is done and skipped (finished, or diverged: the model
went NaN/Inf, draco-ps exit status 3, a result shown as such); a run directory without
one is continued with ``draco-run --resume`` (from its last checkpoint). One progress line per
run. At the end: ``RESULTS/table.json``, ``RESULTS/table.md`` and one PNG per (attack, s) in
the style of the paper's Figure 1 (test accuracy vs round and vs cluster seconds, one line per
method; needs matplotlib, the ``plot`` extra). Exit status: 0 when every run finished or
diverged, 1 when one failed (the others still ran), 2 for a bad experiment file.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from draco.errors import DracoError
from draco.experiment.grid import load_experiment, matches
from draco.experiment.report import report
from draco.experiment.runner import run_all

PROG = "draco-experiment"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a grid of draco-run runs from a TOML experiment file (resumable) and "
        "write table.md, table.json and Figure-1-style PNGs.",
    )
    p.add_argument("file", type=Path, help="the experiment file (TOML)")
    p.add_argument("--out", type=Path, default=None, help="results folder (overrides the file)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=V[,V]",
        help="run only the grid points with method/attack/s/seed in the values (repeatable)",
    )
    p.add_argument("--report-only", action="store_true", help="no runs: tables and figures")
    p.add_argument("--dry-run", action="store_true", help="print the draco-run commands only")
    p.add_argument(
        "--run-timeout", type=float, default=None, metavar="SEC", help="stop a run after this"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        exp = load_experiment(args.file, args.out)
    except DracoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    todo = [r for r in exp.runs if matches(r, args.only)]
    failed = 0

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    if args.dry_run:
        for spec in todo:
            print(
                "draco-run " + " ".join(spec.flags) + f" --run-dir {exp.results}/runs/{spec.name}"
            )
        return 0
    try:
        failed = run_all(exp, todo, args.run_timeout) if not args.report_only else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to continue", flush=True)
        return 130
    try:
        report(exp)
    except (DracoError, OSError, ValueError) as exc:
        print(f"{PROG}: error writing the report: {exc}", file=sys.stderr)
        return 1
    print(f"{PROG}: wrote {exp.results / 'table.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
