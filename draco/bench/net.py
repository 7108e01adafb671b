"""``draco-bench net``: PS-side ingest throughput of one round, project path vs. raw sockets.

    draco-bench net --workers 45 --dim 1033510 --json

A sender process opens ``--workers`` loopback connections and, per round, writes one
``Gradient`` frame (float32 payload of ``--dim`` values, encoded by the project's own
framing) on each. The receiver is this process, measured twice with the SAME bytes:

- ``project``: the parameter server's receive path: ``draco.net.peer.Peer`` (an
  ``asyncio.BufferedProtocol`` on uvloop by default) feeding the sans-IO ``Connection``
  (prefix, bounded msgpack header, tensor bytes straight into their numpy array), then
  ``RoundCollector.offer`` (round/dtype/shape checks; NaN/Inf are left to the decoders),
  exactly as in a run. The handshake is done beforehand in memory, so only ingest is timed.
- ``raw``: a baseline of blocking sockets and ``recv_into`` a preallocated buffer per
  connection, read in the sender's order (no parsing, no event loop: the cheapest receiver).
- ``raw_loop`` (with ``--raw-loop``): the same buffers filled on the project's event loop (an
  ``asyncio.BufferedProtocol`` per connection lending the rest of its buffer, no parsing):
  project / raw_loop is the cost of the project's own receive code, raw_loop / raw the cost
  of the event loop.

One round = time from the "go" sent to the sender until all n payloads are in. Output (one
JSON object): ``project_gbps`` and ``raw_gbps`` (median over ``--repeats`` rounds after one
warm-up round, in GB/s = 1e9 bytes/s), ``ratio`` = project / raw, plus the parameters and the
per-round figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from typing import Any, NamedTuple

import numpy as np

from draco.errors import ConfigError, ProtocolError
from draco.net import messages as m
from draco.net.frames import PROTOCOL_VERSION, Allocate, ArrayPool, Limits, encode_frame
from draco.net.peer import Peer
from draco.net.protocol import Connection, Role
from draco.net.server_state import (
    PAYLOAD_POOL_SLACK,
    handshake_limits,
    payload_limits,
    retain_freed_memory,
)
from draco.ps.collector import RoundCollector, Verdict
from draco.ps.plan import RoundPlan

GB = 1e9


class Sample(NamedTuple):
    """One timed round of one receive path."""

    wall: float  # seconds from "go" until all payloads were in
    cpu: float  # the receiving thread's CPU seconds in that time (kernel time included)
    faults: int  # minor page faults of the receiving process in that time
    offer: float = 0.0  # seconds of it in RoundCollector.offer (the payload checks)


# ----------------------------------------------------------------------------- sender


def _frame(round_index: int, payload: np.ndarray) -> bytes:
    msg = m.Gradient(round_index=round_index, payload=payload, compute_seconds=0.0)
    header, tensors = m.to_wire(msg)
    return b"".join(bytes(c) for c in encode_frame(header, tensors))


def _sender(host: str, port: int, n: int, dim: int, rounds: int, pipe: Pipe) -> None:
    """Child process: n connections; on each "go", one Gradient frame on every connection."""
    payload = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    socks = [socket.create_connection((host, port)) for _ in range(n)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pipe.send("connected")
    for r in range(rounds):
        frame = _frame(r, payload)  # built before "go": only the transfer is timed
        if pipe.recv() != "go":
            break
        for s in socks:
            s.sendall(frame)
    pipe.recv()  # "close"
    for s in socks:
        s.close()


def _start_sender(port: int, n: int, dim: int, rounds: int) -> tuple[mp.process.BaseProcess, Pipe]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_sender, args=("127.0.0.1", port, n, dim, rounds, child))
    proc.start()
    return proc, parent


async def _timed_rounds(
    pipe: Pipe,
    repeats: int,
    arm: Callable[[int], asyncio.Event],
    offer_seconds: Callable[[], float] = lambda: 0.0,
) -> list[Sample]:
    """Rounds on an event-loop receiver once the sender is connected: ``repeats`` timed after
    one untimed warm-up. Per round ``arm(r)`` readies the receiver and returns the event set
    when its last payload is in; then "go" to the sender. ``offer_seconds()`` (called after
    each round; it may raise on ingest errors) fills ``Sample.offer``."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # connected
    times = []
    for r in range(repeats + 1):
        done = arm(r)
        cpu0, faults0 = _cpu_faults()
        t0 = time.perf_counter()
        pipe.send("go")
        await asyncio.wait_for(done.wait(), 120)
        wall = time.perf_counter() - t0
        cpu1, faults1 = _cpu_faults()
        offer = offer_seconds()
        if r:
            times.append(Sample(wall, cpu1 - cpu0, faults1 - faults0, offer))
    pipe.send("close")
    return times


async def _join_sender(proc: mp.process.BaseProcess) -> None:
    await asyncio.get_running_loop().run_in_executor(None, proc.join, 10)
    if proc.is_alive():
        proc.kill()


# ----------------------------------------------------------------------------- raw path


def bench_raw(n: int, dim: int, repeats: int) -> tuple[list[Sample], int]:
    """One sample per timed round of the raw ``recv_into`` receiver, and the bytes per round."""
    frame_bytes = len(_frame(0, np.zeros(dim, np.float32)))
    listener = socket.create_server(("127.0.0.1", 0), backlog=n)
    port = listener.getsockname()[1]
    proc, pipe = _start_sender(port, n, dim, repeats + 1)
    try:
        conns = [listener.accept()[0] for _ in range(n)]
        pipe.recv()  # connected
        bufs = [memoryview(bytearray(frame_bytes)) for _ in range(n)]
        times = []
        for r in range(repeats + 1):
            cpu0, faults0 = _cpu_faults()
            t0 = time.perf_counter()
            pipe.send("go")
            # The sender writes the connections in this order, so reading them one after the
            # other in blocking mode is the cheapest possible receiver: no polling at all.
            for c, buf in zip(conns, bufs, strict=True):
                filled = 0
                while filled < frame_bytes:
                    got = c.recv_into(buf[filled:])
                    if not got:
                        raise ConnectionError("sender closed early")
                    filled += got
            wall = time.perf_counter() - t0
            cpu1, faults1 = _cpu_faults()
            if r:  # round 0 warms up
                times.append(Sample(wall, cpu1 - cpu0, faults1 - faults0))
        pipe.send("close")
        for c in conns:
            c.close()
    finally:
        listener.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return times, n * frame_bytes


# ----------------------------------------------------------------------------- raw on the loop


class _RawReader(asyncio.BufferedProtocol):
    """One connection of the ``raw_loop`` path: lends the rest of its frame buffer, counts
    complete frames, parses nothing."""

    def __init__(self, state: _RawLoopState) -> None:
        self.state = state
        self.buf = memoryview(bytearray(state.frame_bytes))
        self.filled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.state.readers.append(self)
        if len(self.state.readers) == self.state.n:
            self.state.connected.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        if self.filled == self.state.frame_bytes:
            self.filled = 0
            self.state.left -= 1
            if self.state.left == 0:
                self.state.done.set()


class _RawLoopState:
    def __init__(self, n: int, frame_bytes: int) -> None:
        self.n = n
        self.frame_bytes = frame_bytes
        self.readers: list[_RawReader] = []
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.left = n


async def _bench_raw_loop_async(n: int, dim: int, repeats: int) -> list[Sample]:
    loop = asyncio.get_running_loop()
    state = _RawLoopState(n, len(_frame(0, np.zeros(dim, np.float32))))
    server = await loop.create_server(lambda: _RawReader(state), "127.0.0.1", 0, backlog=n)
    port = server.sockets[0].getsockname()[1]
    proc, pipe = _start_sender(port, n, dim, repeats + 1)

    def arm(r: int) -> asyncio.Event:
        state.left, state.done = n, asyncio.Event()
        return state.done

    try:
        await state.connected.wait()
        return await _timed_rounds(pipe, repeats, arm)
    finally:
        server.close()
        await _join_sender(proc)


def bench_raw_loop(n: int, dim: int, repeats: int, loop: str = "uvloop") -> list[Sample]:
    """One sample per timed round of ``recv_into`` on the event loop (no parsing)."""
    from draco.net.eventloop import run_with_loop

    return list(run_with_loop(lambda: _bench_raw_loop_async(n, dim, repeats), loop))


# ----------------------------------------------------------------------------- project path


def ready_server_connection(
    dim: int, payload_dtype: np.dtype, max_header_bytes: int, allocate: Allocate | None = None
) -> Connection:
    """A server-side Connection taken through a real handshake in memory, now READY.

    Only the benchmark uses this (the PS does the handshake on the wire). ``allocate``: the
    decoder's hook, the PS's ``ArrayPool`` in a run.
    """
    srv = Connection(Role.SERVER, handshake_limits(4096), allocate)
    cli = Connection(Role.CLIENT, Limits())

    def pump(dst: Connection, chunks: list[bytes | memoryview]) -> m.Message:
        dst.receive_data(b"".join(bytes(c) for c in chunks))
        ev = dst.next_event()
        assert isinstance(ev, m.Hello | m.Challenge | m.Auth | m.Welcome), ev
        return ev

    pump(srv, cli.send(m.Hello(protocol_version=PROTOCOL_VERSION, worker_id=0)))
    pump(cli, srv.send(m.Challenge(nonce=bytes(32))))
    pump(srv, cli.send(m.Auth(mac=bytes(32))))
    srv.limits = payload_limits(max_header_bytes, dim, payload_dtype)
    pump(cli, srv.send(m.Welcome(config={})))
    return srv


_NO_PARAMS = np.zeros(0, dtype=np.float32)


class _IngestCode:
    """Just enough of a code for the collector: n float32 payloads, ready when all are in."""

    name = "bench"
    n_adversaries = 0
    payload_dtype = np.dtype(np.float32)

    def __init__(self, n: int) -> None:
        self.n_workers = self.n_partitions = n

    def ready(self, received: Any) -> bool:
        return len(received) == self.n_workers

    def decode(self, received: Any, rng: Any = None) -> Any:  # pragma: no cover - unused
        raise NotImplementedError


class _Sink:
    """A PeerHandler that offers each Gradient to the current round, like the PS does."""

    def __init__(self, n: int, dim: int, checks: bool = True) -> None:
        self.code = _IngestCode(n)
        self.checks = checks  # False: count the payloads, no RoundCollector.offer
        self.dim = dim
        self.peers: list[Peer] = []
        self.ids: dict[Peer, int] = {}
        self.round: RoundCollector | None = None
        self.done: asyncio.Event | None = None
        self.connected: asyncio.Event | None = None
        self.errors: list[str] = []
        self.offer_seconds = 0.0  # this round's time in RoundCollector.offer
        self.count = 0  # this round's payloads (checks=False)

    def new_round(self, r: int) -> None:
        self.offer_seconds = 0.0
        self.count = 0
        plan = RoundPlan(r, frozenset(), None, False, 0)
        self.round = RoundCollector(plan, self.code, self.dim)
        self.done = asyncio.Event()
        # A real (empty) RoundStart on every connection: the Connection accepts one Gradient
        # per RoundStart it sent (the round rules). The senders never read it; ~60 bytes each.
        start = m.RoundStart(round_index=r, params=_NO_PARAMS, attack=None, attack_seed=0)
        for peer in self.peers:
            peer.send(start)

    def peer_connected(self, peer: Peer) -> None:
        self.ids[peer] = len(self.peers)
        self.peers.append(peer)
        if len(self.peers) == self.code.n_workers and self.connected is not None:
            self.connected.set()

    def peer_message(self, peer: Peer, msg: m.Message, wire_bytes: int) -> None:
        rnd = self.round
        if not isinstance(msg, m.Gradient) or rnd is None:
            self.errors.append(f"unexpected {type(msg).__name__}")
            return
        if not self.checks:
            self.count += 1
            if self.count == self.code.n_workers and self.done is not None:
                self.done.set()
            return
        t0 = time.perf_counter()
        offer = rnd.offer(self.ids[peer], msg.round_index, msg.payload, 0.0, wire_bytes)
        self.offer_seconds += time.perf_counter() - t0
        if offer.verdict is not Verdict.ACCEPTED:
            self.errors.append(offer.reason)
        if rnd.should_close and self.done is not None:
            self.done.set()

    def peer_violation(self, peer: Peer, exc: ProtocolError) -> None:
        self.errors.append(str(exc))
        peer.abort()

    def peer_lost(self, peer: Peer) -> None:
        pass


def _cpu_faults() -> tuple[float, int]:
    """(this thread's CPU seconds, this process's minor page faults so far)."""
    return time.thread_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def _bench_project_async(n: int, dim: int, repeats: int, checks: bool) -> list[Sample]:
    loop = asyncio.get_running_loop()
    retain_freed_memory()  # what ParameterServer.start() does
    sink = _Sink(n, dim, checks)
    sink.connected = asyncio.Event()
    dtype = np.dtype(np.float32)
    pool = ArrayPool((n + PAYLOAD_POOL_SLACK) * dim * dtype.itemsize)  # as ParameterServer
    server = await loop.create_server(
        lambda: Peer(sink, ready_server_connection(dim, dtype, 64 * 1024, pool)),
        "127.0.0.1",
        0,
        backlog=n,
    )
    port = server.sockets[0].getsockname()[1]
    proc, pipe = _start_sender(port, n, dim, repeats + 1)

    def arm(r: int) -> asyncio.Event:
        sink.new_round(r)
        assert sink.done is not None
        return sink.done

    def offer_seconds() -> float:
        if sink.errors:
            raise RuntimeError(f"ingest errors: {sink.errors[:3]}")
        return sink.offer_seconds

    try:
        await sink.connected.wait()
        return await _timed_rounds(pipe, repeats, arm, offer_seconds)
    finally:
        for peer in sink.peers:
            peer.abort()
        server.close()
        await _join_sender(proc)


def bench_project(
    n: int, dim: int, repeats: int, loop: str = "uvloop", checks: bool = True
) -> list[Sample]:
    """One sample per timed round through the project's server receive path.

    ``checks=False`` leaves out ``RoundCollector.offer`` (the payload checks): the framing
    and receive machinery alone, for attributing the difference to the raw path.
    """
    from draco.net.eventloop import run_with_loop

    return list(run_with_loop(lambda: _bench_project_async(n, dim, repeats, checks), loop))


# ----------------------------------------------------------------------------- command


def _sig(x: float) -> float:
    return float(f"{x:.6g}")  # 6 significant digits: tiny test sizes keep their ratio


def _summary(samples: list[Sample], nbytes: int) -> dict[str, Any]:
    return {
        "gbps": nbytes / statistics.median(s.wall for s in samples) / GB,
        "cpu_ms": 1e3 * statistics.median(s.cpu for s in samples),
        "minflt": statistics.median(s.faults for s in samples),
        "offer_ms": 1e3 * statistics.median(s.offer for s in samples),
    }


def _one_trial(
    t: int, n: int, dim: int, repeats: int, loop: str, checks: bool, raw_loop: bool
) -> tuple[dict[str, Any], list[Sample], list[Sample], list[Sample], int]:
    """Trial ``t`` of ``measure``: raw and project (and raw on the loop), the order
    alternating with ``t``. Returns (the trial's figures, raw, project and on-loop samples,
    bytes per round)."""
    loop_times: list[Sample] = []
    if raw_loop and t % 2 == 1:
        loop_times = bench_raw_loop(n, dim, repeats, loop)
    if t % 2 == 0:
        raw_times, nbytes = bench_raw(n, dim, repeats)
        project_times = bench_project(n, dim, repeats, loop, checks)
    else:
        project_times = bench_project(n, dim, repeats, loop, checks)
        raw_times, nbytes = bench_raw(n, dim, repeats)
    if raw_loop and t % 2 == 0:
        loop_times = bench_raw_loop(n, dim, repeats, loop)
    raw, project = _summary(raw_times, nbytes), _summary(project_times, nbytes)
    extra: dict[str, Any] = {}
    if loop_times:
        on_loop = _summary(loop_times, nbytes)
        extra = {
            "ratio_vs_raw_loop": round(project["gbps"] / on_loop["gbps"], 4),
            "raw_loop_gbps": _sig(on_loop["gbps"]),
            "raw_loop_cpu_ms": round(on_loop["cpu_ms"], 3),
        }
    trial = {
        "ratio": round(project["gbps"] / raw["gbps"], 4),
        "project_gbps": _sig(project["gbps"]),
        "raw_gbps": _sig(raw["gbps"]),
        "project_cpu_ms": round(project["cpu_ms"], 3),
        "raw_cpu_ms": round(raw["cpu_ms"], 3),
        "project_minflt": project["minflt"],
        "project_offer_ms": round(project["offer_ms"], 3),
        "raw_minflt": raw["minflt"],
        **extra,
    }
    return trial, raw_times, project_times, loop_times, nbytes


def measure(
    n: int,
    dim: int,
    repeats: int,
    loop: str = "uvloop",
    trials: int = 1,
    checks: bool = True,
    raw_loop: bool = False,
) -> dict[str, Any]:
    """Both paths, same bytes; ``trials`` times, alternating which path goes first.

    Each trial is a raw measurement and a project measurement (``repeats`` timed rounds
    each, fresh sender processes); its ratio is project / raw of the median round times.
    Alternating the order cancels a load that drifts during the run. ``raw_loop``: a third
    measurement per trial, raw ``recv_into`` on the event loop (first or last, alternating).
    """
    if n < 1 or dim < 1 or repeats < 1 or trials < 1:
        raise ConfigError(
            "--workers, --dim, --repeats and --trials must be >= 1, got "
            f"{n}, {dim}, {repeats}, {trials}"
        )
    load_before = os.getloadavg()
    per_trial: list[dict[str, Any]] = []
    raw_all: list[Sample] = []
    project_all: list[Sample] = []
    nbytes = 0
    loop_all: list[Sample] = []
    for t in range(trials):
        trial, raw_times, project_times, loop_times, nbytes = _one_trial(
            t, n, dim, repeats, loop, checks, raw_loop
        )
        per_trial.append(trial)
        raw_all += raw_times
        project_all += project_times
        loop_all += loop_times
    ratios = [tr["ratio"] for tr in per_trial]

    def med(key: str) -> float:
        return round(statistics.median(tr[key] for tr in per_trial), 4)

    on_loop_summary: dict[str, Any] = {}
    if raw_loop:
        on_loop_summary = {
            "raw_loop_gbps": _sig(statistics.median(tr["raw_loop_gbps"] for tr in per_trial)),
            "ratio_vs_raw_loop": med("ratio_vs_raw_loop"),
            "raw_loop_cpu_ms_per_round": med("raw_loop_cpu_ms"),
            "raw_loop_seconds": [round(s.wall, 6) for s in loop_all],
        }
    return {
        "benchmark": "net",
        "project_gbps": _sig(statistics.median(tr["project_gbps"] for tr in per_trial)),
        "raw_gbps": _sig(statistics.median(tr["raw_gbps"] for tr in per_trial)),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratios": ratios,
        # The receiving thread's CPU time and the process's minor page faults per round
        # (medians): less sensitive to other load than the wall-clock throughput.
        "project_cpu_ms_per_round": med("project_cpu_ms"),
        "raw_cpu_ms_per_round": med("raw_cpu_ms"),
        "project_minflt_per_round": med("project_minflt"),
        # Of the project's receiver time per round: RoundCollector.offer (round, dtype and
        # shape checks; it no longer reads the values), which the raw path does not do.
        "project_offer_ms_per_round": med("project_offer_ms"),
        "raw_minflt_per_round": med("raw_minflt"),
        "unit": "GB/s (1e9 bytes per second), median over repeats, then over trials",
        "workers": n,
        "dim": dim,
        "dtype": "float32",
        "bytes_per_round": nbytes,
        "repeats": repeats,
        "trials": trials,
        "payload_checks": checks,
        "loop": loop,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "per_trial": per_trial,
        "project_seconds": [round(s.wall, 6) for s in project_all],
        "raw_seconds": [round(s.wall, 6) for s in raw_all],
        **on_loop_summary,
    }


def run(args: argparse.Namespace) -> int:
    if getattr(args, "vote", None) is not None:
        from draco.bench import vote

        return vote.run(args)
    result = measure(
        args.workers,
        args.dim,
        args.repeats,
        args.loop,
        args.trials,
        not args.no_payload_checks,
        args.raw_loop,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"PS ingest of {args.workers} x {args.dim} float32 over loopback: "
            f"project {result['project_gbps']:.2f} GB/s, raw recv_into "
            f"{result['raw_gbps']:.2f} GB/s, ratio {result['ratio']:.2f} "
            f"(median of {args.trials} trials, {result['ratio_min']:.2f}-"
            f"{result['ratio_max']:.2f}); receiver CPU per round "
            f"{result['project_cpu_ms_per_round']:.1f} ms vs "
            f"{result['raw_cpu_ms_per_round']:.1f} ms"
        )
        if args.raw_loop:
            print(
                f"raw recv_into on the {args.loop} loop: {result['raw_loop_gbps']:.2f} GB/s, "
                f"project / that {result['ratio_vs_raw_loop']:.2f}, receiver CPU per round "
                f"{result['raw_loop_cpu_ms_per_round']:.1f} ms"
            )
        print(json.dumps(result))
    return 0
