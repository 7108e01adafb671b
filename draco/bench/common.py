"""What the ``draco-bench`` subcommands' measuring code shares: a subcommand's run skeleton
(check, measure, print), a median timer (seconds) and the machine a measurement ran on (to be
reported next to every figure). Their parser plumbing: ``draco.cli.bench_common``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SETTLE", "checked_run", "machine", "median_seconds"]

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Seconds of pause before a timed measurement (``median_seconds``).
SETTLE = 0.25


def checked_run(
    name: str,
    args: argparse.Namespace,
    check: Callable[[argparse.Namespace], str | None],
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
) -> dict[str, Any] | None:
    """A subcommand's run: ``check`` the flags (a problem is one line on stderr, and None),
    ``measure``, print the report as one JSON object (``--json``) or as ``table``."""
    problem = check(args)
    if problem:
        print(f"draco-bench {name}: {problem}", file=sys.stderr)
        return None
    report = measure(args)
    print(json.dumps(report) if args.json else table(report))
    return report


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after a pause and one untimed warm-up call.

    The pause (``SETTLE`` seconds) lets OpenBLAS's worker threads stop spinning after the
    previous measurement's BLAS calls: measured, a spinning worker slowed the next
    ``X.mean`` from 6.3 to 16 ms on the 2-core machine (which would flatter every ratio).
    """
    time.sleep(SETTLE)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict[str, Any]:
    """The machine as a measurement saw it: versions, CPU, usable cores, 1-minute load,
    BLAS thread variables."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "cores_usable": usable,
        # Other processes compete for the cores: read the timings next to these.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "blas_threads_env": {k: os.environ.get(k) for k in _THREAD_VARS},
    }
