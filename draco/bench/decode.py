"""``draco-bench decode``: DRACO's decoders against numpy's mean and the robust aggregators.

Command (the paper's 784-800-500-10 network has 1,033,510 parameters)::

    draco-bench decode --workers 45 --dim 1033510 --json

For every s in ``--adversaries`` (default 1 3 5), with s liars actually present (the
``constant`` attack, -100 in every coordinate, on s workers drawn from the seed):

1. Draw random float32 partition gradients, shape (n_partitions = n, d).
2. "none" baseline: X = the n partition gradients with the liars' rows replaced, (n, d)
   float32. Time ``X.mean(axis=0)`` (``numpy_mean``, the reference) and every rule of
   ``draco.core.aggregators`` with f = s (bulyan only where n >= 4s+3).
3. Repetition and cyclic codes (``draco.core.codes.make_code``): every worker really encodes
   its partitions with ``code.encode``; the liars' payloads are attacked, once per lie family
   of ``--families`` (``draco.core.lies``; default the constant attack and the cyclic
   decoder's slowest family, ``SLOWEST``); time ``code.decode(received)`` and check it
   against the true sum (relative error, liars located).

``seconds`` is the median of ``--repeats`` timed runs (after one untimed warm-up run);
``ratio_to_mean`` divides it by ``numpy_mean``'s median at the same s, measured in the same
process. The Gram-matrix rules (Krum, multi-Krum, Bulyan, geometric median) call BLAS:
on a machine shared with other busy processes, multi-threaded OpenBLAS measured 5-25x
slower and erratic here; ``OPENBLAS_NUM_THREADS=1 draco-bench decode ...`` gives stable
numbers (the thread variables are recorded in ``machine``).

Peak memory: about three (n, d) float32 arrays plus one set of code payloads (complex64
for the cyclic code at n = 45: 370 MB; 740 MB if it picked complex128). Measured peak RSS
at n = 45, d = 1033510: about 0.9 GB; at d = 11173962 (ResNet-18, with
``--skip-aggregators``): 9.3 GB.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from draco.bench import common
from draco.core import aggregators
from draco.core.attacks import make_attack
from draco.errors import DracoError

DEFAULT_ADVERSARIES = (1, 3, 5)
CODES = ("repetition", "cyclic")
ATTACK = "constant"
#: The lie family that cost the cyclic decoder the most time in ``draco-bench adversary``
#: (benchmarks/results.md): a lie on one coordinate, which the fast path's sample misses,
#: so the decode falls back to projecting every coordinate.
SLOWEST = "sparse1_same"


def _check(args: argparse.Namespace) -> str | None:
    if args.workers < 3:
        return "--workers must be >= 3"
    if args.dim < 1:
        return "--dim must be >= 1"
    if args.repeats < 1:
        return "--repeats must be >= 1"
    bad = [s for s in args.adversaries if s < 1 or 2 * s + 1 > args.workers]
    if bad:
        return f"--adversaries {bad}: each s needs 1 <= s and 2s+1 <= --workers ({args.workers})"
    from draco.core.lies import LIE_FAMILIES

    unknown = sorted(set(args.families) - set(LIE_FAMILIES))
    if unknown:
        return f"unknown --families {unknown}; choose from {', '.join(LIE_FAMILIES)}"
    return None


def _bench_codes(
    make_code: Callable[..., Any],
    grads: np.ndarray,
    liars: np.ndarray,
    s: int,
    repeats: int,
    seed: int,
    families: list[str],
) -> list[dict[str, Any]]:
    """Encode for real, attack with each lie family, time ``decode`` for both DRACO codes."""
    from draco.core.lies import apply_lie

    n = grads.shape[0]
    truth = grads.sum(axis=0, dtype=np.float64)
    out = []
    for name, family in ((name, family) for name in CODES for family in families):
        entry: dict[str, Any] = {"method": f"{name}_decode", "adversaries": s, "family": family}
        try:
            code = make_code(name, n, s)
            honest = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(n)}
            received = apply_lie(
                family, code, honest, [int(j) for j in liars], np.random.default_rng(seed)
            )
            del honest
            result = code.decode(received, rng=np.random.default_rng([seed, s]))
            err = float(np.linalg.norm(result.gradient - truth) / np.linalg.norm(truth))
            decode_rng = np.random.default_rng([seed, s, 1])
            entry["seconds"] = common.median_seconds(
                partial(code.decode, received, rng=decode_rng), repeats
            )
            entry["payload_dtype"] = np.dtype(code.payload_dtype).str
            entry["relative_error"] = err
            entry["liars_located"] = sorted(result.adversaries) == sorted(int(j) for j in liars)
            del received, result
        except DracoError as exc:
            entry["seconds"] = None
            entry["error"] = str(exc)
        out.append(entry)
    return out


def _bench_aggregators(X: np.ndarray, s: int, repeats: int) -> list[dict[str, Any]]:
    n = X.shape[0]
    out = []
    for name in aggregators.AGGREGATORS:
        if name == "mean":
            continue  # measured as numpy_mean
        if name == "bulyan" and n < 4 * s + 3:
            continue
        entry: dict[str, Any] = {"method": name, "adversaries": s}
        try:
            entry["seconds"] = common.median_seconds(
                partial(aggregators.aggregate, name, X, s), repeats
            )
        except DracoError as exc:
            entry["seconds"] = None
            entry["error"] = str(exc)
        out.append(entry)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement and return the report (the JSON object)."""
    from draco.core.codes import make_code  # the DRACO codes (imported late: optional here)

    machine_at_start = common.machine()
    n, d = args.workers, args.dim
    rng = np.random.default_rng(args.seed)
    # Step 1: one set of partition gradients, shared by every s.
    grads = rng.standard_normal((n, d), dtype=np.float32)
    results: list[dict[str, Any]] = []
    liar_sets: dict[str, list[int]] = {}
    started = time.perf_counter()
    for s in args.adversaries:
        liars = np.sort(np.random.default_rng([args.seed, s]).choice(n, size=s, replace=False))
        liar_sets[str(s)] = [int(j) for j in liars]
        # Step 2: the no-redundancy baseline's matrix, liars' rows attacked.
        X = grads.copy()
        X[liars] = make_attack(ATTACK).apply(
            X[0], rng=np.random.default_rng(args.seed), n_workers=n, n_adversaries=s
        )
        rows = [
            {
                "method": "numpy_mean",
                "adversaries": s,
                "seconds": common.median_seconds(partial(X.mean, axis=0), args.repeats),
            }
        ]
        mean_seconds = rows[0]["seconds"]
        rows += _bench_codes(
            make_code, grads, liars, s, args.repeats, args.seed, list(args.families)
        )  # step 3
        if not args.skip_aggregators:
            rows += _bench_aggregators(X, s, args.repeats)
        del X
        for row in rows:
            sec = row["seconds"]
            row["ratio_to_mean"] = None if sec is None else sec / mean_seconds
        results += rows
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "benchmark": "decode",
        "parameters": {
            "workers": n,
            "dim": d,
            "adversaries": list(args.adversaries),
            "repeats": args.repeats,
            "seed": args.seed,
            "attack": ATTACK,
            "families": list(args.families),
            "aggregators": not args.skip_aggregators,
            "liars": liar_sets,
            "timing": "median of repeats after one warm-up; ratio_to_mean vs numpy_mean at "
            "the same s",
        },
        "machine": machine_at_start,
        "load_average_1min_at_end": common.machine()["load_average_1min"],
        "goals": {"repetition_decode_max_ratio": 1.5, "cyclic_decode_max_ratio": 4.0},
        "results": results,
        "total_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_kib / 1024.0,
    }


def _table(report: dict[str, Any]) -> str:
    p = report["parameters"]
    m = report["machine"]
    lines = [
        f"draco-bench decode: n={p['workers']} d={p['dim']} repeats={p['repeats']} "
        f"attack={p['attack']} | numpy {m['numpy']}, {m['cores_usable']} cores, {m['cpu']}",
        f"{'s':>2}  {'method':<20} {'seconds':>10} {'x mean':>8}  notes",
    ]
    for r in report["results"]:
        sec = "error" if r["seconds"] is None else f"{r['seconds']:.4f}"
        ratio = "" if r["ratio_to_mean"] is None else f"{r['ratio_to_mean']:.1f}"
        notes = r.get("error", "")
        if "relative_error" in r:
            notes = (
                f"{r['family']}: rel.err {r['relative_error']:.1e}, liars located: "
                f"{r['liars_located']}, payload {r['payload_dtype']}"
            )
        lines.append(f"{r['adversaries']:>2}  {r['method']:<20} {sec:>10} {ratio:>8}  {notes}")
    lines.append(f"peak RSS {report['peak_rss_mb']:.0f} MB, total {report['total_seconds']:.1f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``draco-bench decode``; returns the exit status."""
    return 2 if common.checked_run("decode", args, _check, measure, _table) is None else 0
