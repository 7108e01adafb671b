"""Per-round side work of a run: evaluation (in a thread), metrics, checkpoints, progress line."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO, cast

import numpy as np

from draco.ps.config import PSConfig
from draco.ps.engine import RoundEngine
from draco.ps.record import RoundRecord, metrics_line
from draco.ps.rundir import RunDir, format_progress
from draco.tasks.contract import Task

__all__ = ["RunRecorder", "model_sha256"]


@dataclass(frozen=True)
class _Pending:
    """A round waiting to be written: its record and the recorder's figures for its line."""

    record: RoundRecord
    admission: dict[str, int]  # admission counters that changed since the previous round
    evaluated_after_rounds: int | None  # None: not evaluated
    elapsed_seconds: float  # the run's wall time when the round ended
    evaluation: Future[dict[str, float]] | None  # the task's evaluate, in the eval thread


def model_sha256(params: np.ndarray) -> str:
    """SHA-256 of the parameters as little-endian float32 bytes (hex)."""
    return hashlib.sha256(np.asarray(params).astype("<f4").tobytes()).hexdigest()


class RunRecorder:
    """Per-round side work: evaluation (in a thread), metrics, checkpoints, progress line.

    Metric records are written in round order; a record whose evaluation is still running
    waits for it (evaluation is off the round's critical path, not skipped).

    Parameters
    ----------
    task : Task
        Evaluates parameters.
    config : PSConfig
        eval_every, checkpoint_every, rounds.
    rundir : RunDir or None
        Where metrics and checkpoints go (None: stdout only).
    out : TextIO
        Progress lines.
    wall_offset : float
        Wall seconds of earlier processes of this run (resume).
    """

    def __init__(
        self,
        task: Task,
        config: PSConfig,
        rundir: RunDir | None,
        out: TextIO,
        *,
        start_round: int = 0,
        wall_offset: float = 0.0,
    ) -> None:
        self.task = task
        self.config = config
        self.rundir = rundir
        self.out = out
        self.start_round = start_round
        self.wall_offset = wall_offset
        # The newest checkpoint written (a resumed run starts from one).
        self.saved_round = start_round
        self.t0 = time.perf_counter()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draco-eval")
        # Rounds waiting for their evaluation (if any) to be written in order.
        self.pending: deque[_Pending] = deque()
        self.last_eval: dict[str, float] = {}
        self.last_eval_round = -1
        self.first_round_started: float | None = None
        # The server's admission counters (refused / evicted / auth_failed / throttled /
        # handshake_timeouts ...), set by ``serve``; each record gets what changed since the
        # previous record, nonzero keys only, so a quiet run adds nothing to metrics.jsonl.
        self.counters: dict[str, int] | None = None
        self._counters_seen: dict[str, int] = {}
        # Cluster time (docs/cluster_time.md): the running sum over written records, and the
        # first evaluation at or above --target-accuracy (rounds, cluster s, wall s).
        self.cluster_total = 0.0
        self.to_target: dict[str, float] | None = None
        if rundir is not None and start_round > 0:
            for old in rundir.read_metrics():
                self._account(
                    float(old.get("cluster_seconds", 0.0) or 0.0),
                    old.get("test_accuracy"),
                    int(old.get("evaluated_after_rounds", int(old.get("round", -1)) + 1)),
                    float(old.get("elapsed_seconds", math.nan)),
                )

    def admission_delta(self) -> dict[str, int]:
        """Admission counters that changed since the previous call (nonzero deltas only)."""
        if self.counters is None:
            return {}
        now = dict(self.counters)
        delta = {k: v - self._counters_seen.get(k, 0) for k, v in now.items()}
        self._counters_seen = now
        return {k: v for k, v in delta.items() if v and k != "admitted"}

    def _account(
        self, cluster_seconds: float, accuracy: float | None, rounds: int, wall_seconds: float
    ) -> float:
        """Add a written round's cluster time; note the first evaluation at the target
        accuracy (after ``rounds`` rounds, ``wall_seconds`` into the run). Returns the
        running cluster time."""
        self.cluster_total += cluster_seconds
        target = self.config.target_accuracy
        if (
            target is not None
            and self.to_target is None
            and accuracy is not None
            and accuracy >= target
        ):
            self.to_target = {
                "rounds": rounds,
                "cluster_seconds": self.cluster_total,
                "wall_seconds": wall_seconds,
            }
        return self.cluster_total

    @property
    def wall_seconds(self) -> float:
        return self.wall_offset + (time.perf_counter() - self.t0)

    def round_done(self, record: RoundRecord, engine: RoundEngine) -> None:
        """A round ended (``RunHooks``): evaluate, queue its line, checkpoint, progress."""
        done = engine.next_round
        every = self.config.eval_every
        evaluate = not record.failed and bool(every) and done % every == 0
        fut = self.executor.submit(self.task.evaluate, engine.params) if evaluate else None
        self.pending.append(
            _Pending(
                record=record,
                admission=self.admission_delta(),
                evaluated_after_rounds=done if evaluate else None,
                elapsed_seconds=self.wall_seconds,
                evaluation=fut,
            )
        )
        self.flush(block=False)
        k = self.config.checkpoint_every
        if not record.failed and k and done % k == 0:
            self.save_checkpoint(engine)
        self._progress(record, engine)

    def save_checkpoint(self, engine: RoundEngine) -> None:
        """Checkpoint the completed rounds (metrics up to it are flushed first); no-op without
        a run directory or with checkpoints off, or if this round's checkpoint exists."""
        done = engine.next_round
        if self.rundir is None or not self.config.checkpoint_every or done == self.saved_round:
            return
        self.flush(block=True)  # metrics up to the checkpoint are on disk first
        params, opt, extra = engine.state()
        extra = {**extra, "wall_seconds": self.wall_seconds}
        self.rundir.save_checkpoint(done, params, opt, extra)
        self.saved_round = done

    def flush(self, *, block: bool) -> None:
        """Write the records whose evaluation (if any) finished, in order."""
        while self.pending:
            item = self.pending[0]
            evaluation: dict[str, float] = {}
            if item.evaluation is not None:
                if not block and not item.evaluation.done():
                    return
                evaluation = item.evaluation.result()
                self.last_eval = dict(evaluation)
                self.last_eval_round = int(cast(int, item.evaluated_after_rounds))
            self.pending.popleft()
            record = item.record
            cluster_elapsed = self._account(
                float(record.attempt.cluster_seconds or 0.0),
                evaluation.get("test_accuracy"),
                item.evaluated_after_rounds
                if item.evaluated_after_rounds is not None
                else record.round + 1,
                item.elapsed_seconds,
            )
            if self.rundir is not None:
                self.rundir.append_metrics(
                    metrics_line(
                        record,
                        admission=item.admission,
                        evaluated_after_rounds=item.evaluated_after_rounds,
                        elapsed_seconds=item.elapsed_seconds,
                        evaluation=evaluation,
                        cluster_seconds_elapsed=cluster_elapsed,
                    )
                )

    def _progress(self, record: RoundRecord, engine: RoundEngine) -> None:
        done = engine.next_round
        now = time.perf_counter()
        if self.first_round_started is None:
            # Rate over the rounds only: waiting for the workers to join is not a round.
            self.first_round_started = now - record.wall_seconds
        elapsed = now - self.first_round_started
        rate = (done - self.start_round) / elapsed if elapsed > 0 else math.nan
        eta = (engine.rounds - done) / rate if rate and rate > 0 else math.nan
        line = format_progress(done, engine.rounds, rate, eta, self.last_eval.get("test_accuracy"))
        if "test_accuracy" not in self.last_eval and "test_loss" in self.last_eval:
            line += f"  loss {self.last_eval['test_loss']:.4g}"
        a = record.attempt
        if a.failed:
            line += f"  round {a.round} FAILED after {a.attempts} attempt(s): {a.error}"
        else:
            located = list(a.adversaries_located)
            line += f"  liars located {located}" if located else "  liars located -"
            if a.erasures:
                line += f"  erasures {list(a.erasures)}"
            if a.attempts > 1:
                line += f"  ({a.attempts} attempts)"
        print(line, file=self.out, flush=True)

    def close(self, engine: RoundEngine, *, final_eval: bool) -> dict[str, float]:
        """Finish pending evaluations and records; evaluate the final model if asked."""
        self.flush(block=True)
        self.executor.shutdown(wait=True)
        if final_eval and self.last_eval_round != engine.next_round:
            self.last_eval = dict(self.task.evaluate(engine.params))
            self.last_eval_round = engine.next_round
            target, acc = self.config.target_accuracy, self.last_eval.get("test_accuracy")
            if target is not None and self.to_target is None and acc is not None and acc >= target:
                self.to_target = {
                    "rounds": engine.next_round,
                    "cluster_seconds": self.cluster_total,
                    "wall_seconds": self.wall_seconds,
                }
        return self.last_eval

    def cluster_summary(self) -> dict[str, Any]:
        """summary.json's cluster-time keys (docs/cluster_time.md)."""
        hit = self.to_target
        return {
            "cluster_seconds_total": self.cluster_total,
            "link_gbps": self.config.link_gbps,
            "target_accuracy": self.config.target_accuracy,
            "rounds_to_target": None if hit is None else hit["rounds"],
            "cluster_seconds_to_target": None if hit is None else hit["cluster_seconds"],
            "wall_seconds_to_target": None if hit is None else hit["wall_seconds"],
        }
