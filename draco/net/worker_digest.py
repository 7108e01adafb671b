"""The worker's side of the digest-first vote (docs/protocol.md section 6).

A RoundStart with a ``digest_key`` is answered with ``Digest(t, attempt, BLAKE2b(y_j,
key=digest_key), compute_seconds)`` instead of the payload, and y_j is kept: the PS then
asks one majority member per group for it with a ``PayloadRequest(t, attempt)``, answered
with ``Payload(t, attempt, y_j)``. Only the payloads of the last ``HELD_PAYLOADS`` attempts
are kept (a request for an older one is not answered: the PS then asks another member).
``draco.net.worker``'s session loop calls ``send_digest`` and ``answer_request``.
"""

from __future__ import annotations

import numpy as np

from draco.net import messages as m
from draco.net.worker_client import ClientProtocol
from draco.net.worker_compute import Compute

__all__ = ["HELD_PAYLOADS", "HeldPayloads", "answer_request", "send_digest"]

# Payloads kept for PayloadRequests, newest attempts only. The PS asks for the current
# attempt's payload only; one more covers a request crossing the next RoundStart.
HELD_PAYLOADS = 2


class HeldPayloads:
    """A connection's payloads kept for PayloadRequests: (round, attempt) -> (d,) payload."""

    def __init__(self) -> None:
        self._held: dict[tuple[int, int], np.ndarray] = {}

    def keep(self, key: tuple[int, int], payload: np.ndarray) -> None:
        """Keep ``payload`` for ``key``; forget all but the newest ``HELD_PAYLOADS``."""
        self._held[key] = payload
        for old in sorted(self._held)[:-HELD_PAYLOADS]:
            del self._held[old]

    def pop(self, key: tuple[int, int]) -> np.ndarray | None:
        """The payload kept for ``key``, forgotten as it is handed out (sent at most once)."""
        return self._held.pop(key, None)


async def send_digest(
    proto: ClientProtocol,
    compute: Compute,
    msg: m.RoundStart,
    payload: np.ndarray,
    seconds: float,
    digest_bytes: int,
    held: HeldPayloads,
) -> None:
    """Answer ``msg`` with the keyed digest of ``payload`` (hashed in the compute thread, shared
    by equal payloads of the process) and keep ``payload`` for the PS's request."""
    digest = await compute.run(compute.digest, payload, msg.digest_key, digest_bytes)
    held.keep((msg.round_index, msg.attempt), payload)
    await proto.send(
        m.Digest(
            round_index=msg.round_index,
            attempt=msg.attempt,
            digest=digest,
            compute_seconds=seconds,
        )
    )


async def answer_request(proto: ClientProtocol, msg: m.PayloadRequest, held: HeldPayloads) -> bool:
    """Send the requested payload, at most once per (round, attempt); True if it was sent.

    Not answered: a payload no longer (or never) held, one already sent (popped from
    ``held``: an honest PS asks a worker once per attempt, so a repeated request is a
    flood, which must not make us upload d floats per tiny request), and a request the
    connection forgot (more than ``max_outstanding_requests`` outstanding).
    """
    key = (msg.round_index, msg.attempt)
    payload = held.pop(key)
    if payload is None or not proto.conn.is_requested(*key):
        return False
    await proto.send(m.Payload(round_index=msg.round_index, attempt=msg.attempt, payload=payload))
    return True
