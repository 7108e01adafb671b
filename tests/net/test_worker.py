"""The asyncio worker against real localhost sockets.

Most tests run the worker against a *scripted* parameter server: a few lines of asyncio that
speak the real protocol through the sans-IO ``Connection(Role.SERVER)``, so each test states
exactly what the PS does (drop the connection, refuse the credential, send another version)
and checks exactly what the worker sends back. One test runs against the real ``server.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from draco.core.attacks import make_attack
from draco.core.codes import make_code
from draco.errors import AuthError, ConfigError, DracoError, VersionMismatchError
from draco.net import messages as m
from draco.net.auth import derive_token, generate_secret, new_nonce, verify_handshake
from draco.net.frames import MAGIC, PREFIX
from draco.net.protocol import Closed, Connection, NeedData, Role
from draco.net.worker import WorkerOptions, run_workers
from draco.tasks.lstsq import LeastSquaresTask

SECRET = bytes(range(32))
N, S, DIM = 3, 1, 8
TIMEOUT = 20.0  # generous bound on each test's run: a hang fails instead of blocking CI


def _code_and_task() -> tuple[Any, LeastSquaresTask]:
    code = make_code("repetition", N, S)
    task = LeastSquaresTask(dim=DIM, n_partitions=code.n_partitions, batch_size=4, seed=0)
    return code, task


def _config(worker_id: int) -> dict[str, Any]:
    code, task = _code_and_task()
    return {
        "worker_id": worker_id,
        "n_workers": N,
        "n_adversaries": S,
        "code": code.name,
        "code_options": dict(code.options),
        "partitions": list(code.partitions_of(worker_id)),
        "payload_dtype": np.dtype(code.payload_dtype).str,
        "dim": task.dim,
        "task": task.spec(),
        "seed": 0,
        "round_timeout": 5.0,
    }


def _honest(worker_id: int, params: np.ndarray, round_index: int, flip: bool = False):
    code, task = _code_and_task()
    parts = code.partitions_of(worker_id)
    g = task.partition_gradients(params, round_index, parts, flip_labels=flip)
    return code.encode(worker_id, g)


class Peer:
    """The PS end of one connection: the real sans-IO Connection over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = Connection(Role.SERVER)
        self.reader, self.writer = reader, writer

    async def recv(self) -> m.Message | None:
        while True:
            event = self.conn.next_event()
            if isinstance(event, Closed):
                return None
            if not isinstance(event, NeedData):
                return event
            self.conn.receive_data(await self.reader.read(1 << 16))

    async def send(self, msg: m.Message) -> None:
        self.writer.writelines(self.conn.send(msg))
        await self.writer.drain()

    async def handshake(self, secret: bytes = SECRET) -> int | None:
        """Challenge-response; Welcome on success. The worker id, or None if refused."""
        hello = await self.recv()
        assert isinstance(hello, m.Hello)
        nonce = new_nonce()
        await self.send(m.Challenge(nonce))
        auth = await self.recv()
        assert isinstance(auth, m.Auth)
        if not verify_handshake(secret, hello.worker_id, nonce, auth.mac):
            await self.send(m.Error("auth_failed", "bad credential"))
            return None
        await self.send(m.Welcome(_config(hello.worker_id)))
        return hello.worker_id

    async def round(self, t: int, params: np.ndarray, attack: str | None = None, seed: int = 0):
        await self.send(m.RoundStart(t, params, attack, seed))
        reply = await self.recv()
        assert isinstance(reply, m.Gradient), reply
        return reply


Script = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_ps(script: Script):
    """A scripted PS on 127.0.0.1:<free port>; yields (port, list of connections' records)."""
    seen: list[Peer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        seen.append(peer)
        try:
            await script(peer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()


def _options(port: int, ids: range, **kw: Any) -> WorkerOptions:
    tokens = {j: derive_token(SECRET, j) for j in ids}
    kw.setdefault("connect_timeout", 5.0)
    return WorkerOptions(host="127.0.0.1", port=port, tokens=tokens, **kw)


PARAMS = np.linspace(-1.0, 1.0, DIM, dtype=np.float32)


async def test_rounds_honest_and_told_to_lie_then_bye() -> None:
    got: dict[int, list[m.Gradient]] = {}

    async def script(peer: Peer) -> None:
        j = await peer.handshake()
        assert j is not None
        liar = "constant" if j == 1 else None
        got[j] = [await peer.round(0, PARAMS), await peer.round(1, PARAMS * 2, liar, seed=7)]
        await peer.send(m.Bye("run complete"))

    async with fake_ps(script) as (port, _):
        await asyncio.wait_for(run_workers(_options(port, range(N))), TIMEOUT)
    assert sorted(got) == [0, 1, 2]
    for j, (g0, g1) in got.items():
        assert (g0.round_index, g1.round_index) == (0, 1)
        np.testing.assert_array_equal(g0.payload, _honest(j, PARAMS, 0))
        expected = _honest(j, PARAMS * 2, 1)
        if j == 1:
            expected = make_attack("constant").apply(
                expected, rng=np.random.default_rng(7), n_workers=N, n_adversaries=S
            )
        np.testing.assert_array_equal(g1.payload, expected)
        assert g0.compute_seconds >= 0.0


async def test_shared_and_private_gradients_agree() -> None:
    """The per-process gradient cache gives every worker what it would compute alone."""
    payloads: dict[bool, dict[int, np.ndarray]] = {True: {}, False: {}}

    for share in (True, False):

        async def script(peer: Peer, share: bool = share) -> None:
            j = await peer.handshake()
            assert j is not None
            payloads[share][j] = (await peer.round(3, PARAMS)).payload
            await peer.send(m.Bye("done"))

        async with fake_ps(script) as (port, _):
            opts = _options(port, range(N), share_gradients=share)
            await asyncio.wait_for(run_workers(opts), TIMEOUT)
    for j in range(N):
        np.testing.assert_array_equal(payloads[True][j], payloads[False][j])
        np.testing.assert_array_equal(payloads[True][j], _honest(j, PARAMS, 3))


async def test_label_flip_computes_on_flipped_labels() -> None:
    got: dict[int, np.ndarray] = {}

    async def script(peer: Peer) -> None:
        j = await peer.handshake()
        assert j is not None
        got[j] = (await peer.round(0, PARAMS, "label_flip", seed=1)).payload
        await peer.send(m.Bye("done"))

    async with fake_ps(script) as (port, _):
        await asyncio.wait_for(run_workers(_options(port, range(1))), TIMEOUT)
    np.testing.assert_array_equal(got[0], _honest(0, PARAMS, 0, flip=True))
    assert not np.array_equal(got[0], _honest(0, PARAMS, 0))


async def test_persistent_liar_lies_every_round() -> None:
    got: list[m.Gradient] = []

    async def script(peer: Peer) -> None:
        assert await peer.handshake() == 2
        got.extend([await peer.round(0, PARAMS), await peer.round(1, PARAMS)])
        await peer.send(m.Bye("done"))

    async with fake_ps(script) as (port, _):
        await asyncio.wait_for(run_workers(_options(port, range(2, 3), attack="reverse")), TIMEOUT)
    for t, g in enumerate(got):
        honest = _honest(2, PARAMS, t)
        assert not np.array_equal(g.payload, honest)
        # reverse = scale * own, whatever the rng: check against the attack itself.
        expected = make_attack("reverse").apply(
            honest, rng=np.random.default_rng(0), n_workers=N, n_adversaries=S
        )
        np.testing.assert_array_equal(g.payload, expected)


async def test_reconnects_after_a_dropped_connection_and_rejoins() -> None:
    rounds: list[int] = []

    async def script(peer: Peer) -> None:
        j = await peer.handshake()
        assert j == 0
        if not rounds:
            rounds.append((await peer.round(0, PARAMS)).round_index)
            peer.writer.transport.abort()  # the PS side breaks the connection
            return
        rounds.append((await peer.round(1, PARAMS)).round_index)
        await peer.send(m.Bye("done"))

    async with fake_ps(script) as (port, seen):
        await asyncio.wait_for(run_workers(_options(port, range(1))), TIMEOUT)
    assert rounds == [0, 1]
    assert len(seen) == 2


async def test_bye_while_computing_ends_the_run_cleanly() -> None:
    """The PS may end the run while a worker still computes (its payload was not needed)."""

    async def script(peer: Peer) -> None:
        assert await peer.handshake() == 0
        await peer.send(m.RoundStart(0, PARAMS, None, 0))
        await peer.send(m.Bye("run complete"))
        await peer.reader.read()  # until the worker hangs up

    async with fake_ps(script) as (port, seen):
        await asyncio.wait_for(run_workers(_options(port, range(1))), TIMEOUT)
    assert len(seen) == 1  # no reconnection attempt


async def test_refused_credential_is_final() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake(secret=generate_secret())  # another cluster: refuses our token

    async with fake_ps(script) as (port, seen):
        with pytest.raises(AuthError, match="auth_failed"):
            await asyncio.wait_for(run_workers(_options(port, range(1))), TIMEOUT)
    assert len(seen) == 1  # no retry


async def test_seat_taken_at_start_is_final() -> None:
    async def script(peer: Peer) -> None:
        await peer.recv()
        await peer.send(m.Error("seat_taken", "worker 0 is connected already"))

    async with fake_ps(script) as (port, seen):
        with pytest.raises(AuthError, match="another draco-worker"):
            await asyncio.wait_for(run_workers(_options(port, range(1))), TIMEOUT)
    assert len(seen) == 1


@pytest.mark.parametrize("how", ["error_message", "frame_version"])
async def test_version_mismatch_is_final(how: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.recv()
        if how == "error_message":
            await peer.send(m.Error("version_mismatch", "this PS speaks version 9"))
        else:  # a frame from a future version of the protocol
            peer.writer.write(PREFIX.pack(MAGIC, 9, 0, 4, 0, 0) + b"\x80\x80\x80\x80")
            await peer.writer.drain()
            await peer.reader.read()  # until the worker hangs up

    async with fake_ps(script) as (port, seen):
        with pytest.raises(VersionMismatchError):
            await asyncio.wait_for(run_workers(_options(port, range(1))), TIMEOUT)
    assert len(seen) == 1


async def test_handshakes_that_keep_failing_give_up_at_the_join_timeout() -> None:
    async def script(peer: Peer) -> None:
        await peer.recv()
        await peer.send(m.Error("timeout", "handshake too slow"))

    async with fake_ps(script) as (port, seen):
        with pytest.raises(DracoError, match=r"did not welcome us within --join-timeout 1\.5 s"):
            await asyncio.wait_for(run_workers(_options(port, range(1), join_timeout=1.5)), TIMEOUT)
    assert len(seen) > 5  # more than the old hard limit of 5 refusals: backoff, then retry


async def test_refused_connections_are_retried_until_welcomed() -> None:
    """A PS whose pre-auth slots are full drops us without a word (many times): we retry."""
    attempts = 0

    async def script(peer: Peer) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 12:
            return  # closed at once, like an admission refusal or an eviction
        assert await peer.handshake() == 0
        await peer.round(0, PARAMS)
        await peer.send(m.Bye("run complete"))

    async with fake_ps(script) as (port, _):
        await asyncio.wait_for(run_workers(_options(port, range(1), join_timeout=30)), TIMEOUT)
    assert attempts == 13


async def test_one_logical_worker_failing_never_stops_its_siblings() -> None:
    served: list[int] = []

    async def script(peer: Peer) -> None:
        hello = await peer.recv()
        assert isinstance(hello, m.Hello)
        if hello.worker_id == 0:
            await peer.send(m.Error("auth_failed", "bad credential"))
            return
        nonce = new_nonce()
        await peer.send(m.Challenge(nonce))
        await peer.recv()
        await peer.send(m.Welcome(_config(hello.worker_id)))
        await asyncio.sleep(0.5)  # worker 0 has failed by now
        await peer.round(0, PARAMS)
        served.append(hello.worker_id)
        await peer.send(m.Bye("run complete"))

    async with fake_ps(script) as (port, _):
        with pytest.raises(AuthError, match="worker 0"):
            await asyncio.wait_for(run_workers(_options(port, range(N))), TIMEOUT)
    assert sorted(served) == [1, 2]  # both siblings served their round to the end


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_server_ends_with_a_clear_error_after_the_deadline() -> None:
    port = _closed_port()
    with pytest.raises(DracoError, match=rf"could not connect .* 127\.0\.0\.1:{port} within"):
        await asyncio.wait_for(run_workers(_options(port, range(2), connect_timeout=0.5)), TIMEOUT)


async def test_unresolvable_host_is_a_config_error() -> None:
    opts = WorkerOptions(
        host="no-such-host.invalid", port=7000, tokens={0: b"x" * 32}, connect_timeout=1.0
    )
    with pytest.raises(ConfigError, match="resolve"):
        await asyncio.wait_for(run_workers(opts), TIMEOUT)


async def test_omniscient_persistent_attack_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigError, match="simulated at the PS"):
        await run_workers(_options(_closed_port(), range(1), attack="alie"))


# -- the draco-worker command ------------------------------------------------------------


def test_cli_bad_address_and_missing_tokens(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from draco.cli import worker as cli

    tokens = tmp_path / "tokens"
    assert cli.main(["--ps", "nohostport", "--id", "0", "--token-file", str(tokens)]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert cli.main(["--ps", "127.0.0.1:1", "--id", "0", "--token-file", str(tokens)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("draco-worker: error:") and "does not exist" in err
    assert "Traceback" not in err


def test_cli_tokens_for_other_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from draco.cli import worker as cli
    from draco.net.auth import issue_tokens, write_token_file

    tokens = tmp_path / "tokens"
    write_token_file(tokens, issue_tokens(SECRET, range(3)))
    argv = ["--ps", "127.0.0.1:1", "--id", "2", "--count", "2", "--token-file", str(tokens)]
    assert cli.main(argv) == 2
    assert "no token for worker id(s) [3]" in capsys.readouterr().err


def test_cli_closed_port(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from draco.cli import worker as cli
    from draco.net.auth import issue_tokens, write_token_file

    tokens = tmp_path / "tokens"
    write_token_file(tokens, issue_tokens(SECRET, range(1)))
    port = _closed_port()
    argv = ["--ps", f"127.0.0.1:{port}", "--id", "0", "--token-file", str(tokens)]
    assert cli.main([*argv, "--connect-timeout", "0.3", "--loop", "asyncio"]) == 2
    err = capsys.readouterr().err
    assert "could not connect" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:7000", ("127.0.0.1", 7000)), ("[::1]:80", ("::1", 80)), ("h:1", ("h", 1))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    from draco.cli.worker import parse_address

    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["7000", "host:", ":7000", "h:0", "h:70000", "h:x"])
def test_parse_address_rejects(text: str) -> None:
    from draco.cli.worker import parse_address

    with pytest.raises(ConfigError):
        parse_address(text)


# -- against the real parameter server ---------------------------------------------------


@pytest.mark.parametrize("code_name", ["repetition", "cyclic"])
async def test_against_the_real_server_with_liars(code_name: str) -> None:
    from draco.net.server import ParameterServer
    from draco.ps.config import PSConfig
    from draco.ps.engine import RoundEngine
    from draco.ps.optim import SGD, SGDConfig

    n, s, rounds = 5, 2, 4
    code = make_code(code_name, n, s)
    task = LeastSquaresTask(dim=DIM, n_partitions=code.n_partitions, batch_size=4, seed=0)
    config = PSConfig(
        n_workers=n, n_adversaries=s, code=code_name, attack="reverse", rounds=rounds,
        task=task.spec(), port=0, join_timeout=10.0, round_timeout=10.0,
    )  # fmt: skip
    engine = RoundEngine(
        code, task.initial_params(), SGD(SGDConfig(), task.dim), rounds=rounds,
        attack=cast(Any, make_attack("reverse")),
    )  # fmt: skip
    records: list[dict[str, Any]] = []

    class Hooks:
        def round_done(self, record: Any, engine: Any) -> None:
            records.append(record.metrics())

    server = ParameterServer(
        config, task_spec=task.spec(), code=code, engine=engine, secret=SECRET, hooks=Hooks()
    )
    _, port = await server.start()
    workers = asyncio.ensure_future(run_workers(_options(port, range(n))))
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(workers, TIMEOUT)  # the Bye ended every logical worker
    assert outcome.completed, outcome.reason
    assert [r["round"] for r in records] == list(range(rounds))
    for r in records:
        # A liar whose payload came after the round could already close (early close: the
        # honest copies decide it) is an erasure, not located; nobody honest is either.
        located, erased, liars = set(r["adversaries_located"]), set(r["erasures"]), set(r["liars"])
        assert not r["failed"] and len(liars) == s
        assert located | erased == liars and not located & erased, r
    assert not np.array_equal(engine.params, task.initial_params())


def test_equal_payloads_of_a_round_share_one_digest() -> None:
    """The process's digest cache: equal payloads (a group's members) get the digest of
    the first, any other payload or key is hashed; a new key forgets the old ones."""
    from unittest import mock

    from draco.core import digests
    from draco.net import worker_compute as worker

    compute = worker.Compute(share_gradients=True)
    try:
        key, other_key = b"k" * 32, b"q" * 32
        x = np.arange(1000, dtype=np.float32)
        y = x.copy()
        y[7] += 1
        with mock.patch.object(worker, "payload_digest", wraps=digests.payload_digest) as h:
            d1 = compute.digest(x, key, 32)
            assert compute.digest(x.copy(), key, 32) == d1 and h.call_count == 1
            assert compute.digest(y, key, 32) != d1 and h.call_count == 2
            assert compute.digest(x[::-1][::-1], key, 32) == d1 and h.call_count == 2
            assert compute.digest(x, other_key, 32) == digests.payload_digest(x, other_key, 32)
            assert h.call_count == 3
            assert compute.digest(x, key, 32) == d1 and h.call_count == 4  # forgotten
    finally:
        compute.close()


# -- digest vote: a parameter server flooding payload requests -----------------------------

KEY = b"\x5a" * 32


@pytest.mark.parametrize("cap", [16, 4096])
async def test_a_ps_flooding_payload_requests_gets_each_held_payload_once(cap: int) -> None:
    """Hostile PS: the same request again and again, then thousands for payloads the worker
    never held. The worker uploads the requested payload once, skips the rest (counted, not
    logged each) and still serves the next rounds. It remembers at most
    ``--max-outstanding-requests`` requests: a request older than that many newer ones is
    forgotten on arrival and never answered (cap 16), one within the bound is (cap 4096)."""
    from draco.core.digests import payload_digest
    from draco.net import worker as w
    from draco.net.worker_compute import Compute

    flood = 2000
    seen: dict[str, Any] = {}

    async def script(peer: Peer) -> None:
        # This fake PS remembers every request it sends (so it accepts any answer).
        peer.conn = Connection(Role.SERVER, max_outstanding_requests=4096)
        assert await peer.handshake() == 0
        await peer.send(m.RoundStart(0, PARAMS, None, 0, attempt=0, digest_key=KEY))
        digest = await peer.recv()
        assert isinstance(digest, m.Digest) and (digest.round_index, digest.attempt) == (0, 0)
        y0 = _honest(0, PARAMS, 0)
        assert digest.digest == payload_digest(y0, KEY, 32)
        for _ in range(5):
            peer.writer.writelines(peer.conn.send(m.PayloadRequest(0, 0)))
        got = [await peer.recv()]
        for t in range(1, flood + 1):
            peer.writer.writelines(peer.conn.send(m.PayloadRequest(10_000 + t, 0)))
        await peer.send(m.RoundStart(1, PARAMS, None, 0, attempt=0, digest_key=KEY))
        got.append(await peer.recv())
        await peer.send(m.PayloadRequest(1, 0))  # older than every request of the flood
        await peer.send(m.RoundStart(2, PARAMS, None, 0, attempt=0, digest_key=KEY))
        got.append(await peer.recv())
        if cap > flood:
            got.append(await peer.recv())
        seen.update(got=got, y0=y0)
        await peer.send(m.Bye("done"))

    async with fake_ps(script) as (port, _):
        options = _options(port, range(1), max_outstanding_requests=cap)
        compute = Compute(share_gradients=True)
        worker = w.LogicalWorker(0, options.tokens[0], options, compute)
        try:
            await asyncio.wait_for(worker.run(), TIMEOUT)
        finally:
            compute.close()
    got = seen["got"]
    # One Payload for round 0 (five requests), then round 1's Digest (the flood: nothing).
    assert isinstance(got[0], m.Payload) and (got[0].round_index, got[0].attempt) == (0, 0)
    np.testing.assert_array_equal(got[0].payload, seen["y0"])
    assert isinstance(got[1], m.Digest) and got[1].round_index == 1
    if cap < flood:
        # (1, 0) came after 2000 newer requests: forgotten on arrival, never answered.
        assert isinstance(got[2], m.Digest) and got[2].round_index == 2
        assert (worker.payloads_sent, worker.requests_skipped) == (1, 4 + flood + 1)
    else:
        assert isinstance(got[2], m.Payload) and (got[2].round_index, got[2].attempt) == (1, 0)
        assert isinstance(got[3], m.Digest) and got[3].round_index == 2
        assert (worker.payloads_sent, worker.requests_skipped) == (2, 4 + flood)
    assert worker.rounds_sent == 3


def test_draco_worker_refuses_a_bad_outstanding_request_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from draco.cli import worker as cli
    from draco.net.auth import issue_tokens, write_token_file

    tokens = tmp_path / "tokens"
    write_token_file(tokens, issue_tokens(SECRET, range(1)))
    argv = ["--ps", "127.0.0.1:1", "--id", "0", "--token-file", str(tokens)]
    assert cli.main([*argv, "--max-outstanding-requests", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("draco-worker: error:") and "--max-outstanding-requests" in err
    assert "Traceback" not in err
