"""End to end with a REAL DFT code: 15 workers, s = 2 (windows of 5 of 15 partitions).

At n = 2s + 1 every cyclic coefficient is 1 and the code is a repetition code in disguise;
these runs use n = 15 > 2s + 1 so that the decoder's location and recovery really run:

- every attack of ``draco.core.attacks.ATTACKS`` (the sparse lie included) ends within a
  relative 1e-5 of the clean cyclic run, with the liars located and nobody else;
- a run killed after a checkpoint and resumed ends on the uninterrupted run's
  ``model_sha256``: the decoded gradient depends on the payloads, not on the secret
  projection drawn in each round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_helpers import (
    RunResult,
    assert_resume_reproduces,
    final_params,
    metrics,
    rel_diff,
    summary,
)

from draco.core.attacks import ATTACKS

pytestmark = pytest.mark.e2e

N, S, ROUNDS = 15, 2, 6
TRAIN = [
    *["--model", "logreg", "--dataset", "synthetic", "--batch-size", "8", "--seed", "4"],
    *["--workers", N, "--adversaries", S, "--code", "cyclic", "--rounds", ROUNDS],
    *["--eval-every", "0", "--checkpoint-every", ROUNDS, "--worker-procs", "1"],
]


# The runs that end on their own, started side by side by the ``batch`` fixture (conftest).
JOBS: dict[str, list[Any]] = {a: [*TRAIN, "--attack", a] for a in ("none", *ATTACKS)}


def _trained(run: RunResult) -> tuple[dict[str, Any], np.ndarray]:
    run.check()
    summ = summary(run.run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (ROUNDS, 0), summ
    return summ, final_params(run.run_dir, ROUNDS)


@pytest.mark.draco_runs("none", "{attack}")
@pytest.mark.parametrize("attack", ATTACKS)
def test_attacked_dft_code_run_matches_the_clean_run(
    batch: dict[str, RunResult], attack: str
) -> None:
    clean = _trained(batch["none"])
    summ, params = _trained(batch[attack])
    assert rel_diff(params, clean[1]) <= 1e-5
    records = metrics(batch[attack].run_dir)
    for rec in records:
        named = set(rec.get("adversaries_located", []))
        assert named <= set(rec["liars"]), rec  # nobody honest, ever
    # The liars who sent a lie were named (ALIE's lie is the honest payload when the honest
    # payloads agree, and label_flip lies through its data: the gradient of other labels).
    if attack not in ("alie",):
        assert summ["adversaries_located"] > 0, summ


def test_killed_and_resumed_cyclic_run_ends_on_the_same_model(tmp_path: Path) -> None:
    rounds, every = 60, 10
    args = [*TRAIN, "--attack", "constant"]
    args[args.index("--rounds") + 1] = rounds
    args[args.index("--checkpoint-every") + 1] = every
    assert_resume_reproduces(tmp_path, args)
