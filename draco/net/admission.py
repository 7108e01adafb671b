"""Who may hold a pre-authentication slot on the parameter server: a sans-IO policy.

No sockets, no timers: the server (``draco.net.server``) feeds events and carries out the
decisions::

    adm = Admission(AdmissionLimits(...), n_workers=15)
    d = adm.open(key, source, now)        # a TCP connection was accepted (before any TLS)
    for victim in d.evict: abort(victim)  # oldest idle pre-auth connections make room
    if not d.admit: abort(key)            # only when nothing can be evicted
    adm.hello(key, worker_id, seat_free, now)  # a Hello arrived: maybe reserve the id's slot
    delay = adm.auth_delay(source, now)   # >0: verify this Auth only after `delay` seconds
    adm.auth_failed(source, now)          # a wrong MAC / spoofed id
    adm.release(key)                      # authenticated, refused or gone: slot is free

The rules (docs/protocol.md section 4.1):

- at most ``max_pending_per_source`` pre-authentication connections per source address and
  ``max_pending`` in all; TLS handshakes in progress count (the server registers a
  connection at accept, before its TLS handshake);
- when a limit is reached, the **oldest idle** connection makes room (of the same source when
  the per-source limit is hit, else of the source holding the most), so a flood of idle
  sockets only pushes out its own oldest sockets and the newest connection -- the one most
  likely to be a worker about to say Hello -- gets in;
- a connection that sent a Hello for a worker id of this run whose seat is free holds that
  id's **reserved** slot (one per id, at most half of a source's slots): it is never evicted
  for an idle newcomer. The handshake deadline still applies;
- authentication failures are rate-limited per source with a GCRA token bucket
  (``auth_failure_burst`` at once, then ``auth_failure_rate`` per second): past the burst,
  an Auth from that source is verified only after a delay, so a guesser gets at most that
  many answers per second; a valid worker from the same address is slowed, not locked out.

Counters (``Admission.counters``): ``admitted``, ``evicted``, ``refused``, ``auth_failed``,
``throttled`` (Auths delayed), ``handshake_timeouts`` (bumped by the server).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["Admission", "AdmissionLimits", "Decision", "RateLimitedLog"]


@dataclass(frozen=True)
class AdmissionLimits:
    """Admission bounds (each one a ``draco-ps`` flag; see ``draco.ps.config.ServerLimits``).

    Parameters
    ----------
    max_pending : int
        Pre-authentication connections (TCP accepted, TLS handshake or DRACO handshake in
        progress) held at once, all sources together.
    max_pending_per_source : int
        The same, per source IP address.
    auth_failure_burst : int
        Authentication failures a source may have in a burst before throttling.
    auth_failure_rate : float
        Sustained authentication failures per second allowed per source, after the burst.
    max_sources : int
        Source addresses whose failure history is remembered (oldest forgotten first).
    """

    max_pending: int = 256
    max_pending_per_source: int = 16
    auth_failure_burst: int = 20
    auth_failure_rate: float = 5.0
    max_sources: int = 4096

    def __post_init__(self) -> None:
        if self.max_pending < 1 or self.max_pending_per_source < 1:
            raise ValueError("pending-connection limits must be >= 1")
        if self.auth_failure_burst < 1:
            raise ValueError("auth_failure_burst must be >= 1")
        if not (math.isfinite(self.auth_failure_rate) and self.auth_failure_rate > 0):
            raise ValueError("auth_failure_rate must be a positive number per second")
        if self.max_sources < 1:
            raise ValueError("max_sources must be >= 1")


@dataclass(frozen=True)
class Decision:
    """What to do with a new connection: ``admit`` it, after aborting the keys in ``evict``."""

    admit: bool
    evict: tuple[Hashable, ...] = ()
    reason: str = ""


@dataclass
class _Entry:
    source: str
    opened: float
    reserved_id: int | None = None  # the worker id whose reserved slot this connection holds


@dataclass
class _Source:
    pending: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)
    reserved: int = 0
    tat: float = -math.inf  # GCRA "theoretical arrival time" of the next auth failure


class Admission:
    """The pre-authentication admission policy (see module docstring). Times in seconds.

    Parameters
    ----------
    limits : AdmissionLimits
    n_workers : int
        Worker ids of this run are ``0 .. n_workers - 1`` (only they can reserve a slot).
    """

    def __init__(self, limits: AdmissionLimits, n_workers: int) -> None:
        self.limits = limits
        self.n_workers = int(n_workers)
        self._pending: OrderedDict[Hashable, _Entry] = OrderedDict()  # oldest first
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._reserved: dict[int, Hashable] = {}  # worker id -> key holding its slot
        self.counters: dict[str, int] = dict.fromkeys(
            ("admitted", "evicted", "refused", "auth_failed", "throttled", "handshake_timeouts"),
            0,
        )

    # -- views -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Pre-authentication connections held now."""
        return len(self._pending)

    def pending_from(self, source: str) -> int:
        src = self._sources.get(source)
        return 0 if src is None else len(src.pending)

    def is_reserved(self, key: Hashable) -> bool:
        entry = self._pending.get(key)
        return entry is not None and entry.reserved_id is not None

    # -- events ------------------------------------------------------------------------------

    def open(self, key: Hashable, source: str, now: float) -> Decision:
        """A connection from ``source`` was accepted; decide before any byte is read."""
        lim = self.limits
        src = self._source(source)
        evict: list[Hashable] = []
        if len(src.pending) >= lim.max_pending_per_source:
            victim = self._oldest_idle(src)
            if victim is None:
                return self._refuse(f"{len(src.pending)} pending connections from {source}")
            evict.append(victim)
        elif len(self._pending) >= lim.max_pending:
            # Take room from the source that holds the most (one flood pushes out itself).
            heaviest = max(
                (s for s in self._sources.values() if s.pending),
                key=lambda s: len(s.pending) - s.reserved,
            )
            victim = self._oldest_idle(heaviest)
            if victim is None:
                return self._refuse(f"{len(self._pending)} pending connections in all")
            evict.append(victim)
        for victim in evict:
            self.release(victim)
            self.counters["evicted"] += 1
        self._pending[key] = _Entry(source, now)
        src.pending[key] = None
        self._sources.move_to_end(source)
        self.counters["admitted"] += 1
        return Decision(True, tuple(evict))

    def hello(self, key: Hashable, worker_id: int, seat_free: bool, now: float) -> bool:
        """A Hello for ``worker_id`` arrived on ``key``; True if it now holds the id's reserved
        slot (only for a run's id whose seat is free, not yet reserved by another pending
        connection, from a source that is not being throttled, within half its slots)."""
        entry = self._pending.get(key)
        if entry is None or entry.reserved_id is not None:
            return False
        if not (0 <= worker_id < self.n_workers) or not seat_free:
            return False
        holder = self._reserved.get(worker_id)
        if holder is not None and holder in self._pending:
            return False
        src = self._sources[entry.source]
        if src.reserved >= max(1, self.limits.max_pending_per_source // 2):
            return False
        if self._throttle_delay(src, now) > 0:
            return False
        entry.reserved_id = worker_id
        src.reserved += 1
        self._reserved[worker_id] = key
        return True

    def release(self, key: Hashable) -> None:
        """``key`` no longer holds a pre-authentication slot (welcomed, refused or closed)."""
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        src = self._sources.get(entry.source)
        if src is not None:
            src.pending.pop(key, None)
            if entry.reserved_id is not None:
                src.reserved -= 1
            if not src.pending and src.tat == -math.inf:
                del self._sources[entry.source]
        if entry.reserved_id is not None and self._reserved.get(entry.reserved_id) is key:
            del self._reserved[entry.reserved_id]

    def auth_delay(self, source: str, now: float) -> float:
        """Seconds to wait before verifying an Auth from ``source`` (0: at once)."""
        src = self._sources.get(source)
        delay = 0.0 if src is None else self._throttle_delay(src, now)
        if delay > 0:
            self.counters["throttled"] += 1
        return delay

    def auth_failed(self, source: str, now: float) -> None:
        """A credential from ``source`` was refused: charge its failure bucket."""
        self.counters["auth_failed"] += 1
        src = self._source(source)
        interval = 1.0 / self.limits.auth_failure_rate
        src.tat = max(src.tat, now) + interval
        self._sources.move_to_end(source)

    # -- internals ---------------------------------------------------------------------------

    def _throttle_delay(self, src: _Source, now: float) -> float:
        # GCRA: a burst of `auth_failure_burst` failures fits in the tolerance window.
        tolerance = self.limits.auth_failure_burst / self.limits.auth_failure_rate
        return max(0.0, src.tat - tolerance - now)

    def _source(self, source: str) -> _Source:
        src = self._sources.get(source)
        if src is None:
            src = self._sources[source] = _Source()
            self._forget_sources()
        return src

    def _forget_sources(self) -> None:
        """Bound the table: drop the least recently seen sources that hold no connection."""
        excess = len(self._sources) - self.limits.max_sources
        if excess <= 0:
            return
        for name in [n for n, s in self._sources.items() if not s.pending][:excess]:
            del self._sources[name]

    def _oldest_idle(self, src: _Source) -> Hashable | None:
        for key in src.pending:  # insertion order: oldest first
            if self._pending[key].reserved_id is None:
                return key
        return None

    def _refuse(self, reason: str) -> Decision:
        self.counters["refused"] += 1
        return Decision(False, (), reason)


class RateLimitedLog:
    """At most one log line per ``kind`` every ``interval`` seconds; the rest are counted and
    reported with the next line of that kind (a flood must not become a log flood)."""

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = float(interval)
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``kind`` was logged less than ``interval`` s ago."""
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        skipped = self._suppressed.pop(kind, 0)
        if skipped:
            msg += f" (and {skipped} more like it since the last report)"
        self.logger.log(level, msg, *args)
        return True
