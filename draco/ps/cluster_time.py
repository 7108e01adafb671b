"""A round's time on a modelled cluster (one node per worker, a link of ``link_gbps``).

docs/cluster_time.md: the PS measures each worker's compute time and bytes, and a round's
cluster time is its critical path plus the PS's own decode and update.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_LINK_GBPS = 10.0


def transfer_seconds(nbytes: float, link_gbps: float) -> float:
    """Seconds to move ``nbytes`` over a link of ``link_gbps`` gigabits per second."""
    return float(nbytes) * 8.0 / (float(link_gbps) * 1e9)


def cluster_seconds(
    worker_compute: Mapping[int, float],
    worker_bytes: Mapping[int, int],
    link_gbps: float,
    ps_seconds: float,
) -> tuple[float, int | None]:
    """A round's critical path on a cluster of one node per worker (docs/cluster_time.md).

    ``max_j (compute_j + transfer(bytes_j)) + ps_seconds`` over the workers whose payloads
    the round used (the keys of ``worker_compute``); ``bytes_j`` = its RoundStart (the model
    broadcast) plus its payload frame. Returns (seconds, the worker on the critical path).
    """
    worst, who = 0.0, None
    for j in sorted(worker_compute):
        t = worker_compute[j] + transfer_seconds(worker_bytes.get(j, 0), link_gbps)
        if who is None or t > worst:
            worst, who = t, j
    return worst + float(ps_seconds), who
