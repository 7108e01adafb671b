"""End to end: batch-norm statistics under the code, and a short CIFAR-10 / ResNet-18 run.

Real ``draco-run`` processes:

- ``lenet_bn`` (LeNet-5 with batch-norm) on the synthetic set: every attack on the repetition
  code ends on the clean run's ``model_sha256``, which covers the running statistics and
  batch counters (the state vector); the cyclic code ends within a relative 1e-5 of it; a
  killed and resumed run ends on the uninterrupted run's model;
- ``resnet18`` on generated files in CIFAR-10's python-version format: a few rounds with an
  attack, the same model as the clean run, and the running statistics moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_helpers import (
    RunResult,
    assert_liars_located,
    assert_resume_reproduces,
    final_params,
    metrics,
    rel_diff,
    run_batch,
    summary,
)

from draco.core.attacks import ATTACKS
from draco.tasks.registry import make_task
from draco.tasks.torch import cifar
from draco.tasks.torch.models import create_model, param_count

pytestmark = pytest.mark.e2e

N, S, ROUNDS = 5, 2, 4  # n = 2s + 1: s at the limit of both codes
TRAIN = [
    *["--model", "lenet_bn", "--dataset", "synthetic", "--batch-size", "8", "--seed", "3"],
    *["--workers", N, "--adversaries", S, "--rounds", ROUNDS, "--eval-every", "0"],
    *["--checkpoint-every", ROUNDS, "--worker-procs", "1"],
]


# The runs that end on their own, by name, started side by side by the ``batch`` fixture
# (conftest) for the selected tests that name them with ``draco_runs``.
JOBS: dict[str, list[Any]] = {
    "clean": [*TRAIN, "--attack", "none"],
    **{f"repetition-{a}": [*TRAIN, "--code", "repetition", "--attack", a] for a in ATTACKS},
    "cyclic-constant": [*TRAIN, "--code", "cyclic", "--attack", "constant"],
}


def _trained(run: RunResult, rounds: int = ROUNDS) -> tuple[dict[str, Any], np.ndarray]:
    """(summary, final parameters) of a run that completed ``rounds`` rounds, none failed."""
    run.check()
    summ = summary(run.run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (rounds, 0), summ
    return summ, final_params(run.run_dir, rounds)


@pytest.mark.draco_runs("clean")
def test_clean_run_moved_the_running_statistics(batch: dict[str, RunResult]) -> None:
    params = _trained(batch["clean"])[1]
    n = param_count(create_model("lenet_bn"))
    spec = {"model": "lenet_bn", "dataset": "synthetic", "batch_size": 8, "seed": 3}
    task = make_task({**spec, "n_partitions": N})
    initial = task.initial_params()
    assert params.shape == initial.shape
    # The buffers were updated by the PS: not the initial 0 / 1, and every counter = ROUNDS.
    assert not np.array_equal(params[n:], initial[n:])
    rs = task.running_stats  # type: ignore[attr-defined]
    assert [params[s.offset + 2 * s.channels] for s in rs.segments] == [float(ROUNDS)] * 3


@pytest.mark.draco_runs("clean", "repetition-{attack}")
@pytest.mark.parametrize("attack", ATTACKS)
def test_attacked_repetition_run_keeps_the_clean_statistics(
    batch: dict[str, RunResult], attack: str
) -> None:
    clean = _trained(batch["clean"])
    summ, params = _trained(batch[f"repetition-{attack}"])
    assert summ["model_sha256"] == clean[0]["model_sha256"]
    np.testing.assert_array_equal(params, clean[1])
    assert_liars_located(metrics(batch[f"repetition-{attack}"].run_dir), S, caught=attack != "alie")


@pytest.mark.draco_runs("clean", "cyclic-constant")
def test_attacked_cyclic_run_matches_the_clean_statistics(batch: dict[str, RunResult]) -> None:
    clean = _trained(batch["clean"])
    _, params = _trained(batch["cyclic-constant"])
    n = param_count(create_model("lenet_bn"))
    assert rel_diff(params, clean[1]) <= 1e-5
    assert rel_diff(params[n:], clean[1][n:]) <= 1e-5  # the buffers on their own
    assert_liars_located(metrics(batch["cyclic-constant"].run_dir), S)


def test_killed_and_resumed_bn_run_ends_with_the_uninterrupted_model(tmp_path: Path) -> None:
    # The checkpoint holds the running statistics (in the state vector) and the momentum
    # buffer of the parameters only.
    args = [
        *["--model", "lenet_bn", "--dataset", "synthetic", "--batch-size", "4", "--seed", "5"],
        *["--workers", N, "--adversaries", S, "--attack", "constant", "--rounds", 60],
        *["--checkpoint-every", 5, "--eval-every", "0", "--worker-procs", "1"],
    ]
    assert_resume_reproduces(tmp_path, args)


def test_short_resnet18_run_on_cifar_format_files(tmp_path: Path) -> None:
    # ResNet-18 at full size (11.2M parameters) on 2 CPU cores: 3 workers, s = 1, batch 2,
    # 2 rounds, a 10-image test split. Generated files in the python-version format. Both
    # runs one after the other took 25 s at load 2.5 (92 s at load 10-11) on the shared
    # 2-core VM, side by side 23 s at load 6; the full size is kept because the payload
    # size is what the run should exercise.
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / cifar.PY_DIR
    folder.mkdir(parents=True)
    for name in cifar.PY_FILES:
        n = 10 if name == cifar.TEST_BATCH else 4
        images = rng.integers(0, 256, (n, cifar.N_PIXELS), dtype=np.uint8)
        (folder / name).write_bytes(cifar.py_batch_bytes(images, rng.integers(0, 10, n)))
    args = [
        *["--model", "resnet18", "--dataset", "cifar10", "--data-dir", tmp_path / "data"],
        *["--batch-size", "2", "--workers", "3", "--adversaries", "1", "--rounds", "2"],
        *["--eval-every", "0", "--checkpoint-every", "2", "--worker-procs", "1"],
    ]
    runs = run_batch(
        {
            "clean": (tmp_path / "clean", [*args, "--attack", "none"]),
            "attacked": (tmp_path / "attacked", [*args, "--attack", "reverse"]),
        }
    )
    clean, clean_params = _trained(runs["clean"], rounds=2)
    summ, params = _trained(runs["attacked"], rounds=2)
    assert summ["model_sha256"] == clean["model_sha256"]
    assert params.shape == (11_173_962 + 9_620,)
    n = 11_173_962
    assert not np.array_equal(params[n : n + 64], np.zeros(64, np.float32))  # stem's BN mean
    assert 0.0 <= summ["test_accuracy"] <= 1.0
    assert_liars_located(metrics(tmp_path / "attacked"), 1)
    del clean_params
