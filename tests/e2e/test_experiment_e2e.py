"""``draco-experiment`` through the real command: a tiny grid, interrupted, then resumed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from e2e_helpers import finish, run, start

from draco.errors import ConfigError
from draco.ps.rundir import read_metrics

pytestmark = pytest.mark.e2e

TINY = """
[experiment]
name = "tiny"
results = "out"
target_accuracy = 0.12
reference = "median"
worker_procs = 1

[flags]
workers = 5
model = "logreg"
dataset = "synthetic"
rounds = 6
eval_every = 2
checkpoint_every = 2

[grid]
method = ["repetition", "median"]
attack = ["constant"]
adversaries = [1]
seed = [0]
"""

FIRST = "repetition-constant-s1-seed0"
SECOND = "median-constant-s1-seed0"


def _cluster_definition_holds(record: dict) -> bool:
    gbps = record["link_gbps"]
    paths = [
        c + (record["worker_bytes_in"][j] + record["worker_bytes_out"][j]) * 8 / (gbps * 1e9)
        for j, c in enumerate(record["worker_compute_seconds"])
        if c is not None
    ]
    expected = max(paths, default=0.0) + record["decode_seconds"] + record["update_seconds"]
    return abs(record["cluster_seconds"] - expected) <= 1e-12 + 1e-9 * expected


def test_tiny_experiment_interrupted_then_resumed(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY, encoding="utf-8")
    out = tmp_path / "out"
    first_summary = out / "runs" / FIRST / "summary.json"

    # 1. Start the grid and stop it (SIGTERM) once the first run has finished.
    proc = start("experiment", spec)
    try:
        deadline = time.monotonic() + 150
        while not first_summary.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the first run did not finish"
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc, stdout, stderr = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc in (0, 130), (rc, stdout, stderr)
    assert f"[1/2] {FIRST}: running" in stdout
    stamp = first_summary.stat().st_mtime_ns

    # 2. The same command again: the finished run is skipped, the other one completes.
    again = run("experiment", spec, timeout=150)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"[1/2] {FIRST}: finished earlier, skipped" in again.stdout
    assert first_summary.stat().st_mtime_ns == stamp
    assert (out / "runs" / SECOND / "summary.json").is_file()

    # 3. The results folder: table.md, table.json, a PNG.
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    rows = {r["run"]: r for r in table["runs"]}
    assert set(rows) == {FIRST, SECOND}
    assert all(r["status"] == "finished" and r["rounds"] == 6 for r in rows.values())
    # one liar per round; a liar cut off by DRACO's early close is an erasure, not located
    assert 1 <= rows[FIRST]["liars_located"] <= 6 and rows[SECOND]["liars_located"] == 0
    md = (out / "table.md").read_text(encoding="utf-8")
    assert FIRST in md and SECOND in md
    png = out / "figure_constant_s1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 4. Every record's cluster time follows its definition; "to target" is the running sum.
    for name, row in rows.items():
        records = read_metrics(out / "runs" / name)
        assert [r["round"] for r in records] == list(range(6))
        assert all(_cluster_definition_holds(r) for r in records)
        total = sum(r["cluster_seconds"] for r in records)
        assert row["cluster_seconds_total"] == pytest.approx(total)
        if row["rounds_to_target"] is not None:
            at = records[row["rounds_to_target"] - 1]
            assert at["test_accuracy"] >= 0.12
            assert row["cluster_seconds_to_target"] == pytest.approx(at["cluster_seconds_elapsed"])


def test_experiment_file_errors_and_dry_run(tmp_path: Path) -> None:
    from draco.experiment.grid import load_experiment

    spec = tmp_path / "x.toml"
    spec.write_text(TINY.replace('"median"]', '"nonsense"]'), encoding="utf-8")
    with pytest.raises(ConfigError, match="nonsense"):
        load_experiment(spec)
    spec.write_text(TINY.replace("rounds = 6", "rounds = 6\nseed = 3"), encoding="utf-8")
    with pytest.raises(ConfigError, match="seed"):
        load_experiment(spec)
    spec.write_text(
        TINY + '\n[methods.cc]\ncode = "none"\naggregator = "centered_clipping"\n'
        "aggregator_options = { tau = 2.5 }\nmomentum = 0.0\n",
        encoding="utf-8",
    )
    spec.write_text(
        spec.read_text().replace('method = ["repetition", "median"]', 'method = ["cc"]'),
        encoding="utf-8",
    )
    exp = load_experiment(spec)
    (only,) = exp.runs
    flags = " ".join(only.flags)
    assert "--code none --aggregator centered_clipping --aggregator-option tau=2.5" in flags
    assert "--momentum 0.0" in flags and "--adversaries 1 --seed 0" in flags
    dry = run("experiment", spec, "--dry-run", timeout=60)
    assert dry.returncode == 0 and "--run-dir" in dry.stdout
    assert not (tmp_path / "out").exists()


def test_distance_to_clean_from_checkpoints_then_from_its_cache(tmp_path: Path) -> None:
    import numpy as np

    from draco.experiment.report import VS_CLEAN_FILE, distance_to_clean
    from draco.ps.rundir import RunDir

    runs = tmp_path / "runs"
    clean_params = np.array([1.0, -4.0, 2.0], np.float32)
    attacked_params = np.array([1.0, -4.0, 2.5], np.float32)
    for name, params in (("m-none", clean_params), ("m-ipm", attacked_params)):
        run = RunDir(runs / name)
        run.write_config({"finished": True})  # a real run: RunDir(path) would refuse it now
        run.save_checkpoint(3, params, {}, {})
    clean = {"run": "m-none", "rounds": 3, "model_sha256": "aa"}
    row = {"run": "m-ipm", "rounds": 3, "model_sha256": "bb"}
    assert distance_to_clean(runs, row, clean) == pytest.approx(0.5 / 4.0)
    # The checkpoints go (they are not committed); the kept value answers for the same pair.
    for name in ("m-none", "m-ipm"):
        for f in (runs / name / "checkpoints").iterdir():
            f.unlink()
    assert distance_to_clean(runs, row, clean) == pytest.approx(0.125)
    assert json.loads((runs / "m-ipm" / VS_CLEAN_FILE).read_text())["model_sha256"] == "bb"
    # ... but not for another model: unknown rather than stale.
    assert distance_to_clean(runs, {**row, "model_sha256": "cc"}, clean) is None
    # A run that stopped early has no final checkpoint to compare.
    RunDir(runs / "m-none", resume=True).save_checkpoint(2, clean_params, {}, {})
    RunDir(runs / "m-ipm", resume=True).save_checkpoint(3, attacked_params, {}, {})
    assert distance_to_clean(runs, {**row, "model_sha256": "dd"}, clean) is None


DIVERGING = """
[experiment]
name = "diverging"
results = "out"
worker_procs = 1

[flags]
workers = 5
model = "lstsq"
rounds = 200
lr = 50

[grid]
method = ["mean"]
attack = ["none"]
adversaries = [1]
seed = [0]
"""


def test_a_diverged_run_is_a_result_not_rerun(tmp_path: Path) -> None:
    """draco-ps exits 3 with a "diverged" summary: the experiment counts the run as done
    (exit 0), shows it as diverged, and a second invocation does not run it again."""
    (tmp_path / "exp.toml").write_text(DIVERGING)
    first = run("experiment", tmp_path / "exp.toml")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "DIVERGED at round" in first.stdout
    table = (tmp_path / "out" / "table.md").read_text()
    assert "diverged (NaN/Inf)" in table
    [row] = json.loads((tmp_path / "out" / "table.json").read_text())["runs"]
    assert row["status"] == "diverged" and row["final_accuracy"] is None and row["rounds"] > 0
    again = run("experiment", tmp_path / "exp.toml")
    assert again.returncode == 0 and "diverged earlier, skipped" in again.stdout
