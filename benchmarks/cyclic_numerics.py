"""Measure the cyclic code's numerics: decoded-sum error and condition numbers for every n, s.

For every n <= N_MAX and 1 <= s with 2s+1 <= n, build ``make_code("cyclic", n, s)`` (its
own payload dtype and stride), encode random float32 partition gradients, let s liars
attack and decode. Liar placements: s workers adjacent on the DFT circle (nodes x_j
consecutive, the worst case for conditioning) and s random workers. Attacks: constant
(-100 everywhere), reverse (-100 x the honest payload) and random (N(0, 100^2) entries).
Also measured, reported separately: errors + erasures at the budget (t = s // 2 liars,
2s - 2t erasures adjacent on the circle) and the worst erasures, 2s adjacent on the circle
with no liar; in both, a DecodeError (refusal) is listed by s, a wrong sum would show as a
large error.

Reported per n (worst over s and over the cases): payload dtype, worst relative error
||g_hat - g||_2 / ||g||_2 (liars only), whether every liar was located exactly and no
honest worker was named, the worst window condition number (``window_condition``), the
worst locator condition number (``locator_condition``: the syndromes of s liars adjacent
on the circle; it decides complex64 vs complex128), the worst recovery amplification
sqrt(n) ||w||_2 (1 = no loss against all-honest decoding), and the worst relative error
with erasures at the budget.

Run (n <= 128 took about 40 minutes as two shards on 2 cores;
``--shard`` splits the n over processes)::

    python benchmarks/cyclic_numerics.py               # markdown table to stdout
    python benchmarks/cyclic_numerics.py --n-max 64 --dim 64 --seed 1
    python benchmarks/cyclic_numerics.py --shard 0/2 > a.md &
    python benchmarks/cyclic_numerics.py --shard 1/2 > b.md
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from draco.core.codes import CyclicCode, adjacent_workers, make_code
from draco.core.weights import recovery_weights
from draco.errors import DecodeError

ATTACKS = ("constant", "reverse", "random")


def _attack(name: str, own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if name == "constant":
        return np.full_like(own, -100)
    if name == "reverse":
        return (-100 * own).astype(own.dtype)
    noise = rng.standard_normal(own.size) + 1j * rng.standard_normal(own.size)
    return (100 * noise).astype(own.dtype)


def measure(n: int, s: int, d: int, rng: np.random.Generator) -> dict[str, float | bool | str]:
    code = make_code("cyclic", n, s)
    assert isinstance(code, CyclicCode)
    grads = rng.standard_normal((n, d)).astype(np.float32)
    truth = grads.astype(np.float64).sum(axis=0)
    honest = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(n)}
    worst_err, worst_amp, located, failures = 0.0, 1.0, True, 0
    placements = [
        adjacent_workers(n, code.stride, s, int(rng.integers(n))),
        list(rng.choice(n, s, replace=False)),
    ]
    for liars in placements:
        for attack in ATTACKS:
            received = dict(honest)
            for j in liars:
                received[j] = _attack(attack, honest[j], rng)
            try:
                result = code.decode(received, rng=rng)
            except DecodeError:
                failures += 1
                continue
            err = float(np.linalg.norm(result.gradient - truth) / np.linalg.norm(truth))
            worst_err = max(worst_err, err)
            located &= result.adversaries == frozenset(int(j) for j in liars)
            w = recovery_weights(code.nodes, s, sorted(result.adversaries))
            worst_amp = max(worst_amp, float(np.sqrt(n) * np.linalg.norm(w)))
    # Errors and erasures at the budget: t liars, 2s - 2t erasures adjacent on the circle.
    t = s // 2
    erased = adjacent_workers(n, code.stride, 2 * s - 2 * t, int(rng.integers(n)))
    pool = [j for j in range(n) if j not in erased]
    liars = list(rng.choice(pool, t, replace=False))
    received = {j: v for j, v in honest.items() if j not in erased}
    for j in liars:
        received[j] = _attack("reverse", honest[j], rng)
    try:
        result = code.decode(received, rng=rng)
        erasure_err = float(np.linalg.norm(result.gradient - truth) / np.linalg.norm(truth))
    except DecodeError:
        erasure_err = float("nan")
    # The worst erasures: 2s adjacent on the circle, no liar (may be refused, never wrong).
    erased = adjacent_workers(n, code.stride, 2 * s, int(rng.integers(n)))
    try:
        result = code.decode({j: v for j, v in honest.items() if j not in erased}, rng=rng)
        gap_err = float(np.linalg.norm(result.gradient - truth) / np.linalg.norm(truth))
    except DecodeError:
        gap_err = float("nan")
    return {
        "dtype": code.payload_dtype.name,
        "error": worst_err if failures == 0 else float("inf"),
        "located": located and failures == 0,
        "condition": code.condition,
        "locator": code.locator,
        "amplification": worst_amp,
        "erasure_error": erasure_err,
        "gap_error": gap_err,
        "erasure_amplification": code.erasure_amplification,
    }


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 7, 8] -> "1..3, 7..8"."""
    out: list[str] = []
    for v in sorted(values):
        if out and int(out[-1].split("..")[-1]) == v - 1:
            out[-1] = f"{out[-1].split('..')[0]}..{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def _worst_and_failed(rows: dict[int, dict[str, float | bool | str]], key: str) -> str:
    """ "worst error (at s)" over the decoded s, then the s that raised DecodeError."""
    decoded = [s for s in rows if not np.isnan(float(rows[s][key]))]
    failed = [s for s in rows if s not in decoded]
    text = "-"
    if decoded:
        worst = max(decoded, key=lambda s: float(rows[s][key]))
        text = f"{float(rows[worst][key]):.1e} ({worst})"
    return text + (f"; {_ranges(failed)}" if failed else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-max", type=int, default=128)
    parser.add_argument("--n-min", type=int, default=3)
    parser.add_argument(
        "--dim", type=int, default=67, help="payload length (odd: exercises the tail)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shard", default="0/1", help="K/N: only the n with n mod N == K (parallel runs)"
    )
    args = parser.parse_args(argv)
    shard, n_shards = (int(v) for v in args.shard.split("/"))
    start = time.perf_counter()
    print(
        "| n | s range | payload dtype | worst rel. error (at s) | liars located exactly | "
        "worst window cond. | worst locator cond. | worst recovery ampl. | "
        "errors+erasures at budget: worst rel. error (at s); DecodeError at s | "
        "2s adjacent erasures: worst rel. error (at s); refused at s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    overall = 0.0
    all_located = True
    for n in range(args.n_min, args.n_max + 1):
        if n % n_shards != shard:
            continue
        rng = np.random.default_rng([args.seed, n])  # the same table however it is sharded
        rows = {s: measure(n, s, args.dim, rng) for s in range(1, (n - 1) // 2 + 1)}
        if not rows:
            continue
        s_err = max(rows, key=lambda s: float(rows[s]["error"]))
        dtypes = sorted({str(r["dtype"]) for r in rows.values()})
        dtype_txt = (
            dtypes[0]
            if len(dtypes) == 1
            else "; ".join(
                f"{dt} (s {_ranges([k for k in rows if rows[k]['dtype'] == dt])})" for dt in dtypes
            )
        )
        located = all(bool(r["located"]) for r in rows.values())
        cond = max(float(r["condition"]) for r in rows.values())
        loc_cond = max(float(r["locator"]) for r in rows.values())
        amp = max(float(r["amplification"]) for r in rows.values())
        overall = max(overall, float(rows[s_err]["error"]))
        all_located &= located
        print(
            f"| {n} | 1..{max(rows)} | {dtype_txt} | "
            f"{float(rows[s_err]['error']):.1e} ({s_err}) | "
            f"{'yes' if located else 'NO'} | {cond:.2f} | {loc_cond:.1e} | {amp:.2f} | "
            f"{_worst_and_failed(rows, 'erasure_error')} | {_worst_and_failed(rows, 'gap_error')} |"
        )
        sys.stdout.flush()
    print(
        f"\nworst relative error over all n, s (liars only): {overall:.2e}; "
        f"all liars located exactly: {all_located}; {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
