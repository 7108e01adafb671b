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
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from draco.errors import ConfigError, DracoError
from draco.ps.rundir import (
    atomic_write_json,
    atomic_write_text,
    checkpoint_file,
    load_checkpoint,
    read_metrics,
)

PROG = "draco-experiment"
DRACO_CODES = ("repetition", "cyclic")
GRID_KEYS = ("method", "attack", "adversaries", "seed")
# Flags draco-experiment sets itself for every run.
OWN_FLAGS = ("run_dir", "resume", "worker_procs", "target_accuracy", "adversaries", "seed")


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    method: str
    attack: str
    s: int
    seed: int
    flags: tuple[str, ...]  # draco-run flags, --run-dir excluded

    @property
    def name(self) -> str:
        return f"{self.method}-{self.attack}-s{self.s}-seed{self.seed}"


@dataclass
class Experiment:
    name: str
    results: Path
    runs: list[RunSpec]
    target_accuracy: float | None
    reference: str | None
    worker_procs: int
    source: Path
    meta: dict[str, Any] = field(default_factory=dict)


def _flag_args(flags: dict[str, Any], where: str) -> list[str]:
    """``{"lr": 0.1, "aggregator_options": {"tau": 1}}`` -> ``--lr 0.1 --aggregator-option tau=1``.

    Keys may use ``_`` or ``-``; ``true`` gives the bare flag, a list repeats it.
    """
    out: list[str] = []
    for key, value in flags.items():
        name = str(key).replace("_", "-")
        if key in ("aggregator_options", "attack_options"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a table, e.g. {key} = {{ tau = 10 }}")
            single = "--" + name[: -len("s")]
            for k, v in value.items():
                out += [single, f"{k}={_scalar(v, where)}"]
        elif isinstance(value, bool):
            if value:
                out.append("--" + name)
        elif isinstance(value, list):
            for v in value:
                out += ["--" + name, _scalar(v, where)]
        else:
            out += ["--" + name, _scalar(value, where)]
    return out


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ConfigError(f"{where}: flag values are numbers, strings or booleans, got {value!r}")


def _method_flags(method: str, table: dict[str, Any]) -> dict[str, Any]:
    from draco.core.aggregators import AGGREGATORS

    own = dict(table.get("methods", {}).get(method, {}))
    if "code" in own or "aggregator" in own:
        return own
    if method in DRACO_CODES:
        return {"code": method, **own}
    if method in AGGREGATORS:
        return {"code": "none", "aggregator": method, **own}
    raise ConfigError(
        f"method {method!r} is neither a DRACO code ({', '.join(DRACO_CODES)}) nor an "
        f"aggregator ({', '.join(AGGREGATORS)}); define it in a [methods.{method}] table"
    )


def load_experiment(path: Path, out: Path | None = None) -> Experiment:
    """Parse and check an experiment file; ConfigError names what is wrong."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc}") from exc
    unknown = set(table) - {"experiment", "flags", "grid", "methods", "attacks"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}")
    meta = dict(table.get("experiment", {}))
    flags = dict(table.get("flags", {}))
    grid = dict(table.get("grid", {}))
    bad = set(grid) - set(GRID_KEYS)
    if bad or "method" not in grid:
        raise ConfigError(f"{path}: [grid] takes {', '.join(GRID_KEYS)} (method required)")
    for key in OWN_FLAGS:
        if key in flags:
            raise ConfigError(f"{path}: [flags] must not set {key} (the experiment sets it)")
    target = meta.get("target_accuracy")
    if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ConfigError(f"{path}: target_accuracy must be a fraction in (0, 1], got {target!r}")
    name = str(meta.get("name", path.stem))
    results = out or Path(os.path.normpath(path.parent / str(meta.get("results", name))))
    methods = [str(x) for x in _as_list(grid["method"])]
    attacks = [str(x) for x in _as_list(grid.get("attack", ["none"]))]
    sizes = [int(x) for x in _as_list(grid.get("adversaries", [1]))]
    seeds = [int(x) for x in _as_list(grid.get("seed", [0]))]
    runs = []
    for method, attack, s, seed in itertools.product(methods, attacks, sizes, seeds):
        run_flags = dict(flags)
        run_flags.update(_method_flags(method, table))
        attack_table = dict(table.get("attacks", {}).get(attack, {}))
        if attack == "none":
            run_flags["attack"] = "none"
        else:
            run_flags["attack"] = attack_table.pop("attack", attack)
        run_flags.update(attack_table)
        args = _flag_args(run_flags, f"{path} run {method}/{attack}")
        args += ["--adversaries", str(s), "--seed", str(seed)]
        if target is not None:
            args += ["--target-accuracy", str(target)]
        runs.append(RunSpec(method, attack, s, seed, tuple(args)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: the grid repeats runs")
    return Experiment(
        name=name,
        results=Path(results),
        runs=runs,
        target_accuracy=None if target is None else float(target),
        reference=meta.get("reference"),
        worker_procs=int(meta.get("worker_procs", 2)),
        source=path,
        meta=meta,
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


# ----------------------------------------------------------------------------- running


def run_status(run_dir: Path) -> str:
    """finished (summary.json), partial (config.json, no summary) or new."""
    if (run_dir / "summary.json").is_file():
        return "finished"
    if (run_dir / "config.json").is_file():
        return "partial"
    return "new"


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


# ----------------------------------------------------------------------------- the report


def run_row(exp: Experiment, spec: RunSpec) -> dict[str, Any]:
    """One table row from a run directory (``status`` says whether it finished)."""
    run_dir = exp.results / "runs" / spec.name
    row: dict[str, Any] = {
        "run": spec.name,
        "method": spec.method,
        "attack": spec.attack,
        "s": spec.s,
        "seed": spec.seed,
        "status": run_status(run_dir),
    }
    if row["status"] != "finished":
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


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if spec else str(value)


def table_markdown(exp: Experiment, rows: list[dict[str, Any]]) -> str:
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
    for r in rows:
        if r["status"] != "finished":
            lines.append(f"| {r['run']} | {r['status']} (not run to the end) |" + " |" * 11)
            continue
        acc = r.get("final_accuracy")
        lines.append(
            f"| {r['run']} | {_fmt(r['rounds'])} | "
            f"{_fmt(None if acc is None else 100 * acc, '.2f')} | "
            f"{_fmt(r['rounds_to_target'])} | {_fmt(r['cluster_seconds_to_target'], '.4g')} | "
            f"{_fmt(r['shared_link_seconds_to_target'], '.4g')} | "
            f"{_fmt(r['cpu_ps_cluster_seconds_to_target'], '.4g')} | "
            f"{_fmt(r.get('speedup_vs_reference'), '.2f')} | "
            f"{_fmt(r['cluster_seconds_total'], '.4g')} | {_fmt(r['wall_seconds'], '.0f')} | "
            f"{_fmt(r['liars_located'])} | {_fmt(r['failed_rounds'])} | "
            f"{_fmt(r['median_ps_decode_update_seconds'], '.3f')} / "
            f"{_fmt(r['median_ps_decode_update_cpu_seconds'], '.3f')} |"
        )
    attacks = sorted({r["attack"] for r in rows})
    if len(attacks) > 1:
        for s in sorted({r["s"] for r in rows}):
            lines += [
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
                        if (r["method"], r["attack"], r["s"]) == (method, a, s)
                        and r["status"] == "finished"
                    ]
                    if not hit:
                        cells.append("–")
                        continue
                    r = hit[0]
                    acc = r.get("final_accuracy")
                    cell = _fmt(None if acc is None else 100 * acc, ".1f")
                    cell += f" ({_fmt(r['cluster_seconds_to_target'], '.3g')})"
                    if r.get("same_model_as_clean"):
                        cell += " = clean"
                    elif r.get("relative_distance_to_clean") is not None:
                        cell += f" Δ {r['relative_distance_to_clean']:.1e}"
                    cells.append(cell)
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_figures(exp: Experiment, rows: list[dict[str, Any]]) -> list[Path]:
    """One PNG per (attack, s): accuracy vs round and vs cluster seconds, a line per run."""
    try:
        import matplotlib
    except ImportError:
        print(f"{PROG}: matplotlib is not installed: no figures (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "finished":
            groups.setdefault((r["attack"], r["s"]), []).append(r)
    for (attack, s), group in sorted(groups.items()):
        fig, (ax_r, ax_t) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
        for r in group:
            pts = [
                (int(m["round"]) + 1, float(m["cluster_seconds_elapsed"]), 100 * m["test_accuracy"])
                for m in read_metrics(exp.results / "runs" / r["run"])
                if m.get("test_accuracy") is not None and "cluster_seconds_elapsed" in m
            ]
            if not pts:
                continue
            label = r["method"] if r["seed"] == 0 else f"{r['method']} seed {r['seed']}"
            ax_r.plot([p[0] for p in pts], [p[2] for p in pts], label=label)
            ax_t.plot([p[1] for p in pts], [p[2] for p in pts], label=label)
        if exp.target_accuracy is not None:
            for ax in (ax_r, ax_t):
                ax.axhline(100 * exp.target_accuracy, color="grey", lw=0.8, ls="--")
        ax_r.set_xlabel("round")
        ax_t.set_xlabel("cluster seconds (docs/cluster_time.md)")
        ax_r.set_ylabel("test accuracy (%)")
        for ax in (ax_r, ax_t):
            ax.grid(True, alpha=0.3)
        ax_t.legend(loc="lower right", fontsize=8)
        fig.suptitle(f"{exp.name}: attack {attack}, s = {s}", fontsize=10)
        fig.tight_layout()
        out = exp.results / f"figure_{attack}_s{s}.png"
        fig.savefig(out, dpi=80)
        plt.close(fig)
        written.append(out)
    return written


def report(exp: Experiment) -> list[dict[str, Any]]:
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
    write_figures(exp, rows)
    return rows


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
            f"{head}: done in {wall:.0f} s  acc {_fmt(None if acc is None else 100 * acc, '.2f')}"
            f" %  to target: {_fmt(row.get('rounds_to_target'))} rounds, "
            f"{_fmt(row.get('cluster_seconds_to_target'), '.2f')} cluster s  "
            f"liars located {_fmt(row.get('liars_located'))}",
            flush=True,
        )
    return failed


if __name__ == "__main__":
    sys.exit(main())
