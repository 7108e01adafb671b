"""``draco-experiment``'s runner: each run of the grid through the real ``draco-run``.

A run whose ``summary.json`` exists is done and skipped: finished, or diverged (the model
went NaN/Inf: draco-ps exit status 3, a result like any other); a run directory with a
``config.json`` but no summary is continued with ``draco-run --resume``; anything else is
started afresh in ``RESULTS/runs/<name>/`` (its output appended to ``RESULTS/runs/<name>.log``).
Timeouts are in seconds; a run stopped by one gets exit status 124.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from draco.experiment.grid import Experiment, RunSpec
from draco.experiment.report import DONE, fmt, run_row, run_status

EXIT_DIVERGED = 3  # draco-ps (and so draco-run): the model diverged, summary.json says so


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


def run_all(exp: Experiment, todo: list[RunSpec], timeout: float | None = None) -> int:
    """Run (or continue) every run of ``todo`` not finished yet, one progress line per run;
    the number of runs that failed (exit status other than 0 and 3, the diverged; the others
    still ran)."""
    failed = 0
    for i, spec in enumerate(todo, 1):
        head = f"[{i}/{len(todo)}] {spec.name}"
        status = run_status(exp.results / "runs" / spec.name)
        if status in DONE:
            print(f"{head}: {status} earlier, skipped", flush=True)
            continue
        print(f"{head}: {'resuming' if status == 'partial' else 'running'} ...", flush=True)
        rc, wall = run_one(exp, spec, timeout)
        if rc == EXIT_DIVERGED and run_status(exp.results / "runs" / spec.name) == "diverged":
            row = run_row(exp, spec)
            print(
                f"{head}: DIVERGED at round {row.get('rounds')} after {wall:.0f} s: "
                + str(row.get("diverged")),
                flush=True,
            )
            continue
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
