"""A run whose model diverges ends at once, with a summary, and cannot be resumed.

The real ``draco-run`` (PS and workers as processes): the least-squares task and the plain
mean with a learning rate far past 2/L, so the parameters grow by a large factor each round
until the update overflows float32. No attack is needed: divergence is the model's doing,
and the outcome must be the same however many retries ``--max-failed-rounds`` allows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_helpers import draco_run, metrics, run, summary

pytestmark = pytest.mark.e2e

EXIT_DIVERGED = 3  # draco-ps's exit status for a diverged model (cli/ps.py)
DIVERGING = (
    "--workers", 5, "--adversaries", 1, "--model", "lstsq", "--code", "none",
    "--aggregator", "mean", "--attack", "none", "--lr", 50, "--rounds", 200,
    "--max-failed-rounds", 50, "--checkpoint-every", 5,
)  # fmt: skip


def test_a_diverged_run_ends_at_once_with_a_summary_and_refuses_a_resume(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    status, _, err = draco_run(run_dir, *DIVERGING)
    assert status == EXIT_DIVERGED, err
    assert "diverged" in err
    result = summary(run_dir)
    assert result["status"] == "diverged" and "NaN/Inf" in result["diverged"]
    records = metrics(run_dir)
    # Every round before the last one moved a finite model; the last one, the divergence,
    # is a single failed attempt: no retries were spent on it (50 were allowed).
    assert 0 < result["rounds"] < 200 and len(records) == result["rounds"] + 1
    assert [r["round"] for r in records] == list(range(result["rounds"] + 1))
    assert not any(r["failed"] for r in records[:-1])
    assert records[-1]["failed"] and records[-1]["attempts"] == 1
    assert result["failed_rounds"] == 1
    # No checkpoint holds a non-finite model, and summary.json is strict JSON.
    json.loads((run_dir / "summary.json").read_text(), parse_constant=_no_constants)
    resumed = run("run", "--resume", run_dir)
    assert resumed.returncode == 2
    assert "diverged" in resumed.stderr and "start a new run" in resumed.stderr
    assert "Traceback" not in resumed.stderr


def _no_constants(name: str) -> float:
    raise AssertionError(f"summary.json holds {name}")
