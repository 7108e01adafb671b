"""``draco-bench adversary``: both DRACO codes against every lie family, judged and timed.

Command (the paper's largest setting: 45 workers, s = 5, the 784-800-500-10 network)::

    draco-bench adversary --workers 45 --adversaries 5 --dim 1033510 --trials 3 --json

For each of ``--trials`` trials: draw SGD-like partition gradients
(``draco.core.lies.honest_gradients``), encode them for real with each code, then for every
lie family of ``draco.core.lies.LIE_FAMILIES`` let s liars (drawn per trial and family) lie
and decode. Each decode is judged by the three rules of the promise (tests/core/
test_adversarial.py): ``refused`` (DecodeError with <= s liars), ``silent`` (a returned sum
further than ``ERROR_BOUND`` from the exact sum), ``framed`` (honest workers named). All three
must be 0. Also reported: the worst relative error, the liars named (of those who lied), and
the median decode time over the trials as a ratio to ``X.mean(axis=0)`` over the (n, d)
float32 partition gradients, measured in the same process (``numpy_mean``).

Goals at n = 45, d = 1,033,510 (issue 9): repetition <= 1.5x the mean and cyclic <= 4x the mean
on every family. The machine's load is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from functools import partial
from typing import Any

import numpy as np

from draco.bench import common
from draco.core.lies import ERROR_BOUND, LIE_FAMILIES, apply_lie, honest_gradients, judge_decode
from draco.errors import DracoError

CODES = ("repetition", "cyclic")


def _check(args: argparse.Namespace) -> str | None:
    if args.adversaries < 1 or 2 * args.adversaries + 1 > args.workers:
        return f"--adversaries {args.adversaries}: need 1 <= s and 2s+1 <= --workers"
    if args.dim < 1:
        return "--dim must be >= 1"
    if args.trials < 1:
        return "--trials must be >= 1"
    unknown = sorted(set(args.families) - set(LIE_FAMILIES))
    if unknown:
        return f"unknown families {unknown}; choose from {', '.join(LIE_FAMILIES)}"
    return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every trial and return the report (the JSON object).

    1. Per trial: SGD-like partition gradients (n, d) float32, their exact sum in float64,
       and the time of ``grads.mean(axis=0)`` (the reference).
    2. Per code: every worker's payload, encoded for real.
    3. Per lie family: s liars drawn, their lie applied, the decode judged and timed
       (``_try_family``), accumulated in one row per (code, family).
    4. Medians, ratios to the mean, failures (``_report``).
    """
    from draco.core.codes import make_code

    machine_at_start = common.machine()
    n, s, d = args.workers, args.adversaries, args.dim
    started = time.perf_counter()
    codes = {name: make_code(name, n, s) for name in args.codes}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    mean_times: list[float] = []
    for trial in range(args.trials):
        rng = np.random.default_rng([args.seed, trial])
        grads = honest_gradients(n, d, rng)
        exact = grads.sum(axis=0, dtype=np.float64)
        mean_times.append(common.median_seconds(partial(grads.mean, axis=0), 3))
        for name, code in codes.items():
            payloads = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(n)}
            for family in args.families:
                row = rows.setdefault((name, family), _new_row(name, family))
                frng = np.random.default_rng([args.seed, trial, LIE_FAMILIES.index(family)])
                _try_family(row, code, payloads, exact, family, s, frng)
            del payloads
        del grads
    out = _report(args, rows, statistics.median(mean_times), machine_at_start)
    out["total_seconds"] = time.perf_counter() - started
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _new_row(code: str, family: str) -> dict[str, Any]:
    """The counters of one (code, family) over the trials."""
    return {
        "code": code,
        "family": family,
        "trials": 0,
        "refused": 0,
        "silent": 0,
        "framed": 0,
        "worst_relative_error": 0.0,
        "liars_named": 0,
        "liars": 0,
        "seconds": [],
        "refusals": [],
    }


def _try_family(
    row: dict[str, Any],
    code: Any,
    payloads: dict[int, np.ndarray],
    exact: np.ndarray,
    family: str,
    s: int,
    frng: np.random.Generator,
) -> None:
    """Step 3 for one trial: s liars (drawn from ``frng``) tell the family's lie; the decode
    is judged against ``exact`` (d,) float64 and timed; ``row`` counts the outcome."""
    n = len(payloads)
    liars = sorted(int(j) for j in frng.choice(n, size=s, replace=False))
    try:
        sent = apply_lie(family, code, payloads, liars, frng)
    except DracoError as exc:  # pragma: no cover - a family that cannot apply
        row["refusals"].append(f"lie not applied: {exc}")
        return
    time.sleep(0.05)  # let BLAS threads of the previous decode settle
    outcome = judge_decode(code, sent, exact, liars, frng)
    del sent
    row["trials"] += 1
    row["seconds"].append(outcome.seconds)
    row["liars"] += len(liars)
    row["liars_named"] += len(outcome.located)
    row["framed"] += int(bool(outcome.framed))
    if outcome.refused is not None:
        row["refused"] += 1
        row["refusals"].append(outcome.refused[:200])
    else:
        row["silent"] += int(outcome.silent)
        row["worst_relative_error"] = max(row["worst_relative_error"], outcome.error)


def _report(
    args: argparse.Namespace,
    rows: dict[tuple[str, str], dict[str, Any]],
    mean_seconds: float,
    machine_at_start: dict[str, Any],
) -> dict[str, Any]:
    """Step 4: each row's median decode time and ratio to the mean; the failures and the
    worst ratio per code; the parameters and goals."""
    results = []
    for row in rows.values():
        times = row.pop("seconds")
        row["median_seconds"] = statistics.median(times) if times else None
        row["ratio_to_mean"] = (
            None if row["median_seconds"] is None else row["median_seconds"] / mean_seconds
        )
        results.append(row)
    failures = sum(r["refused"] + r["silent"] + r["framed"] for r in results)
    worst = {
        name: max(
            (r["ratio_to_mean"] for r in results if r["code"] == name and r["ratio_to_mean"]),
            default=None,
        )
        for name in args.codes
    }
    return {
        "benchmark": "adversary",
        "parameters": {
            "workers": args.workers,
            "adversaries": args.adversaries,
            "dim": args.dim,
            "trials": args.trials,
            "seed": args.seed,
            "error_bound": ERROR_BOUND,
            "timing": "median decode seconds over the trials; ratio_to_mean vs numpy_mean "
            "(median of 3 after a warm-up, every trial)",
        },
        "machine": machine_at_start,
        "load_average_1min_at_end": common.machine()["load_average_1min"],
        "numpy_mean_seconds": mean_seconds,
        "goals": {"repetition_max_ratio": 1.5, "cyclic_max_ratio": 4.0, "failures": 0},
        "failures": failures,
        "worst_ratio_to_mean": worst,
        "results": results,
    }


def _table(report: dict[str, Any]) -> str:
    p = report["parameters"]
    m = report["machine"]
    lines = [
        f"draco-bench adversary: n={p['workers']} s={p['adversaries']} d={p['dim']} "
        f"trials={p['trials']} | numpy mean {report['numpy_mean_seconds'] * 1e3:.1f} ms, "
        f"load {m['load_average_1min']:.2f} -> {report['load_average_1min_at_end']:.2f}",
        f"{'code':<11}{'family':<20}{'refused':>8}{'silent':>7}{'framed':>7}"
        f"{'worst err':>11}{'named':>8}{'x mean':>8}",
    ]
    for r in report["results"]:
        ratio = "" if r["ratio_to_mean"] is None else f"{r['ratio_to_mean']:.1f}"
        lines.append(
            f"{r['code']:<11}{r['family']:<20}{r['refused']:>8}{r['silent']:>7}{r['framed']:>7}"
            f"{r['worst_relative_error']:>11.1e}{r['liars_named']:>4}/{r['liars']:<3}{ratio:>8}"
        )
    lines.append(
        f"failures {report['failures']} (goal 0); worst ratio to mean "
        f"{report['worst_ratio_to_mean']}; peak RSS {report['peak_rss_mb']:.0f} MB, "
        f"total {report['total_seconds']:.0f} s"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``draco-bench adversary``; returns the exit status (1 on a failure)."""
    report = common.checked_run("adversary", args, _check, measure, _table)
    if report is None:
        return 2
    return 1 if report["failures"] else 0
