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
to it). A run whose ``summary.json`` exists is finished and skipped; a run directory without
one is continued with ``draco-run --resume`` (from its last checkpoint). One progress line per
run. At the end: ``RESULTS/table.json``, ``RESULTS/table.md`` and one PNG per (attack, s) in
the style of the paper's Figure 1 (test accuracy vs round and vs cluster seconds, one line per
method; needs matplotlib, the ``plot`` extra). Exit status: 0 when every run finished, 1 when
one failed (the others still ran), 2 for a bad experiment file.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from draco.cli.experiment_grid import Experiment, RunSpec, load_experiment
from draco.cli.experiment_report import fmt, report, run_row, run_status
from draco.errors import DracoError

PROG = "draco-experiment"


# ----------------------------------------------------------------------------- running


def run_one(exp: Experiment, spec: RunSpec, timeout: float | None) -> tuple[int, float]:
    """Run (or continue) one run through the real ``draco-run``; (exit status, wall s)."""
    runs = exp.results / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = runs / spec.name
    procs = ["--worker-procs", str(exp.worker_procs)]
    cmd = [sys.executable, "-m", "draco.cli.run"]
    if run_status(run_dir) == "partial":
        cmd += ["--resume", str(run_dir), *procs]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # started but never configured: nothing to continue
        cmd += [*spec.flags, *procs, "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    with open(runs / f"{spec.name}.log", "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = 124
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): stop the run cleanly; its checkpoints stay and
            # the next invocation continues it with --resume.
            _stop(proc)
            raise
    return rc, time.perf_counter() - t0


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _matches(spec: RunSpec, only: list[str]) -> bool:
    values = {"method": spec.method, "attack": spec.attack, "s": str(spec.s)}
    values["seed"] = str(spec.seed)
    for cond in only:
        key, _, want = cond.partition("=")
        if values.get(key.strip()) not in want.split(","):
            return False
    return True


# ----------------------------------------------------------------------------- main


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
    todo = [r for r in exp.runs if _matches(r, args.only)]
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
        failed = _run_all(exp, todo, args.run_timeout) if not args.report_only else 0
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


def _run_all(exp: Experiment, todo: list[RunSpec], timeout: float | None = None) -> int:
    failed = 0
    for i, spec in enumerate(todo, 1):
        head = f"[{i}/{len(todo)}] {spec.name}"
        status = run_status(exp.results / "runs" / spec.name)
        if status == "finished":
            print(f"{head}: finished earlier, skipped", flush=True)
            continue
        print(f"{head}: {'resuming' if status == 'partial' else 'running'} ...", flush=True)
        rc, wall = run_one(exp, spec, timeout)
        if rc != 0:
            failed += 1
            print(f"{head}: FAILED (exit {rc}) after {wall:.0f} s, see runs/{spec.name}.log")
            continue
        row = run_row(exp, spec)
        acc = row.get("final_accuracy")
        print(
            f"{head}: done in {wall:.0f} s  acc {fmt(None if acc is None else 100 * acc, '.2f')}"
            f" %  to target: {fmt(row.get('rounds_to_target'))} rounds, "
            f"{fmt(row.get('cluster_seconds_to_target'), '.2f')} cluster s  "
            f"liars located {fmt(row.get('liars_located'))}",
            flush=True,
        )
    return failed


if __name__ == "__main__":
    sys.exit(main())
