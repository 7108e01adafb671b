"""A round's record: filled once, frozen, and turned into one ``metrics.jsonl`` line.

It flows one way: the engine measures an attempt (``AttemptRecord``, from
``RoundEngine.finish``), the asyncio shell measures what only it sees (``AttemptTiming``,
the round's wall time) and builds the ``RoundRecord`` once, at the end of the round; the recorder
(``draco.ps.recorder``) writes ``metrics_line(record, ...)`` with its own figures (evaluation,
admission counters, elapsed and cluster time) to the run directory, and the progress line.
The field order of a line is the order of the code below (docs/architecture.md,
"metrics.jsonl").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AttemptRecord", "AttemptTiming", "LoopUsage", "RoundRecord", "metrics_line"]


@dataclass(frozen=True)
class AttemptRecord:
    """What ``RoundEngine.finish`` measured of one attempt (times in seconds).

    Worker ids are ints; ``worker_*`` tuples are indexed by worker id, None for a worker not
    used this attempt (missing, erased) or sent nothing.
    """

    round: int
    wait_seconds: float  # broadcast to close, measured by the shell
    compute_seconds: float  # max over the used workers of their bounded compute time
    decode_seconds: float
    update_seconds: float
    attack_simulation_seconds: float  # the PS-simulated omniscient attacks (experiments)
    cluster_seconds: float  # docs/cluster_time.md
    critical_worker: int | None
    link_gbps: float
    worker_compute_seconds: tuple[float | None, ...]
    worker_bytes_in: tuple[int | None, ...]
    worker_bytes_out: tuple[int | None, ...]
    compute_clipped: tuple[int, ...]
    ps_link_seconds: float
    decode_cpu_seconds: float  # the helper thread's CPU for decode + update
    attack_simulation_cpu_seconds: float
    bytes_in: int
    bytes_out: int
    received: int  # payloads (or digests) used
    vote: str  # "full" or "digest"
    payload_requests: int
    erasures: tuple[int, ...]
    adversaries_located: tuple[int, ...]
    liars: tuple[int, ...]  # the plan's scheduled liars
    attack: str | None
    attack_simulated_at_ps: bool
    failed: bool
    attempts: int  # 1 + the failed attempts of this round before it
    error: str = ""  # why the attempt failed ("" when it did not)

    @property
    def ok(self) -> bool:
        """The attempt decoded and the model moved."""
        return not self.failed


@dataclass(frozen=True)
class LoopUsage:
    """The event loop thread's resource usage over an attempt (where the OS reports it)."""

    user_cpu_seconds: float  # this process's own code: framing, checks, bookkeeping
    sys_cpu_seconds: float  # the kernel's work for it: socket copies, TCP, page faults
    minor_faults: int


@dataclass(frozen=True)
class AttemptTiming:
    """What the asyncio shell measured of an attempt (seconds)."""

    fetch_seconds: float  # digest vote: the payload fetch
    loop_cpu_seconds: float  # the event loop's CPU: broadcast, ingest
    loop_usage: LoopUsage | None  # None where the OS has no per-thread usage
    ready_cpu_seconds: float  # the cyclic readiness checks in the helper thread


@dataclass(frozen=True)
class RoundRecord:
    """One round: its last attempt (the engine's and the shell's figures), its wall time.

    Built once, by the shell at the end of the round (``RoundDriver._run_round``).
    """

    attempt: AttemptRecord
    timing: AttemptTiming
    wall_seconds: float  # the whole round: every attempt and pause
    retry_error: str = ""  # the last failed attempt's error, when attempts > 1

    @property
    def round(self) -> int:
        return self.attempt.round

    @property
    def failed(self) -> bool:
        return self.attempt.failed

    @property
    def ps_cpu_seconds(self) -> float:
        """The PS's CPU for the round's last attempt: decode + update, loop, ready checks."""
        return (
            self.attempt.decode_cpu_seconds + self.timing.loop_cpu_seconds
        ) + self.timing.ready_cpu_seconds

    def metrics(self) -> dict[str, Any]:
        """The round's fields of its ``metrics.jsonl`` line, in the line's order."""
        a, s = self.attempt, self.timing
        line: dict[str, Any] = {
            "round": a.round,
            "wall_seconds": self.wall_seconds,
            "wait_seconds": a.wait_seconds,
            "compute_seconds": a.compute_seconds,
            "decode_seconds": a.decode_seconds,
            "update_seconds": a.update_seconds,
            "attack_simulation_seconds": a.attack_simulation_seconds,
            "cluster_seconds": a.cluster_seconds,
            "critical_worker": a.critical_worker,
            "link_gbps": a.link_gbps,
            "worker_compute_seconds": list(a.worker_compute_seconds),
            "worker_bytes_in": list(a.worker_bytes_in),
            "worker_bytes_out": list(a.worker_bytes_out),
            "compute_clipped": list(a.compute_clipped),
            "ps_link_seconds": a.ps_link_seconds,
            "decode_cpu_seconds": a.decode_cpu_seconds,
            "attack_simulation_cpu_seconds": a.attack_simulation_cpu_seconds,
            "ps_cpu_seconds": self.ps_cpu_seconds,
            "bytes_in": a.bytes_in,
            "bytes_out": a.bytes_out,
            "received": a.received,
            "vote": a.vote,
            "payload_requests": a.payload_requests,
            "erasures": list(a.erasures),
            "adversaries_located": list(a.adversaries_located),
            "liars": list(a.liars),
            "attack": a.attack,
            "attack_simulated_at_ps": a.attack_simulated_at_ps,
            "failed": a.failed,
            "attempts": a.attempts,
        }
        if a.failed:
            line["error"] = a.error
        line["fetch_seconds"] = s.fetch_seconds
        line["loop_cpu_seconds"] = s.loop_cpu_seconds
        if s.loop_usage is not None:
            line["loop_user_cpu_seconds"] = s.loop_usage.user_cpu_seconds
            line["loop_sys_cpu_seconds"] = s.loop_usage.sys_cpu_seconds
            line["loop_minor_faults"] = s.loop_usage.minor_faults
        line["ready_cpu_seconds"] = s.ready_cpu_seconds
        if self.retry_error:
            line["retry_error"] = self.retry_error
        return line


def metrics_line(
    record: RoundRecord,
    *,
    admission: Mapping[str, int],
    evaluated_after_rounds: int | None,
    elapsed_seconds: float,
    evaluation: Mapping[str, float],
    cluster_seconds_elapsed: float,
) -> dict[str, Any]:
    """One ``metrics.jsonl`` line: the round's fields, then the recorder's.

    ``admission``: the admission counters that changed (left out when empty);
    ``evaluated_after_rounds`` and ``evaluation`` (the task's ``evaluate`` keys) when the
    round was evaluated; ``elapsed_seconds``: the run's wall time so far;
    ``cluster_seconds_elapsed``: the running sum of ``cluster_seconds``.
    """
    line = record.metrics()
    if admission:
        line["admission"] = dict(admission)
    if evaluated_after_rounds is not None:
        line["evaluated_after_rounds"] = evaluated_after_rounds
    line["elapsed_seconds"] = elapsed_seconds
    line.update(evaluation)
    line["cluster_seconds_elapsed"] = cluster_seconds_elapsed
    return line
