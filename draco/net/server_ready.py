"""When may an attempt close? ``code.ready`` inline, or off the event loop after a silence.

Complete attempts (every worker delivered or erased) close at once. Otherwise
``code.ready(received)`` decides: inline for the codes whose check is a byte comparison
(repetition, none); for the cyclic code, whose check projects every payload (O(n d)), in the
helper thread, at most one check in flight, re-run once for the payloads that arrived
meanwhile, and only after a silence without arrivals (``READY_CHECK_FRACTION``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import numpy as np

from draco.net.server_state import ServerState, log
from draco.ps.collector import RoundCollector
from draco.ps.interfaces import CodeLike

READY_CHECK_DELAY = 0.05
READY_CHECK_FRACTION = 0.1


def _timed_ready(code: CodeLike, snapshot: Mapping[int, np.ndarray]) -> tuple[bool, float]:
    """``code.ready(snapshot)`` and the CPU seconds it took in this (helper) thread."""
    c0 = time.thread_time()
    ok = bool(code.ready(snapshot))
    return ok, time.thread_time() - c0


class EarlyClose(ServerState):
    """Wakes the round driver when the current attempt can close."""

    def _maybe_close_round(self, rnd: RoundCollector) -> None:
        """Wake the round when it can close: complete, or ``code.ready`` (maybe off-loop)."""
        if self._round is not rnd or self._wake is None:
            return
        if rnd.complete or rnd.known_ready:
            self._wake.set()
            return
        if not rnd.received and not rnd.digests:
            return
        if self._inline_ready:
            if rnd.ready:
                self._wake.set()
            return
        if self._ready_task is not None and not self._ready_task.done():
            self._ready_dirty = True  # re-checked with these payloads when the one running ends
            return
        # Not at once: after a silence without another arrival (see READY_CHECK_FRACTION).
        if self._ready_timer is not None:
            self._ready_timer.cancel()
        loop = asyncio.get_running_loop()
        silence = max(READY_CHECK_DELAY, READY_CHECK_FRACTION * (loop.time() - self._started_at))
        self._ready_timer = loop.call_later(silence, self._start_ready_check, rnd)

    def _start_ready_check(self, rnd: RoundCollector) -> None:
        self._ready_timer = None
        if self._round is not rnd or rnd.complete or rnd.known_ready:
            return  # the attempt closed, or closes without a check, meanwhile
        if self._ready_task is not None and not self._ready_task.done():
            self._ready_dirty = True
            return
        self._ready_dirty = False
        self._ready_task = asyncio.ensure_future(self._check_ready(rnd))

    async def _check_ready(self, rnd: RoundCollector) -> None:
        """``code.ready`` in the helper thread on snapshots, until ready or nothing new came.

        Arrivals while a check runs only set ``_ready_dirty``; if the attempt changed
        meanwhile, the payloads of the new one get their own check when this one ends.
        """
        try:
            await self._check_ready_of(rnd)
        finally:
            current = self._round
            if current is not None and current is not rnd and self._ready_dirty:
                self._ready_task = None
                self._maybe_close_round(current)

    async def _check_ready_of(self, rnd: RoundCollector) -> None:
        loop = asyncio.get_running_loop()
        while self._round is rnd:
            self._ready_dirty = False
            snapshot = rnd.readiness_input()
            self.ready_checks += 1
            try:
                ok, cpu = await loop.run_in_executor(
                    self._executor, _timed_ready, self.code, snapshot
                )
                self._ready_cpu += cpu
            except Exception:  # a bug in a code must not kill the round: it closes at timeout
                log.exception("round %d: code.ready failed", rnd.index)
                return
            if self._round is not rnd:
                return
            if ok:
                rnd.mark_ready()
                if self._wake is not None:
                    self._wake.set()
                return
            if not self._ready_dirty:
                return
