"""The digest-first vote's second phase: one verified payload per group, fetched.

As soon as a group has s+1 equal digests, one member of that majority is asked for its
payload (``PayloadRequest``); the payload is hashed in the helper thread and checked against
the majority digest; on a mismatch (a located liar), ``--payload-timeout`` or a disconnect
the next member is asked (docs/protocol.md section 6). ``RoundCollector`` decides whom to
ask; this part sends the requests and runs their timers.
"""

from __future__ import annotations

import asyncio

import numpy as np

from draco.core.digests import payload_digest
from draco.errors import ProtocolError
from draco.net import messages as m
from draco.net.peer import Peer
from draco.net.server_seats import Seats
from draco.net.server_state import log
from draco.ps.collector import RoundCollector, Verdict


class PayloadFetch(Seats):
    """Payload requests of the digest-first vote, groups in parallel."""

    async def _fetch(self, rnd: RoundCollector) -> None:
        """Digest-first vote, phase 2: one verified payload per group, groups in parallel.

        Skipped when a group has no majority digest (the attempt fails at decode anyway and
        fetching would only cost bandwidth).
        """
        try:
            rnd.plan_fetch(self._fetch_hosts)
            groups = rnd.fetch_groups
            if len(groups) < len(getattr(self.code, "groups", ())):
                return
            for g in groups:
                if g not in self._fetch_tasks:
                    self._fetch_tasks[g] = asyncio.ensure_future(self._fetch_group(rnd, g))
            await asyncio.gather(*self._fetch_tasks.values())
        finally:
            self._end_fetch()

    def _end_fetch(self) -> None:
        """The attempt's fetch is over (done, given up, or stopping): cancel what is left."""
        self._fetching = None
        for task in self._fetch_tasks.values():
            task.cancel()
        self._fetch_tasks = {}
        for fut in self._pending_fetch.values():
            fut.cancel()
        self._pending_fetch.clear()

    def _fetch_early(self, rnd: RoundCollector, j: int) -> None:
        """Worker ``j``'s digest arrived: if its group is now decided, ask for its payload at
        once, while the other groups' digests are still coming in."""
        g = rnd.group_of(j)
        if g in self._fetch_tasks or not rnd.group_decided(g):
            return
        rnd.plan_group(g, self._fetch_hosts)
        self._fetch_tasks[g] = asyncio.ensure_future(self._fetch_group(rnd, g))

    async def _fetch_group(self, rnd: RoundCollector, g: int) -> None:
        """Ask the members of group ``g``'s majority in turn until one payload verifies.

        Next member on a timeout (``--payload-timeout``), a disconnect, or a payload that does
        not match the member's own digest (that member is located as a liar); at most
        ``--max-payload-requests`` requests (``RoundCollector.next_candidate``).
        """
        loop = asyncio.get_running_loop()
        cfg = rnd.digest_config
        key = rnd.digest_key
        assert key is not None
        while self._stop_reason is None:
            j = rnd.next_candidate(g)
            if j is None:
                return
            peer = self.seats.get(j)
            if (
                peer is None
                or peer.closed
                or peer.conn.last_round_start != (rnd.index, rnd.attempt)
            ):
                rnd.give_up(j, "not connected when its payload was needed")
                continue
            fut: asyncio.Future[np.ndarray | None] = loop.create_future()
            self._pending_fetch[j] = fut
            rnd.requested(
                j, g, peer.send(m.PayloadRequest(round_index=rnd.index, attempt=rnd.attempt))
            )
            try:
                payload = await asyncio.wait_for(fut, cfg.payload_timeout)
            except asyncio.TimeoutError:
                rnd.give_up(j, f"no payload within --payload-timeout {cfg.payload_timeout:g} s")
                log.info("round %d: worker %d did not send its payload in time", rnd.index, j)
                continue
            finally:
                self._pending_fetch.pop(j, None)
            if payload is None:
                rnd.give_up(j, "disconnected before sending its payload")
                continue
            # Hashing a 45 MB payload takes ~55 ms: off the event loop (hashlib drops the GIL).
            digest = await loop.run_in_executor(
                self._executor, payload_digest, payload, key, cfg.digest_bytes
            )
            if rnd.verify(j, payload, digest):
                return
            log.warning(
                "round %d: worker %d sent a payload that does not match its own digest: "
                "located as a liar",
                rnd.index,
                j,
            )

    def _on_payload(self, peer: Peer, msg: m.Payload, wire_bytes: int) -> None:
        """A requested payload (the Connection already refused unsolicited/duplicate ones)."""
        j = peer.worker_id
        assert j is not None
        rnd = self._fetching
        if rnd is None:
            return  # its attempt is over: a late answer, legal and useless
        offer = rnd.check_payload(j, msg.round_index, msg.attempt, msg.payload, wire_bytes)
        if offer.verdict is Verdict.VIOLATION:
            self.peer_violation(peer, ProtocolError(offer.reason))
            return
        fut = self._pending_fetch.get(j)
        if offer.verdict is Verdict.ACCEPTED and fut is not None and not fut.done():
            fut.set_result(msg.payload)
