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
    assert_liars_located,
    assert_resume_reproduces,
    metrics,
    rel_diff,
    trained_run,
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


def _train(run_dir: Path, *args: Any, rounds: int = ROUNDS) -> tuple[dict[str, Any], np.ndarray]:
    return trained_run(run_dir, rounds, *args)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], np.ndarray]:
    return _train(tmp_path_factory.mktemp("bn-clean") / "run", *TRAIN, "--attack", "none")


def test_clean_run_moved_the_running_statistics(
    clean: tuple[dict[str, Any], np.ndarray],
) -> None:
    params = clean[1]
    n = param_count(create_model("lenet_bn"))
    spec = {"model": "lenet_bn", "dataset": "synthetic", "batch_size": 8, "seed": 3}
    task = make_task({**spec, "n_partitions": N})
    initial = task.initial_params()
    assert params.shape == initial.shape
    # The buffers were updated by the PS: not the initial 0 / 1, and every counter = ROUNDS.
    assert not np.array_equal(params[n:], initial[n:])
    rs = task.running_stats  # type: ignore[attr-defined]
    assert [params[s.offset + 2 * s.channels] for s in rs.segments] == [float(ROUNDS)] * 3


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacked_repetition_run_keeps_the_clean_statistics(
    tmp_path: Path, clean: tuple[dict[str, Any], np.ndarray], attack: str
) -> None:
    summ, params = _train(tmp_path / "run", *TRAIN, "--code", "repetition", "--attack", attack)
    assert summ["model_sha256"] == clean[0]["model_sha256"]
    np.testing.assert_array_equal(params, clean[1])
    assert_liars_located(metrics(tmp_path / "run"), S, caught=attack != "alie")


def test_attacked_cyclic_run_matches_the_clean_statistics(
    tmp_path: Path, clean: tuple[dict[str, Any], np.ndarray]
) -> None:
    _, params = _train(tmp_path / "run", *TRAIN, "--code", "cyclic", "--attack", "constant")
    n = param_count(create_model("lenet_bn"))
    assert rel_diff(params, clean[1]) <= 1e-5
    assert rel_diff(params[n:], clean[1][n:]) <= 1e-5  # the buffers on their own
    assert_liars_located(metrics(tmp_path / "run"), S)


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
    # runs together took 25 s at load 2.5 (92 s at load 10-11) on the shared 2-core VM;
    # the full size is kept because the payload size is what the run should exercise.
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
    clean, clean_params = _train(tmp_path / "clean", *args, "--attack", "none", rounds=2)
    summ, params = _train(tmp_path / "attacked", *args, "--attack", "reverse", rounds=2)
    assert summ["model_sha256"] == clean["model_sha256"]
    assert params.shape == (11_173_962 + 9_620,)
    n = 11_173_962
    assert not np.array_equal(params[n : n + 64], np.zeros(64, np.float32))  # stem's BN mean
    assert 0.0 <= summ["test_accuracy"] <= 1.0
    assert_liars_located(metrics(tmp_path / "attacked"), 1)
    del clean_params
