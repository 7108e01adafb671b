"""Per-round side work of a run: evaluation (in a thread), metrics, checkpoints, progress line."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TextIO

import numpy as np

from draco.ps.config import PSConfig
from draco.tasks.contract import Task

__all__ = ["RunRecorder", "model_sha256"]


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
        rundir: Any,
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
        self.pending: deque[tuple[dict[str, Any], Future[dict[str, float]] | None]] = deque()
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
                self._account(old)

    def admission_delta(self) -> dict[str, int]:
        """Admission counters that changed since the previous call (nonzero deltas only)."""
        if self.counters is None:
            return {}
        now = dict(self.counters)
        delta = {k: v - self._counters_seen.get(k, 0) for k, v in now.items()}
        self._counters_seen = now
        return {k: v for k, v in delta.items() if v and k != "admitted"}

    def _account(self, record: dict[str, Any]) -> None:
        self.cluster_total += float(record.get("cluster_seconds", 0.0) or 0.0)
        record["cluster_seconds_elapsed"] = self.cluster_total
        target = self.config.target_accuracy
        acc = record.get("test_accuracy")
        if target is not None and self.to_target is None and acc is not None and acc >= target:
            self.to_target = {
                "rounds": int(record.get("evaluated_after_rounds", record["round"] + 1)),
                "cluster_seconds": self.cluster_total,
                "wall_seconds": float(record.get("elapsed_seconds", math.nan)),
            }

    @property
    def wall_seconds(self) -> float:
        return self.wall_offset + (time.perf_counter() - self.t0)

    def round_done(self, record: dict[str, Any], engine: Any) -> None:
        admission = self.admission_delta()
        if admission:
            record["admission"] = admission
        done = engine.next_round
        every = self.config.eval_every
        fut = None
        if not record["failed"] and every and done % every == 0:
            fut = self.executor.submit(self.task.evaluate, engine.params)
            record["evaluated_after_rounds"] = done
        record["elapsed_seconds"] = self.wall_seconds
        self.pending.append((record, fut))
        self.flush(block=False)
        k = self.config.checkpoint_every
        if not record["failed"] and k and done % k == 0:
            self.save_checkpoint(engine)
        self._progress(record, engine)

    def save_checkpoint(self, engine: Any) -> None:
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
            record, fut = self.pending[0]
            if fut is not None:
                if not block and not fut.done():
                    return
                metrics = fut.result()
                record.update(metrics)
                self.last_eval = dict(metrics)
                self.last_eval_round = int(record["evaluated_after_rounds"])
            self.pending.popleft()
            self._account(record)
            if self.rundir is not None:
                self.rundir.append_metrics(record)

    def _progress(self, record: dict[str, Any], engine: Any) -> None:
        from draco.ps.rundir import format_progress

        done = engine.next_round
        now = time.perf_counter()
        if self.first_round_started is None:
            # Rate over the rounds only: waiting for the workers to join is not a round.
            self.first_round_started = now - float(record["wall_seconds"])
        elapsed = now - self.first_round_started
        rate = (done - self.start_round) / elapsed if elapsed > 0 else math.nan
        eta = (engine.rounds - done) / rate if rate and rate > 0 else math.nan
        line = format_progress(done, engine.rounds, rate, eta, self.last_eval.get("test_accuracy"))
        if "test_accuracy" not in self.last_eval and "test_loss" in self.last_eval:
            line += f"  loss {self.last_eval['test_loss']:.4g}"
        if record["failed"]:
            line += (
                f"  round {record['round']} FAILED after {record.get('attempts', 1)} "
                f"attempt(s): {record.get('error', '')}"
            )
        else:
            located = record["adversaries_located"]
            line += f"  liars located {located}" if located else "  liars located -"
            if record["erasures"]:
                line += f"  erasures {record['erasures']}"
            if record.get("attempts", 1) > 1:
                line += f"  ({record['attempts']} attempts)"
        print(line, file=self.out, flush=True)

    def close(self, engine: Any, *, final_eval: bool) -> dict[str, float]:
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
