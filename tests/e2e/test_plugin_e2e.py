"""End to end, plug-in tasks, devices and launchers, with the real commands.

- the example of ``examples/custom_task`` (a small CNN on generated shapes): an attacked
  repetition run, PS + workers started SLURM-style (``$SLURM_PROCID``/``$SLURM_NTASKS``, no
  ``--id``) with ``--allow-task``, ends with the clean ``draco-run``'s ``model_sha256``;
- a worker whose operator did not allow the PS's task exits 2 with a clear message, and the
  PS hears why;
- ``--device cuda`` / ``mps`` without such a device exit 2 with a clear message;
- ``draco-ps --vote tolerance`` says so and, on CPU workers, still trains the clean model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from e2e_helpers import (
    ROOT,
    draco_run,
    finish,
    make_keys,
    ready_port,
    reaped,
    run,
    start,
    summary,
)

pytestmark = pytest.mark.e2e

EXAMPLE = "shapes_cnn:make_task"
N, S, ROUNDS = 5, 2, 6  # one repetition group at the code's limit
TASK = [
    *["--task", EXAMPLE, "--task-option", "width=4", "--task-option", "n_train=512"],
    *["--task-option", "n_test=128", "--batch-size", "8", "--seed", "2"],
    *["--workers", N, "--adversaries", S, "--rounds", ROUNDS, "--eval-every", "3"],
]


@pytest.fixture(autouse=True)
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example module must be importable by every command (as on a real cluster).
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "examples" / "custom_task"))
    for var in ("SLURM_PROCID", "SLURM_NTASKS", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


def test_example_attacked_run_equals_the_clean_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clean draco-run goes on beside the attacked run (started before the SLURM
    # variables are set below: its launcher numbers its own workers).
    clean_run = start("run", "--run-dir", tmp_path / "clean", *TASK, "--attack", "none")
    with reaped(clean_run):
        _attacked_slurm_style_run(tmp_path, monkeypatch)
        status, _, err = finish(clean_run)
    assert status == 0, err
    clean = summary(tmp_path / "clean")
    assert clean["task"] == EXAMPLE and clean["rounds"] == ROUNDS
    attacked = summary(tmp_path / "attacked")
    assert attacked["adversaries_located"] > 0
    assert attacked["model_sha256"] == clean["model_sha256"]
    assert attacked["test_accuracy"] == clean["test_accuracy"]


def _attacked_slurm_style_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacked run in ``tmp_path / "attacked"``: a draco-ps and two worker processes
    that take their ids from ``$SLURM_PROCID`` / ``$SLURM_NTASKS``."""
    secret, tokens = make_keys(tmp_path, N)
    ready = tmp_path / "ready.json"
    ps = start(
        "ps",
        *TASK,
        *["--attack", "constant", "--secret-file", secret, "--port", "0"],
        *["--ready-file", ready, "--run-dir", tmp_path / "attacked"],
    )
    workers = []
    with reaped(ps):
        port = ready_port(ready, ps)
        for rank in range(2):  # two "srun tasks" share the five ids: 0..1 and 2..4
            monkeypatch.setenv("SLURM_PROCID", str(rank))
            monkeypatch.setenv("SLURM_NTASKS", "2")
            workers.append(
                start(
                    "worker",
                    *["--ps", f"127.0.0.1:{port}", "--token-file", tokens, "--workers", N],
                    *["--allow-task", EXAMPLE, "--log-level", "INFO"],
                )
            )
        with reaped(*workers):
            status, _, err = finish(ps)
            assert status == 0, err
            results = [finish(w) for w in workers]
    assert [r[0] for r in results] == [0, 0], results
    logs = "".join(r[2] for r in results)
    assert "worker ids 0..1 (from SLURM" in logs and "worker ids 2..4 (from SLURM" in logs


def test_a_worker_refuses_a_task_its_operator_did_not_allow(tmp_path: Path) -> None:
    secret, tokens = make_keys(tmp_path, N)
    ready = tmp_path / "ready.json"
    ps = start(
        "ps",
        *TASK,
        *["--secret-file", secret, "--port", "0", "--ready-file", ready, "--join-timeout", "2"],
    )
    with reaped(ps):
        port = ready_port(ready, ps)
        status, _, err = finish(
            start("worker", "--ps", f"127.0.0.1:{port}", "--id", "0", "--token-file", tokens)
        )
        _, _, ps_err = finish(ps)
    assert status == 2
    assert f"'{EXAMPLE}' is not allowed" in err and f"--allow-task {EXAMPLE}" in err
    assert "Traceback" not in err
    assert "refused_config" in ps_err  # the PS's operator learns why the worker left


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_missing_gpu_is_a_clear_error(tmp_path: Path, device: str) -> None:
    present = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if present:
        pytest.skip(f"this host has a {device} device")
    p = run(
        "worker",
        "--ps",
        "127.0.0.1:1",
        "--id",
        "0",
        "--token-file",
        tmp_path / "none",
        "--device",
        device,
    )
    assert p.returncode == 2
    assert p.stderr.startswith(f"draco-worker: error: --device {device}:"), p.stderr
    assert "use --device cpu" in p.stderr and "Traceback" not in p.stderr


def _lstsq(run_dir: Path, *args: Any) -> tuple[dict[str, Any], str]:
    status, out, err = draco_run(
        run_dir,
        *["--model", "lstsq", "--workers", N, "--adversaries", S, "--rounds", "5"],
        *["--worker-procs", "1", "--eval-every", "0"],
        *args,
    )
    assert status == 0, err
    return summary(run_dir), out


def test_tolerance_vote_is_announced_and_trains_the_clean_model(tmp_path: Path) -> None:
    exact, out = _lstsq(tmp_path / "exact", "--attack", "none")
    # The exact vote, travelling as full payloads (--vote auto on loopback).
    assert (exact["vote"], exact["vote_rtol"]) == ("full", None) and "TOLERANCE" not in out
    tol, out = _lstsq(tmp_path / "tol", "--attack", "constant", "--vote", "tolerance")
    assert "TOLERANCE vote (rtol 0.0001)" in out
    assert (tol["vote"], tol["vote_rtol"]) == ("tolerance", 1e-4)
    assert tol["adversaries_located"] > 0
    assert tol["model_sha256"] == exact["model_sha256"]  # CPU workers agree bit for bit
    saved = json.loads((tmp_path / "tol" / "config.json").read_text())
    assert saved["vote_rtol"] == 1e-4  # a resumed run keeps its vote
