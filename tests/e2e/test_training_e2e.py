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
    RunResult,
    assert_liars_located,
    assert_resume_reproduces,
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


def _mnist_dir() -> Path | None:
    root = Path(os.environ.get("DRACO_DATA") or ROOT.parent / "shared" / "data")
    return root if (root / "mnist").is_dir() else None


VOTES = ("full", "digest")
MNIST = _mnist_dir()
# The runs that end on their own, by name, started side by side by the ``batch`` fixture
# (conftest) for the selected tests that name them with ``draco_runs``.
JOBS: dict[str, list[Any]] = {
    "clean": [*TRAIN, "--attack", "none", "--vote", "full"],
    "clean-digest": [*TRAIN, "--attack", "none", "--vote", "digest"],
    **{
        f"repetition-{attack}-{vote}": [
            *[*TRAIN, "--code", "repetition", "--attack", attack, "--vote", vote]
        ]
        for attack in ATTACKS
        for vote in VOTES
    },
    **{
        f"cyclic-{a}": [*TRAIN, "--code", "cyclic", "--attack", a]
        for a in ("constant", "alie", "reverse")
    },
    "plain": [*TRAIN, "--code", "none", "--aggregator", "mean", "--attack", "none"],
    # draco-run's own defaults (15 workers, s = 2, constant attack, fc), few rounds.
    "demo": ["--rounds", 3],
    **(
        {}
        if MNIST is None
        else {
            "mnist": [
                *["--model", "fc", "--dataset", "mnist", "--data-dir", MNIST],
                *["--workers", 3, "--adversaries", 1, "--attack", "constant", "--rounds", 40],
                *["--batch-size", 32, "--eval-every", 0, "--worker-procs", 1],
            ]
        }
    ),
}


def _trained(run: RunResult) -> tuple[dict[str, Any], np.ndarray]:
    """(summary, final parameters) of a run that completed ROUNDS rounds, none failed."""
    run.check()
    summ = summary(run.run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (ROUNDS, 0), summ
    params = final_params(run.run_dir, ROUNDS)
    assert hashlib.sha256(params.astype("<f4").tobytes()).hexdigest() == summ["model_sha256"]
    return summ, params


@pytest.mark.draco_runs("clean", "clean-digest")
def test_clean_digest_vote_run_trains_the_identical_model(batch: dict[str, RunResult]) -> None:
    """The clean repetition run (full vote) is the model every attacked run must reproduce."""
    clean = _trained(batch["clean"])
    summ, _ = _trained(batch["clean-digest"])
    assert summ["model_sha256"] == clean[0]["model_sha256"]
    records = metrics(batch["clean-digest"].run_dir)
    assert all(r["vote"] == "digest" and r["payload_requests"] == 1 for r in records)


@pytest.mark.draco_runs("clean", "repetition-{attack}-{vote}")
@pytest.mark.parametrize("vote", VOTES)
@pytest.mark.parametrize("attack", ATTACKS)
def test_attacked_repetition_run_trains_the_identical_model(
    batch: dict[str, RunResult], attack: str, vote: str
) -> None:
    clean = _trained(batch["clean"])
    run = batch[f"repetition-{attack}-{vote}"]
    summ, params = _trained(run)
    assert summ["model_sha256"] == clean[0]["model_sha256"]
    assert all(r["vote"] == vote for r in metrics(run.run_dir))
    np.testing.assert_array_equal(params, clean[1])
    # The liars really lied and were caught (a data attack lies through its gradient).
    assert_liars_located(metrics(run.run_dir), S, caught=attack != "alie")
    assert summ["adversaries_located"] > 0 or attack == "alie"


@pytest.mark.draco_runs("clean", "cyclic-{attack}")
@pytest.mark.parametrize("attack", ["constant", "alie"])
def test_attacked_cyclic_run_matches_the_clean_model(
    batch: dict[str, RunResult], attack: str
) -> None:
    clean = _trained(batch["clean"])
    run = batch[f"cyclic-{attack}"]
    summ, params = _trained(run)
    assert rel_diff(params, clean[1]) <= 1e-5
    # With n = 2s + 1 every worker holds every partition, so the honest payloads agree and
    # ALIE's lie (mean - z * std) is the truth: nothing to locate then.
    assert_liars_located(metrics(run.run_dir), S, caught=attack != "alie")
    assert summ["adversaries_located"] > 0 or attack == "alie"


@pytest.mark.draco_runs("clean", "plain", "cyclic-reverse")
def test_draco_trains_what_plain_minibatch_sgd_trains(batch: dict[str, RunResult]) -> None:
    # Same seed and batch size; N partitions = N workers without redundancy, nobody lies.
    clean = _trained(batch["clean"])
    _, plain = _trained(batch["plain"])
    _, cyclic = _trained(batch["cyclic-reverse"])
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


@pytest.mark.draco_runs("demo")
def test_demonstration_defaults(batch: dict[str, RunResult]) -> None:
    """``draco-run`` with its defaults (15 workers, s=2, constant attack, fc), few rounds."""
    run_dir, out = batch["demo"].check().run_dir, batch["demo"].out
    summ = summary(run_dir)
    assert (summ["workers"], summ["adversaries"], summ["code"]) == (15, 2, "repetition")
    assert summ["attack"] == "constant" and summ["adversaries_located"] > 0
    assert_liars_located(metrics(run_dir), 2)
    assert "round" in out  # the PS's progress lines reach the launcher's output


@pytest.mark.skipif(
    MNIST is None,
    reason="MNIST not found: set DRACO_DATA to a folder holding mnist/ (see draco-data)",
)
@pytest.mark.draco_runs("mnist")
def test_short_fc_run_on_real_mnist_learns(batch: dict[str, RunResult]) -> None:
    summ = summary(batch["mnist"].check().run_dir)
    assert summ["test_accuracy"] > 0.6  # chance is 0.1
