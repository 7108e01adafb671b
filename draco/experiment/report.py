"""``draco-experiment``'s report: a table row per run, comparisons, table.md / table.json, and
Figure-1-style PNGs (accuracy vs round and vs cluster seconds, one per (attack, s);
``draco.experiment.figures``).
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from draco.experiment.figures import write_figures
from draco.experiment.grid import Experiment, RunSpec
from draco.ps.rundir import (
    atomic_write_json,
    atomic_write_text,
    checkpoint_file,
    load_checkpoint,
    read_metrics,
)

#: Statuses of a run that has ended for good: never run again.
DONE = frozenset({"finished", "diverged"})


def run_status(run_dir: Path) -> str:
    """finished (summary.json), diverged (summary.json with status "diverged": the model
    went NaN/Inf, a final outcome), partial (config.json, no summary) or new."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            status = json.loads(summary.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            status = None
        return "diverged" if status == "diverged" else "finished"
    if (run_dir / "config.json").is_file():
        return "partial"
    return "new"


def run_row(exp: Experiment, spec: RunSpec) -> dict[str, Any]:
    """One table row from a run directory (``status`` says whether it ended, and how)."""
    run_dir = exp.results / "runs" / spec.name
    row: dict[str, Any] = {
        "run": spec.name,
        "method": spec.method,
        "attack": spec.attack,
        "s": spec.s,
        "seed": spec.seed,
        "status": run_status(run_dir),
    }
    if row["status"] not in DONE:
        return row
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    records = read_metrics(run_dir)
    # Two variants of cluster time from the same records (docs/cluster_time.md): every
    # transfer serialised on the PS's link; and the PS's decode + update as thread CPU time
    # instead of wall time (on a loaded machine the wall time of a single-threaded decode
    # grows with the load, its CPU time does not).
    shared = cpu = 0.0
    shared_to_target = cpu_to_target = None
    hit = summary.get("rounds_to_target")
    for r in records:
        compute = [c for c in r.get("worker_compute_seconds") or [] if c is not None]
        ps_wall = float(r.get("decode_seconds", 0.0)) + float(r.get("update_seconds", 0.0))
        shared += max(compute, default=0.0) + float(r.get("ps_link_seconds", 0.0)) + ps_wall
        cpu += (
            float(r.get("cluster_seconds", 0.0))
            - ps_wall
            + float(r.get("decode_cpu_seconds", ps_wall))
        )
        if hit is not None and shared_to_target is None and int(r["round"]) + 1 >= int(hit):
            shared_to_target, cpu_to_target = shared, cpu
    ps_time = sorted(
        float(r.get("decode_seconds", 0.0)) + float(r.get("update_seconds", 0.0)) for r in records
    )
    ps_cpu = sorted(float(r.get("decode_cpu_seconds", 0.0)) for r in records)
    row.update(
        {
            "rounds": summary.get("rounds"),
            "final_accuracy": summary.get("test_accuracy"),
            "rounds_to_target": hit,
            "cluster_seconds_to_target": summary.get("cluster_seconds_to_target"),
            "shared_link_seconds_to_target": shared_to_target,
            "cpu_ps_cluster_seconds_to_target": cpu_to_target,
            "cluster_seconds_total": summary.get("cluster_seconds_total"),
            "wall_seconds": summary.get("wall_seconds"),
            "liars_located": summary.get("adversaries_located"),
            "failed_rounds": summary.get("failed_rounds"),
            "model_sha256": summary.get("model_sha256"),
            "median_ps_decode_update_seconds": ps_time[len(ps_time) // 2] if ps_time else None,
            "median_ps_decode_update_cpu_seconds": ps_cpu[len(ps_cpu) // 2] if ps_cpu else None,
        }
    )
    if row["status"] == "diverged":
        row["diverged"] = summary.get("diverged")
    return row


def add_comparisons(exp: Experiment, rows: list[dict[str, Any]]) -> None:
    """Speedup vs the reference method, and "same model as the clean run" (DRACO's claim)."""
    index = {(r["method"], r["attack"], r["s"], r["seed"]): r for r in rows}
    for r in rows:
        ref = index.get((exp.reference, r["attack"], r["s"], r["seed"])) if exp.reference else None
        mine, theirs = (
            r.get("cluster_seconds_to_target"),
            (ref or {}).get("cluster_seconds_to_target"),
        )
        r["speedup_vs_reference"] = theirs / mine if mine and theirs and ref is not r else None
        clean = index.get((r["method"], "none", r["s"], r["seed"]))
        if (
            clean is not None
            and clean is not r
            and r["status"] == clean["status"] == "finished"
            and clean.get("model_sha256")
            and r.get("model_sha256")
        ):
            r["same_model_as_clean"] = clean["model_sha256"] == r["model_sha256"]
            r["relative_distance_to_clean"] = (
                0.0
                if r["same_model_as_clean"]
                else distance_to_clean(exp.results / "runs", r, clean)
            )


# The distance survives the checkpoints (which are not committed with the results).
VS_CLEAN_FILE = "vs_clean.json"


def distance_to_clean(runs: Path, row: dict[str, Any], clean: dict[str, Any]) -> float | None:
    """max |p - p_clean| / max |p_clean| over the final parameters of two runs.

    Read from both runs' final checkpoints when they exist, and kept in the run's
    ``vs_clean.json`` (keyed by both models' sha256) for when they are gone. None when
    neither is available.
    """
    cache = runs / row["run"] / VS_CLEAN_FILE
    key = {"model_sha256": row["model_sha256"], "clean_model_sha256": clean["model_sha256"]}
    try:
        kept = json.loads(cache.read_text(encoding="utf-8"))
        if {k: kept.get(k) for k in key} == key:
            return float(kept["relative_distance"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    finals = []
    for r in (row, clean):
        rounds = r.get("rounds")
        path = checkpoint_file(runs / r["run"], rounds) if isinstance(rounds, int) else None
        if path is None or not path.is_file():
            return None
        try:
            ckpt = load_checkpoint(path, expected_round=rounds)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        finals.append(ckpt.params.astype(np.float64))
    params, reference = finals
    if params.shape != reference.shape:
        return None
    scale = float(np.max(np.abs(reference))) or 1.0
    distance = float(np.max(np.abs(params - reference))) / scale
    atomic_write_json(cache, {**key, "relative_distance": distance})
    return distance


def fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if spec else str(value)


def table_markdown(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    """table.md: one line per run, then (several attacks) one table per s, method x attack."""
    target = exp.target_accuracy
    tgt = f"{100 * target:g} %" if target is not None else "target"
    lines = [
        f"# {exp.name}",
        "",
        f"From `{exp.source.name}`. Cluster seconds: docs/cluster_time.md (a model from measured "
        "per-round pieces, not wall time); shared-link = every transfer serialised on the PS's "
        "link; CPU-PS = the PS's decode + update counted as thread CPU time instead of wall "
        f"time (robust to the machine's load). Target accuracy: {tgt}.",
        "",
        f"| run | rounds | final acc | rounds to {tgt} | cluster s to {tgt} "
        f"| shared-link s to {tgt} | CPU-PS s to {tgt} | speedup vs {exp.reference or '–'} "
        "| cluster s total | wall s | liars located | failed rounds "
        "| PS decode+update s, wall / CPU (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_run_line(r) for r in rows]
    attacks = sorted({r["attack"] for r in rows})
    if len(attacks) > 1:
        for s in sorted({r["s"] for r in rows}):
            lines += _attack_table(rows, attacks, s, tgt)
    return "\n".join(lines) + "\n"


def _run_line(r: dict[str, Any]) -> str:
    """One run's line of the first table (13 columns)."""
    if r["status"] not in DONE:
        return f"| {r['run']} | {r['status']} (not run to the end) |" + " |" * 11
    acc = r.get("final_accuracy")
    final = (
        "diverged (NaN/Inf)"
        if r["status"] == "diverged"
        else fmt(None if acc is None else 100 * acc, ".2f")
    )
    return (
        f"| {r['run']} | {fmt(r['rounds'])} | "
        f"{final} | "
        f"{fmt(r['rounds_to_target'])} | {fmt(r['cluster_seconds_to_target'], '.4g')} | "
        f"{fmt(r['shared_link_seconds_to_target'], '.4g')} | "
        f"{fmt(r['cpu_ps_cluster_seconds_to_target'], '.4g')} | "
        f"{fmt(r.get('speedup_vs_reference'), '.2f')} | "
        f"{fmt(r['cluster_seconds_total'], '.4g')} | {fmt(r['wall_seconds'], '.0f')} | "
        f"{fmt(r['liars_located'])} | {fmt(r['failed_rounds'])} | "
        f"{fmt(r['median_ps_decode_update_seconds'], '.3f')} / "
        f"{fmt(r['median_ps_decode_update_cpu_seconds'], '.3f')} |"
    )


def _attack_table(rows: list[dict[str, Any]], attacks: list[str], s: int, tgt: str) -> list[str]:
    """The lines of the method x attack table for one s (a heading and a line per method)."""
    lines = [
        "",
        f"## s = {s}: final test accuracy % (cluster s to {tgt}); "
        "= clean: bit-identical final model to the method's clean run; "
        "Δ: max |p - p_clean| / max |p_clean| over the final parameters otherwise "
        "(the cyclic decoder's sum is exact to rounding only: docs/numerics.md)",
        "",
        "| method | " + " | ".join(attacks) + " |",
        "|---|" + "---|" * len(attacks),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for a in attacks:
            hit = [
                r
                for r in rows
                if (r["method"], r["attack"], r["s"]) == (method, a, s) and r["status"] in DONE
            ]
            cells.append(_attack_cell(hit[0]) if hit else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _attack_cell(r: dict[str, Any]) -> str:
    """``acc (cluster s)`` and ``= clean`` or ``Δ distance`` for one finished run."""
    if r["status"] == "diverged":
        return f"diverged at round {fmt(r['rounds'])}"
    acc = r.get("final_accuracy")
    cell = fmt(None if acc is None else 100 * acc, ".1f")
    cell += f" ({fmt(r['cluster_seconds_to_target'], '.3g')})"
    if r.get("same_model_as_clean"):
        cell += " = clean"
    elif r.get("relative_distance_to_clean") is not None:
        cell += f" Δ {r['relative_distance_to_clean']:.1e}"
    return cell


def report(exp: Experiment) -> list[dict[str, Any]]:
    """Rows of every run of the grid; writes table.json, table.md and the figures."""
    rows = [run_row(exp, spec) for spec in exp.runs]
    add_comparisons(exp, rows)
    exp.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        exp.results / "table.json",
        {
            "experiment": exp.name,
            "source": str(exp.source),
            "target_accuracy": exp.target_accuracy,
            "reference": exp.reference,
            "runs": rows,
        },
    )
    atomic_write_text(exp.results / "table.md", table_markdown(exp, rows))
    # Finished and diverged runs (a diverged run's curve up to its divergence).
    write_figures(exp, [r for r in rows if r["status"] in DONE])
    return rows
