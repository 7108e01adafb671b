"""The asyncio parameter server over real 127.0.0.1 sockets, with fake workers driven through
the sans-IO client ``Connection`` (no draco-worker process, no torch: the lstsq task)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from draco.core.attacks import make_attack
from draco.core.codes import make_code
from draco.net import auth
from draco.net import messages as m
from draco.net.frames import MAGIC, PREFIX, PROTOCOL_VERSION, Limits, encode_frame
from draco.net.protocol import CLOSED, NEED_DATA, Connection, Role
from draco.net.server import EXIT_DIVERGED, ParameterServer
from draco.ps.config import PSConfig, ServerLimits
from draco.ps.engine import RoundEngine
from draco.ps.optim import SGD, SGDConfig
from draco.ps.record import RoundRecord
from draco.tasks.lstsq import LeastSquaresTask

DIM = 8
SECRET = bytes(range(32))
TIMEOUT = 20.0  # a hung test fails instead of blocking


def token(j: int) -> bytes:
    return auth.derive_token(SECRET, j)


class Recorder:
    def __init__(self, on_round: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.on_round = on_round

    def round_done(self, record: RoundRecord, engine: RoundEngine) -> None:
        self.records.append(record.metrics())  # the round's fields of its metrics line
        if self.on_round is not None:
            self.on_round(self.records[-1])


def make_server(
    n: int = 4,
    s: int = 1,
    code_name: str = "repetition",
    rounds: int = 3,
    attack: str | None = None,
    hooks: Any = None,
    ssl_context: Any = None,
    vote: str = "full",
    digest: Any = None,
    **cfg: Any,
) -> tuple[ParameterServer, LeastSquaresTask]:
    options = {"aggregator": "mean"} if code_name == "none" else {}
    code = make_code(code_name, n, s, **options)
    task = LeastSquaresTask(DIM, code.n_partitions, 4, seed=1)
    cfg.setdefault("round_timeout", 10.0)
    cfg.setdefault("join_timeout", 10.0)
    cfg.setdefault("shutdown_grace", 2.0)
    config = PSConfig(
        n_workers=n,
        n_adversaries=s,
        code=code_name,
        aggregator="mean" if code_name == "none" else None,
        attack=attack,
        rounds=rounds,
        port=0,
        task=task.spec(),
        **cfg,
    )
    engine = RoundEngine(
        code,
        task.initial_params(),
        SGD(SGDConfig(lr=0.05), task.dim),
        rounds=rounds,
        attack=None if attack is None else make_attack(attack),
        max_failed_rounds=config.max_failed_rounds,
        decode_rng=lambda: np.random.default_rng(0),
        vote=vote,
        digest=digest,
    )
    server = ParameterServer(
        config,
        task_spec=task.spec(),
        code=code,
        engine=engine,
        secret=SECRET,
        hooks=hooks,
        ssl_context=ssl_context,
    )
    return server, task


class Client:
    """A fake worker: asyncio streams + the sans-IO client Connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = Connection(Role.CLIENT, Limits())

    @classmethod
    async def connect(cls, server: ParameterServer, **kw: Any) -> Client:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address, **kw)
        return cls(reader, writer)

    def send(self, msg: m.Message) -> None:
        self.writer.writelines(self.conn.send(msg))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self) -> Any:
        """Next message, or CLOSED at EOF / reset."""
        while True:
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                return ev
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT)
            except ConnectionError:
                data = b""
            self.conn.receive_data(data)

    async def eof(self) -> bool:
        """True once the server closed the connection (whatever it sent before)."""
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT):
                pass
        return True

    async def handshake(self, j: int, tok: bytes | None = None, claim: int | None = None) -> Any:
        claim = j if claim is None else claim
        self.send(m.Hello(protocol_version=PROTOCOL_VERSION, worker_id=claim))
        ch = await self.recv()
        assert isinstance(ch, m.Challenge)
        self.send(m.Auth(mac=auth.handshake_mac(tok or token(j), ch.nonce, claim)))
        return await self.recv()

    def close(self) -> None:
        self.writer.close()


def worker_payload(task: LeastSquaresTask, code: Any, j: int, ev: m.RoundStart, cfg: Any) -> Any:
    """Worker j's answer to ``ev`` as a real worker computes it: encoded gradients, then the
    scheduled attack (if any) from its seed."""
    g = task.partition_gradients(ev.params, ev.round_index, cfg["partitions"])
    y = code.encode(j, g)
    if ev.attack is not None:
        rng = np.random.default_rng(ev.attack_seed)
        y = make_attack(ev.attack).apply(
            y, rng=rng, n_workers=cfg["n_workers"], n_adversaries=cfg["n_adversaries"]
        )
    return y


async def honest_worker(
    server: ParameterServer,
    task: LeastSquaresTask,
    j: int,
    *,
    misbehave: Callable[[int, np.ndarray], Any] | None = None,
    delay: float = 0.0,
    nan: bool = False,
    offset: float = 0.0,
) -> int:
    """Serve rounds until Bye; ``misbehave(t, y)`` may return a replacement (msg or bytes);
    ``nan`` answers every RoundStart with a NaN payload (an erasure), ``offset`` with the
    honest payload plus ``offset`` (a finite lie)."""
    client = await Client.connect(server)
    welcome = await client.handshake(j)
    assert isinstance(welcome, m.Welcome), welcome
    cfg = welcome.config
    code = make_code(cfg["code"], cfg["n_workers"], cfg["n_adversaries"], **cfg["code_options"])
    rounds = 0
    while True:
        ev = await client.recv()
        if ev is CLOSED or isinstance(ev, m.Bye | m.Error):
            client.close()
            return rounds
        assert isinstance(ev, m.RoundStart)
        y = worker_payload(task, code, j, ev, cfg)
        if nan:
            y = y * np.nan
        y = y + np.float32(offset) if offset else y
        out: Any = m.Gradient(
            round_index=ev.round_index, payload=y, compute_seconds=0.001, attempt=ev.attempt
        )
        if misbehave is not None:
            out = misbehave(ev.round_index, y)
        if delay:
            await asyncio.sleep(delay)
        if isinstance(out, bytes):
            client.send_raw(out)
        elif out is not None:
            client.send(out)
        rounds += 1


@contextlib.asynccontextmanager
async def running(server: ParameterServer) -> Any:
    await server.start()
    try:
        yield
    finally:
        await server.shutdown("test over")


# ----------------------------------------------------------------------------- handshake


async def test_handshake_ok_and_welcome_config() -> None:
    server, task = make_server()
    async with running(server):
        c = await Client.connect(server)
        welcome = await c.handshake(2)
        assert isinstance(welcome, m.Welcome)
        cfg = welcome.config
        assert cfg["worker_id"] == 2 and cfg["n_workers"] == 4 and cfg["n_adversaries"] == 1
        assert cfg["code"] == "repetition" and cfg["payload_dtype"] == "<f4"
        assert cfg["dim"] == DIM and cfg["task"] == task.spec() and cfg["seed"] == 0
        assert list(cfg["partitions"]) == list(server.code.partitions_of(2))
        code = make_code(cfg["code"], 4, 1, **cfg["code_options"])
        assert code.partitions_of(2) == server.code.partitions_of(2)
        assert server.seats[2].worker_id == 2
        c.close()


async def test_wrong_mac_refused() -> None:
    server, _ = make_server()
    async with running(server):
        c = await Client.connect(server)
        reply = await c.handshake(1, tok=b"x" * 32)
        assert isinstance(reply, m.Error) and reply.code == "auth_failed"
        assert await c.eof()
        assert server.seats == {}


async def test_spoofed_id_refused() -> None:
    """Worker 1's valid token does not open worker 2's seat."""
    server, _ = make_server()
    async with running(server):
        c = await Client.connect(server)
        reply = await c.handshake(1, tok=token(1), claim=2)
        assert isinstance(reply, m.Error) and reply.code == "auth_failed"
        assert await c.eof()
        out_of_range = await Client.connect(server)
        reply = await out_of_range.handshake(9)  # a token from this secret, but no such seat
        assert isinstance(reply, m.Error) and reply.code == "auth_failed"
        assert server.seats == {}


async def test_occupied_seat_refused() -> None:
    server, _ = make_server()
    async with running(server):
        first = await Client.connect(server)
        assert isinstance(await first.handshake(3), m.Welcome)
        second = await Client.connect(server)
        reply = await second.handshake(3)
        assert isinstance(reply, m.Error) and reply.code == "seat_taken"
        assert await second.eof()
        assert server.seats[3].conn is not None and not server.seats[3].closed
        # After the holder leaves, the seat is free again (reconnect).
        first.close()
        for _ in range(100):
            if 3 not in server.seats:
                break
            await asyncio.sleep(0.01)
        third = await Client.connect(server)
        assert isinstance(await third.handshake(3), m.Welcome)
        third.close()


async def test_handshake_timeout_enforced() -> None:
    server, _ = make_server(handshake_timeout=0.2)
    async with running(server):
        c = await Client.connect(server)
        c.send(m.Hello(protocol_version=PROTOCOL_VERSION, worker_id=0))
        assert isinstance(await c.recv(), m.Challenge)
        reply = await c.recv()  # ... and never answer the challenge
        assert isinstance(reply, m.Error) and reply.code == "timeout"
        assert await c.eof()
        silent = await Client.connect(server)  # never says anything
        assert await silent.eof()


async def test_pending_handshakes_are_bounded_and_the_oldest_idle_makes_room() -> None:
    server, _ = make_server(limits=ServerLimits(max_pending_handshakes=2))
    async with running(server):
        a, b = await Client.connect(server), await Client.connect(server)
        await asyncio.sleep(0.05)
        c = await Client.connect(server)
        assert await a.eof()  # the oldest idle connection was evicted for the newest
        assert isinstance(await c.handshake(0), m.Welcome)
        assert server.admission.counters["evicted"] == 1
        b.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_handshake_and_plain_tcp_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server, _ = make_server(ssl_context=auth.server_ssl_context(cert, key))
    async with running(server):
        ctx = auth.client_ssl_context(ca=cert)
        c = await Client.connect(server, ssl=ctx, server_hostname="127.0.0.1")
        assert isinstance(await c.handshake(0), m.Welcome)
        plain = await Client.connect(server)
        plain.send(m.Hello(protocol_version=PROTOCOL_VERSION, worker_id=1))
        assert await plain.eof()  # not a TLS ClientHello: dropped
        c.close()


# ----------------------------------------------------------------------------- hostile bytes


def _gradient_frame(t: int, payload: np.ndarray) -> bytes:
    header, tensors = m.to_wire(m.Gradient(round_index=t, payload=payload, compute_seconds=0.0))
    return b"".join(bytes(c) for c in encode_frame(header, tensors))


async def test_pre_auth_tensor_frame_rejected() -> None:
    server, _ = make_server()
    async with running(server):
        c = await Client.connect(server)
        c.send_raw(_gradient_frame(0, np.zeros(DIM, np.float32)))
        reply = await c.recv()
        assert isinstance(reply, m.Error) and reply.code == "protocol_error"
        assert await c.eof()
        assert server.seats == {} and server.refused >= 1


async def test_oversized_frames_rejected() -> None:
    server, _ = make_server()
    async with running(server):
        # Before auth: a header far beyond the handshake bound.
        c = await Client.connect(server)
        c.send_raw(PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 10**6, 0, 0))
        assert await c.eof()
        # After auth: one byte more tensor data than one payload.
        c = await Client.connect(server)
        assert isinstance(await c.handshake(0), m.Welcome)
        c.send_raw(PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 16, DIM * 4 + 1, 1) + b"\x80" * 16)
        assert await c.eof()
        assert 0 not in server.seats


async def test_garbage_bytes_close_the_connection_and_the_server_goes_on() -> None:
    server, _ = make_server()
    async with running(server):
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4, b"\x00" * 24):
            c = await Client.connect(server)
            c.send_raw(junk)
            assert await c.eof()
        # A raw socket that connects and resets at once.
        assert server.address is not None
        with socket.create_connection(server.address) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        good = await Client.connect(server)
        assert isinstance(await good.handshake(1), m.Welcome)
        good.close()


# ----------------------------------------------------------------------------- rounds


async def test_full_run_with_liars_equals_clean_engine_run() -> None:
    """7 fake workers, repetition s=1, constant attack: same model as a clean engine run."""
    rec = Recorder()
    server, task = make_server(n=7, s=1, rounds=5, attack="constant", hooks=rec)
    await server.start()
    workers = [asyncio.create_task(honest_worker(server, task, j)) for j in range(7)]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    done = await asyncio.wait_for(asyncio.gather(*workers), TIMEOUT)
    assert outcome.completed and outcome.exit_code == 0
    assert all(d >= 1 for d in done)
    assert [r["round"] for r in rec.records] == list(range(5))
    for r in rec.records:
        assert not r["failed"] and len(r["liars"]) == 1
        assert set(r["adversaries_located"]) <= set(r["liars"])
        assert r["bytes_in"] > 0 and r["bytes_out"] > 0
    # Payloads after the first rounds landed in earlier rounds' buffers (ArrayPool), and the
    # model below is still the clean run's: no buffer was reused while in use.
    assert server.payload_pool.reused >= 7 * 3
    # The clean run, computed without any network.
    code = make_code("repetition", 7, 1)
    w = task.initial_params()
    sgd = SGD(SGDConfig(lr=0.05), DIM)
    for t in range(5):
        total = task.partition_gradients(w, t, range(7)).sum(axis=0, dtype=np.float32)
        w = sgd.step(w, total / np.float32(code.n_partitions))
    np.testing.assert_allclose(server.engine.params, w, rtol=1e-6, atol=1e-7)


async def test_cyclic_rounds_account_the_ps_cpu_of_the_loop_and_the_ready_checks() -> None:
    """Cyclic code over real sockets: pooled complex payloads decode to the clean model, and
    each record splits the loop's CPU (user/system) and counts the off-loop ready checks."""
    rec = Recorder()
    server, task = make_server(n=7, s=1, code_name="cyclic", rounds=4, hooks=rec)
    await server.start()
    workers = [asyncio.create_task(honest_worker(server, task, j)) for j in range(7)]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*workers), TIMEOUT)
    assert outcome.completed and len(rec.records) == 4
    assert server.payload_pool.reused > 0
    for r in rec.records:
        parts = r["decode_cpu_seconds"] + r["loop_cpu_seconds"] + r["ready_cpu_seconds"]
        assert r["ps_cpu_seconds"] == pytest.approx(parts)
        split = r["loop_user_cpu_seconds"] + r["loop_sys_cpu_seconds"]
        # Two clocks of the same thread (rusage is tick-apportioned): close, not equal.
        assert split == pytest.approx(r["loop_cpu_seconds"], abs=0.02, rel=0.25)
        assert r["loop_minor_faults"] >= 0 and r["ready_cpu_seconds"] >= 0.0
    code = make_code("cyclic", 7, 1)
    w = task.initial_params()
    sgd = SGD(SGDConfig(lr=0.05), DIM)
    for t in range(4):
        total = task.partition_gradients(w, t, range(code.n_partitions)).sum(axis=0)
        w = sgd.step(w, (total / np.float32(code.n_partitions)).astype(np.float32))
    np.testing.assert_allclose(server.engine.params, w, rtol=1e-4, atol=1e-5)


async def test_bad_gradients_are_erasures_and_the_run_completes() -> None:
    """Code 'none' (waits for all): NaN, wrong round, wrong shape, late payloads."""
    rec = Recorder()
    server, task = make_server(n=4, s=1, code_name="none", rounds=5, hooks=rec, round_timeout=1.0)

    def bad(t: int, y: np.ndarray) -> Any:
        if t == 0:
            return m.Gradient(
                round_index=0, payload=np.full(DIM, np.nan, np.float32), compute_seconds=0
            )
        if t == 1:
            return None  # late: never arrives before the deadline
        if t == 2:
            return m.Gradient(round_index=2, payload=y.astype(np.complex64), compute_seconds=0)
        return m.Gradient(round_index=t, payload=y, compute_seconds=0)

    await server.start()
    honest = [asyncio.create_task(honest_worker(server, task, j)) for j in range(3)]
    liar = asyncio.create_task(honest_worker(server, task, 3, misbehave=bad))
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*honest), TIMEOUT)
    await asyncio.wait_for(liar, TIMEOUT)  # its connection was closed for the wrong dtype
    assert outcome.completed
    by_round = {r["round"]: r for r in rec.records}
    assert by_round[0]["erasures"] == [3]  # NaN: erasure, connection kept
    assert by_round[1]["erasures"] == [3]  # late
    assert by_round[2]["erasures"] == [3]  # wrong dtype: violation, disconnected
    assert by_round[3]["erasures"] == [3] and by_round[4]["erasures"] == [3]  # gone
    assert all(not r["failed"] for r in rec.records)


async def test_wrong_round_and_duplicates_close_the_connection() -> None:
    rec = Recorder()
    server, task = make_server(n=4, s=1, code_name="none", rounds=2, hooks=rec, round_timeout=1.0)

    def future_round(t: int, y: np.ndarray) -> Any:
        # Raw bytes: the worker's own Connection would refuse to send it (the round rules).
        return _gradient_frame(t + 1, y)

    def duplicate(t: int, y: np.ndarray) -> Any:
        return _gradient_frame(t, y) * 2

    await server.start()
    tasks = [asyncio.create_task(honest_worker(server, task, j)) for j in range(2)]
    tasks.append(asyncio.create_task(honest_worker(server, task, 2, misbehave=future_round)))
    tasks.append(asyncio.create_task(honest_worker(server, task, 3, misbehave=duplicate)))
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.completed
    # Worker 3's first payload may close round 0 before its duplicate is read; either way
    # the duplicate closes its connection, so it is gone in round 1.
    assert set(rec.records[0]["erasures"]) >= {2}
    assert rec.records[1]["erasures"] == [2, 3]


async def test_too_many_messages_in_a_round_is_a_violation() -> None:
    rec = Recorder()
    server, task = make_server(
        n=4,
        code_name="none",
        rounds=3,
        hooks=rec,
        round_timeout=1.0,
        limits=ServerLimits(max_messages_per_round=2),
    )

    def flood(t: int, y: np.ndarray) -> Any:
        if t < 2:
            return m.Gradient(round_index=t, payload=y, compute_seconds=0)
        return _gradient_frame(0, y) * 3  # stale, harmless one by one; but 3 in one round

    await server.start()
    tasks = [asyncio.create_task(honest_worker(server, task, j)) for j in range(3)]
    tasks.append(asyncio.create_task(honest_worker(server, task, 3, misbehave=flood)))
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.completed
    assert [r["erasures"] for r in rec.records] == [[], [], [3]]


async def test_failed_attempts_with_every_worker_connected_stop_the_run() -> None:
    rec = Recorder()
    server, task = make_server(
        n=3, s=1, rounds=5, hooks=rec, round_timeout=0.3, max_failed_rounds=2
    )
    await server.start()
    w0 = server.engine.params.copy()
    tasks = [asyncio.create_task(honest_worker(server, task, 0))]
    # Workers 1 and 2 answer every attempt, one with NaN (an erasure), one with a finite lie:
    # no two agree, honestly tried. (Two NaN payloads at s = 1 would be a diverged model,
    # which ends the run at its first attempt: test_nonfinite_payloads.py.)
    tasks.append(asyncio.create_task(honest_worker(server, task, 1, nan=True)))
    tasks.append(asyncio.create_task(honest_worker(server, task, 2, offset=1.0)))
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.exit_code == 1 and "--max-failed-rounds 2" in outcome.reason
    # One record for the round, with its attempts: the same round was retried.
    assert [(r["round"], r["failed"], r["attempts"]) for r in rec.records] == [(0, True, 2)]
    assert server.engine.params.tobytes() == w0.tobytes()


async def test_a_diverged_model_ends_the_run_at_its_first_attempt() -> None:
    """Every worker answers NaN (what honest workers compute from a diverged model): more
    non-finite payloads than s liars can send. A retry would recompute the same NaN, so the
    run ends at once with exit status 3 (EXIT_DIVERGED), the model untouched."""
    rec = Recorder()
    server, task = make_server(
        n=3, s=1, rounds=5, hooks=rec, round_timeout=0.3, max_failed_rounds=5
    )
    await server.start()
    w0 = server.engine.params.copy()
    tasks = [asyncio.create_task(honest_worker(server, task, j, nan=True)) for j in range(3)]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.exit_code == EXIT_DIVERGED and outcome.diverged
    assert "round 0" in outcome.reason and "diverged" in outcome.reason
    assert [(r["round"], r["failed"], r["attempts"]) for r in rec.records] == [(0, True, 1)]
    assert server.engine.params.tobytes() == w0.tobytes()


async def test_missing_workers_are_waited_for_with_backoff_then_the_run_stops() -> None:
    rec = Recorder()
    server, task = make_server(
        n=3, s=1, rounds=5, hooks=rec, round_timeout=0.3, join_timeout=0.3, rejoin_timeout=1.5,
        max_failed_rounds=1,
    )  # fmt: skip
    await server.start()
    silent = lambda t, y: None  # noqa: E731 - connected, never answers (frozen, say)
    tasks = [asyncio.create_task(honest_worker(server, task, 0))]  # 1 of 3: below the budget
    tasks.append(asyncio.create_task(honest_worker(server, task, 1, misbehave=silent)))
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    # Not --max-failed-rounds 1: attempts without the workers are not honest attempts.
    assert outcome.exit_code == 1 and "--rejoin-timeout 1.5" in outcome.reason
    assert "workers [2] are not connected" in outcome.reason
    assert "workers [1] have not answered this round yet" in outcome.reason
    assert "no answer to any came" in outcome.reason  # the deadline was hit, nobody late
    [record] = rec.records
    # Backoff 0.25, 0.5, 1 s: a handful of attempts in 1.5 s, not a hot loop.
    assert record["failed"] and 3 <= record["attempts"] <= 6, record


async def test_a_round_heals_when_the_missing_workers_rejoin() -> None:
    rec = Recorder()
    server, task = make_server(
        n=3, s=1, rounds=3, hooks=rec, round_timeout=0.3, join_timeout=0.3, max_failed_rounds=1
    )
    await server.start()

    async def late(j: int) -> int:
        await asyncio.sleep(1.0)
        return await honest_worker(server, task, j)

    tasks = [asyncio.create_task(honest_worker(server, task, 0))]
    tasks += [asyncio.create_task(late(j)) for j in (1, 2)]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.completed, outcome.reason
    assert [r["round"] for r in rec.records] == [0, 1, 2]  # one record per round
    assert rec.records[0]["attempts"] >= 2 and not rec.records[0]["failed"]
    assert "retry_error" in rec.records[0]
    assert server.engine.totals.failed_rounds == rec.records[0]["attempts"] - 1


async def test_a_round_timeout_shorter_than_the_round_is_reported_with_the_measurement() -> None:
    rec = Recorder()
    server, task = make_server(
        n=3, s=1, rounds=3, hooks=rec, round_timeout=0.2, max_failed_rounds=3
    )
    await server.start()
    # Every answer comes 0.5 s after its RoundStart: later than the deadline, every attempt.
    tasks = [asyncio.create_task(honest_worker(server, task, j, delay=0.5)) for j in range(3)]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.exit_code == 1
    assert "--round-timeout 0.2 s" in outcome.reason and "raise --round-timeout" in outcome.reason
    assert server.refused == 0  # the late answers to failed attempts were never violations


async def test_a_backlog_answered_after_a_pause_is_late_not_a_violation() -> None:
    rec = Recorder()
    server, task = make_server(n=5, s=1, rounds=10, hooks=rec)  # one group: 2 copies suffice
    await server.start()
    answered: list[tuple[int, int]] = []

    async def lazy() -> Any:
        c = await Client.connect(server)
        assert isinstance(await c.handshake(4), m.Welcome)
        code = make_code("repetition", 5, 1)
        backlog: list[m.RoundStart] = []
        while True:
            ev = await c.recv()
            if ev is CLOSED or isinstance(ev, m.Bye | m.Error):
                c.close()
                return ev
            backlog.append(ev)
            if len(backlog) < 6 and ev.round_index < 9:
                continue  # "paused": the rounds go on without us
            for rs in backlog:  # then every missed round answered, back to back
                y = code.encode(
                    4, task.partition_gradients(rs.params, rs.round_index, [0, 1, 2, 3, 4])
                )
                c.send(m.Gradient(rs.round_index, y, 0.0, attempt=rs.attempt))
                answered.append((rs.round_index, rs.attempt))
            backlog.clear()

    # The others answer 0.1 s after each RoundStart, so the backlog (answered back to back,
    # within a few ms) lands inside one round, after one RoundStart.
    tasks = [asyncio.create_task(honest_worker(server, task, j, delay=0.1)) for j in range(4)]
    lazy_task = asyncio.create_task(lazy())
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    last = await asyncio.wait_for(lazy_task, TIMEOUT)
    assert outcome.completed
    assert len(answered) >= 6  # more than max_messages_per_round (4) in one go
    assert isinstance(last, m.Bye) and server.refused == 0  # not kicked


async def test_a_round_close_to_its_deadline_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    server, task = make_server(n=3, s=1, rounds=2, hooks=rec, round_timeout=0.5)
    await server.start()
    tasks = [asyncio.create_task(honest_worker(server, task, j, delay=0.3)) for j in range(3)]
    with caplog.at_level("WARNING", logger="draco.ps"):
        outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.completed
    warnings = [r.message for r in caplog.records if "of --round-timeout 0.5 s" in r.message]
    assert len(warnings) == 1, warnings  # rate-limited: once for the two rounds


async def test_no_worker_joined_is_a_failed_run() -> None:
    server, _ = make_server(join_timeout=0.2)
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    assert outcome.exit_code == 1 and "join" in outcome.reason


async def test_a_worker_reconnects_and_rejoins_at_the_next_round() -> None:
    reconnected = asyncio.Event()
    rec = Recorder()
    server, task = make_server(n=4, s=1, code_name="none", rounds=4, hooks=rec, round_timeout=2.0)

    async def flaky() -> None:
        c = await Client.connect(server)
        assert isinstance(await c.handshake(3), m.Welcome)
        ev = await c.recv()
        assert isinstance(ev, m.RoundStart) and ev.round_index == 0
        c.close()  # drops out in round 0 without answering
        reconnected.set()
        await honest_worker(server, task, 3)

    await server.start()
    # The others take 0.1 s per round, so the run is still going when worker 3 is back.
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(honest_worker(server, task, j, delay=0.1)) for j in range(3)
    ]
    tasks.append(asyncio.create_task(flaky()))
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert outcome.completed and reconnected.is_set()
    assert rec.records[0]["erasures"] == [3]
    assert rec.records[-1]["erasures"] == []  # back in a later round


async def test_stop_request_sends_bye_and_exits_nonzero() -> None:
    server, task = make_server(n=4, code_name="none", rounds=1000)

    rec = Recorder(on_round=lambda r: server.request_stop("stopped by SIGTERM", 143))
    server.hooks = rec
    await server.start()
    tasks = [asyncio.create_task(honest_worker(server, task, j)) for j in range(4)]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)  # all saw Bye and ended
    assert outcome.exit_code == 143 and not outcome.completed
    assert len(rec.records) == 1 and all(r >= 1 for r in results)
    assert server.peers == set()


# ----------------------------------------------------------------------------- draco-ps serve()


def _ps_config(tmp_path: Path, run_dir: Path, **kw: Any) -> PSConfig:
    secret = tmp_path / "ps.secret"
    if not secret.exists():
        auth.write_secret(secret, SECRET)
    task = LeastSquaresTask(DIM, 5, 4, seed=2).spec()
    base = PSConfig(
        n_workers=5,
        n_adversaries=1,
        code="repetition",
        attack="reverse",
        rounds=6,
        port=0,
        task=task,
        run_dir=run_dir,
        secret_file=secret,
        eval_every=2,
        checkpoint_every=2,
        round_timeout=0.5,
        join_timeout=10.0,
        max_failed_rounds=1,
        rejoin_timeout=1.0,  # silent workers: waited for this long, then the run stops
        shutdown_grace=1.0,
    )
    return dataclasses.replace(base, **kw)


async def _serve_with_workers(config: PSConfig, stop_after: int | None = None) -> int:
    """draco.ps.service.serve with in-process fake workers, silent after ``stop_after`` rounds."""
    from draco.ps import service

    task = LeastSquaresTask(DIM, 5, 4, seed=2)
    out = open(Path(str(config.run_dir) + ".out"), "a")  # noqa: SIM115
    serve = asyncio.create_task(service.serve(config, out))
    ready = config.ready_file
    assert ready is not None
    for _ in range(500):
        if ready.exists():
            break
        await asyncio.sleep(0.01)
    info = json.loads(ready.read_text())
    fake = type("S", (), {"address": ("127.0.0.1", info["port"])})()

    def silent_after(t: int, y: np.ndarray) -> Any:
        if stop_after is not None and t >= stop_after:
            return None
        return m.Gradient(round_index=t, payload=y, compute_seconds=0.0)

    workers = [
        asyncio.create_task(honest_worker(fake, task, j, misbehave=silent_after)) for j in range(5)
    ]
    result = await asyncio.wait_for(serve, TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), TIMEOUT)
    out.close()
    ready.unlink()
    assert result.completed == (result.summary is not None)
    return result.exit_code


async def test_draco_ps_run_dir_and_resume_reach_the_same_model(tmp_path: Path) -> None:
    from draco.ps.rundir import RunDir, read_metrics

    ready = tmp_path / "ready.json"
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    assert await _serve_with_workers(_ps_config(tmp_path, full_dir, ready_file=ready)) == 0
    full = json.loads((full_dir / "summary.json").read_text())
    assert full["rounds"] == 6 and full["failed_rounds"] == 0
    assert full["adversaries_located"] == 6 and full["attack"] == "reverse"
    assert "test_loss" in full and len(full["model_sha256"]) == 64
    records = read_metrics(full_dir)
    assert [r["round"] for r in records] == list(range(6))
    assert "test_loss" in records[1] and "test_loss" not in records[0]
    assert RunDir(full_dir, resume=True).latest_checkpoint().round_index == 6  # type: ignore[union-attr]
    progress = Path(str(full_dir) + ".out").read_text()
    assert "round 6/6" in progress and "liars located" in progress

    # Interrupted: the workers go silent in round 3 -> the run fails after a checkpoint at 2.
    status = await _serve_with_workers(_ps_config(tmp_path, cut_dir, ready_file=ready), 3)
    assert status == 1 and not (cut_dir / "summary.json").exists()
    # Resume: only this process's settings are given; the run's come from config.json.
    resumed = PSConfig(
        run_dir=cut_dir, resume=True, port=0, ready_file=ready, secret_file=tmp_path / "ps.secret"
    )
    assert await _serve_with_workers(resumed) == 0
    summary = json.loads((cut_dir / "summary.json").read_text())
    assert summary["model_sha256"] == full["model_sha256"]
    assert [r["round"] for r in read_metrics(cut_dir) if not r["failed"]] == list(range(6))


# ----------------------------------------------------------------------------- the command


def test_draco_ps_usage_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from draco.cli import ps

    assert ps.main(["--workers", "3", "--adversaries", "3", "--model", "lstsq"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("draco-ps: error:") and "--adversaries" in err
    assert "Traceback" not in err
    assert ps.main(["--workers", "3", "--adversaries", "1", "--model", "lstsq"]) == 2
    assert "--secret-file is required" in capsys.readouterr().err
    missing = tmp_path / "nope.secret"
    assert ps.main(["--model", "lstsq", "--secret-file", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_draco_ps_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from draco.cli import ps

    secret, tokens = tmp_path / "s", tmp_path / "t"
    argv = ["keys", "--secret-file", str(secret), "--workers", "3", "--out", str(tokens)]
    assert ps.main(argv) == 2  # no secret yet, and not asked to create one
    assert "--create-secret" in capsys.readouterr().err
    assert ps.main([*argv, "--create-secret"]) == 0
    issued = auth.read_token_file(tokens)
    assert sorted(issued) == [0, 1, 2]
    assert issued[1] == auth.derive_token(auth.load_secret(secret), 1)
    assert secret.stat().st_mode & 0o077 == 0 and tokens.stat().st_mode & 0o077 == 0
    assert ps.main([*argv, "--create-secret"]) == 2  # never overwrites a secret


def test_draco_ps_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    secret = tmp_path / "s"
    auth.write_secret(secret)
    ready = tmp_path / "ready.json"
    argv = [sys.executable, "-m", "draco.cli.ps", "--port", "0", "--ready-file", str(ready)]
    argv += ["--secret-file", str(secret), "--model", "lstsq", "--workers", "3"]
    argv += ["--adversaries", "1", "--run-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1000):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and info["port"] > 0 and info["host"] == "127.0.0.1"
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert "listening on 127.0.0.1:" in out
    assert (tmp_path / "run" / "config.json").exists()
