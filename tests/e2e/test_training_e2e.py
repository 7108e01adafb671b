"""End to end, training side: the promise that an attacked DRACO run trains the clean model.

Real ``draco-run`` processes training the torch ``logreg`` model on the synthetic data set
(small and quick; the mechanism is the same for ``fc``):

- every attack of ``draco.core.attacks.ATTACKS`` with s at the repetition code's limit gives
  the SAME ``model_sha256`` as the clean run, with the full-payload vote and with the
  digest-first vote (``--vote digest``; the clean digest run too);
- the cyclic code under attack ends within a relative 1e-5 of the clean parameters;
- both agree with plain minibatch SGD (``--code none --aggregator mean`` with as many workers
  as the code has partitions) up to float summation order;
- a run killed after a checkpoint and resumed ends with the uninterrupted run's model;
- the demonstration defaults of ``draco-run`` work, and real MNIST trains (if present).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_helpers import (
    ROOT,
    assert_liars_located,
    assert_resume_reproduces,
    draco_run,
    final_params,
    metrics,
    rel_diff,
    summary,
)

from draco.core.attacks import ATTACKS
from draco.tasks.registry import make_task

pytestmark = pytest.mark.e2e

N, S, ROUNDS = 5, 2, 8  # n = 2s + 1: s at the limit of both codes (one repetition group)
TRAIN = [
    *["--model", "logreg", "--dataset", "synthetic", "--batch-size", "8", "--seed", "3"],
    *["--workers", N, "--adversaries", S, "--rounds", ROUNDS, "--eval-every", "0"],
    # 8 rounds, a checkpoint every 3: the final model is checkpointed at the end anyway.
    *["--checkpoint-every", "3", "--worker-procs", "1"],
]


def _train(run_dir: Path, *args: Any) -> tuple[dict[str, Any], np.ndarray]:
    status, _, err = draco_run(run_dir, *TRAIN, *args)
    assert status == 0, err
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (ROUNDS, 0), summ
    params = final_params(run_dir, ROUNDS)
    assert hashlib.sha256(params.astype("<f4").tobytes()).hexdigest() == summ["model_sha256"]
    return summ, params


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], np.ndarray]:
    """The clean repetition run every attacked run must reproduce."""
    return _train(tmp_path_factory.mktemp("clean") / "run", "--attack", "none", "--vote", "full")


def test_clean_digest_vote_run_trains_the_identical_model(
    tmp_path: Path, clean: tuple[dict[str, Any], np.ndarray]
) -> None:
    summ, _ = _train(tmp_path / "run", "--attack", "none", "--vote", "digest")
    assert summ["model_sha256"] == clean[0]["model_sha256"]
    records = metrics(tmp_path / "run")
    assert all(r["vote"] == "digest" and r["payload_requests"] == 1 for r in records)


@pytest.mark.parametrize("vote", ["full", "digest"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_attacked_repetition_run_trains_the_identical_model(
    tmp_path: Path, clean: tuple[dict[str, Any], np.ndarray], attack: str, vote: str
) -> None:
    summ, params = _train(
        tmp_path / "run", "--code", "repetition", "--attack", attack, "--vote", vote
    )
    assert summ["model_sha256"] == clean[0]["model_sha256"]
    assert all(r["vote"] == vote for r in metrics(tmp_path / "run"))
    np.testing.assert_array_equal(params, clean[1])
    # The liars really lied and were caught (a data attack lies through its gradient).
    assert_liars_located(metrics(tmp_path / "run"), S, caught=attack != "alie")
    assert summ["adversaries_located"] > 0 or attack == "alie"


@pytest.mark.parametrize("attack", ["constant", "alie"])
def test_attacked_cyclic_run_matches_the_clean_model(
    tmp_path: Path, clean: tuple[dict[str, Any], np.ndarray], attack: str
) -> None:
    summ, params = _train(tmp_path / "run", "--code", "cyclic", "--attack", attack)
    assert rel_diff(params, clean[1]) <= 1e-5
    # With n = 2s + 1 every worker holds every partition, so the honest payloads agree and
    # ALIE's lie (mean - z * std) is the truth: nothing to locate then.
    assert_liars_located(metrics(tmp_path / "run"), S, caught=attack != "alie")
    assert summ["adversaries_located"] > 0 or attack == "alie"


def test_draco_trains_what_plain_minibatch_sgd_trains(
    tmp_path: Path, clean: tuple[dict[str, Any], np.ndarray]
) -> None:
    # Same seed and batch size; N partitions = N workers without redundancy, nobody lies.
    _, plain = _train(
        tmp_path / "plain", "--code", "none", "--aggregator", "mean", "--attack", "none"
    )
    _, cyclic = _train(tmp_path / "cyclic", "--code", "cyclic", "--attack", "reverse")
    assert rel_diff(clean[1], plain) <= 1e-5
    assert rel_diff(cyclic, plain) <= 1e-5
    # ... and the parameters did move: the comparison is not between two initial models.
    spec = {"model": "logreg", "dataset": "synthetic", "data_dir": None, "batch_size": 8}
    initial = make_task({**spec, "n_partitions": N, "seed": 3}).initial_params()
    assert initial.shape == plain.shape and rel_diff(plain, initial) > 1e-3


def test_killed_and_resumed_run_ends_with_the_uninterrupted_model(tmp_path: Path) -> None:
    rounds, every = 150, 10
    args = [
        *["--model", "logreg", "--dataset", "synthetic", "--batch-size", "8", "--seed", "5"],
        *["--workers", N, "--adversaries", S, "--attack", "constant", "--rounds", rounds],
        *["--checkpoint-every", every, "--eval-every", "0", "--worker-procs", "1"],
    ]
    assert_resume_reproduces(tmp_path, args)


def test_demonstration_defaults(tmp_path: Path) -> None:
    """``draco-run`` with its defaults (15 workers, s=2, constant attack, fc), few rounds."""
    run_dir = tmp_path / "run"
    status, out, err = draco_run(run_dir, "--rounds", 3)
    assert status == 0, err
    summ = summary(run_dir)
    assert (summ["workers"], summ["adversaries"], summ["code"]) == (15, 2, "repetition")
    assert summ["attack"] == "constant" and summ["adversaries_located"] > 0
    assert_liars_located(metrics(run_dir), 2)
    assert "round" in out  # the PS's progress lines reach the launcher's output


def _mnist_dir() -> Path | None:
    root = Path(os.environ.get("DRACO_DATA") or ROOT.parent / "shared" / "data")
    return root if (root / "mnist").is_dir() else None


@pytest.mark.skipif(
    _mnist_dir() is None,
    reason="MNIST not found: set DRACO_DATA to a folder holding mnist/ (see draco-data)",
)
def test_short_fc_run_on_real_mnist_learns(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    status, _, err = draco_run(
        run_dir,
        *["--model", "fc", "--dataset", "mnist", "--data-dir", _mnist_dir()],
        *["--workers", 3, "--adversaries", 1, "--attack", "constant", "--rounds", 40],
        *["--batch-size", 32, "--eval-every", 0, "--worker-procs", 1],
    )
    assert status == 0, err
    summ = summary(run_dir)
    assert summ["test_accuracy"] > 0.6  # chance is 0.1
