"""The typed round record: built once, frozen, written as one metrics.jsonl line.

The line's fields (and their order) are the ones the PS wrote before the record was typed
(docs/architecture.md, "metrics.jsonl"): listed here independently of draco/ps/record.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from draco.core.codes import make_code
from draco.ps.config import PSConfig
from draco.ps.engine import RoundEngine
from draco.ps.optim import SGD, SGDConfig
from draco.ps.record import AttemptRecord, AttemptTiming, LoopUsage, RoundRecord
from draco.ps.recorder import RunRecorder
from draco.ps.rundir import RunDir
from draco.tasks.lstsq import LeastSquaresTask

ENGINE_KEYS = [
    "round", "wall_seconds", "wait_seconds", "compute_seconds", "decode_seconds",
    "update_seconds", "attack_simulation_seconds", "cluster_seconds", "critical_worker",
    "link_gbps", "worker_compute_seconds", "worker_bytes_in", "worker_bytes_out",
    "compute_clipped", "ps_link_seconds", "decode_cpu_seconds",
    "attack_simulation_cpu_seconds", "ps_cpu_seconds", "bytes_in", "bytes_out", "received",
    "vote", "payload_requests", "erasures", "adversaries_located", "liars", "attack",
    "attack_simulated_at_ps", "failed", "attempts",
]  # fmt: skip
SHELL_KEYS = [
    "fetch_seconds", "loop_cpu_seconds", "loop_user_cpu_seconds", "loop_sys_cpu_seconds",
    "loop_minor_faults", "ready_cpu_seconds",
]  # fmt: skip
N, S, DIM = 3, 1, 6


def _attempt(fail: bool) -> tuple[RoundEngine, AttemptRecord]:
    """One real attempt of the engine (lstsq, repetition 3/1): decoded, or failed."""
    code = make_code("repetition", N, S)
    task = LeastSquaresTask(DIM, N, 4, seed=3)
    engine = RoundEngine(
        code, task.initial_params(), SGD(SGDConfig(lr=0.1), DIM), rounds=2, max_failed_rounds=3
    )
    rnd = engine.start_round()
    senders = [0] if fail else range(N)  # one copy of 3: beyond the budget
    for j in senders:
        y = code.encode(j, task.partition_gradients(engine.params, 0, code.partitions_of(j)))
        rnd.offer(j, 0, y, 0.01, 100)
    return engine, engine.finish(rnd, wait_seconds=0.25)


def _timing() -> AttemptTiming:
    return AttemptTiming(
        fetch_seconds=0.0,
        loop_cpu_seconds=0.125,
        loop_usage=LoopUsage(user_cpu_seconds=0.1, sys_cpu_seconds=0.025, minor_faults=7),
        ready_cpu_seconds=0.0625,
    )


def _lines(tmp_path: Path, engine: RoundEngine, record: RoundRecord) -> list[dict]:
    config = PSConfig(eval_every=1, checkpoint_every=0)
    task = LeastSquaresTask(DIM, N, 4, seed=3)
    out = io.StringIO()
    recorder = RunRecorder(task, config, RunDir(tmp_path / "run"), out)
    recorder.round_done(record, engine)
    recorder.close(engine, final_eval=False)
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert out.getvalue().count("\n") == 1  # one progress line
    return [json.loads(line) for line in text.splitlines()]


def test_a_decoded_round_writes_the_same_fields_in_the_same_order(tmp_path: Path) -> None:
    engine, attempt = _attempt(fail=False)
    assert attempt.ok and attempt.erasures == () and attempt.received == N
    record = RoundRecord(attempt=attempt, timing=_timing(), wall_seconds=1.5)
    [line] = _lines(tmp_path, engine, record)
    evaluated = ["evaluated_after_rounds", "elapsed_seconds", "test_loss", "param_error"]
    assert list(line) == ENGINE_KEYS + SHELL_KEYS + evaluated + ["cluster_seconds_elapsed"]
    assert line["wall_seconds"] == 1.5 and line["wait_seconds"] == 0.25
    assert line["ps_cpu_seconds"] == attempt.decode_cpu_seconds + 0.125 + 0.0625
    assert line["loop_minor_faults"] == 7 and line["evaluated_after_rounds"] == 1
    assert line["cluster_seconds_elapsed"] == line["cluster_seconds"] == attempt.cluster_seconds
    assert line["erasures"] == [] and line["worker_bytes_in"] == [100] * N


def test_a_failed_round_carries_its_error_and_the_retry_error(tmp_path: Path) -> None:
    engine, attempt = _attempt(fail=True)
    assert not attempt.ok and attempt.error and attempt.erasures == (1, 2)
    record = RoundRecord(
        attempt=dataclasses.replace(attempt, attempts=2),
        timing=dataclasses.replace(_timing(), loop_usage=None),
        wall_seconds=2.0,
        retry_error="an earlier attempt's error",
    )
    [line] = _lines(tmp_path, engine, record)
    shell = [k for k in SHELL_KEYS if not k.startswith("loop_") or k == "loop_cpu_seconds"]
    expected = [*ENGINE_KEYS, "error", *shell, "retry_error", "elapsed_seconds"]
    assert list(line) == [*expected, "cluster_seconds_elapsed"]  # failed: not evaluated
    assert line["error"] == attempt.error and line["attempts"] == 2
    assert line["retry_error"] == "an earlier attempt's error" and line["failed"] is True


def test_the_record_is_frozen() -> None:
    _, attempt = _attempt(fail=False)
    record = RoundRecord(attempt=attempt, timing=_timing(), wall_seconds=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.wall_seconds = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        attempt.error = "patched"  # type: ignore[misc]
    assert np.isfinite(record.ps_cpu_seconds)
