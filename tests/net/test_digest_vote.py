"""Digest-first vote over real localhost sockets: the PS, fake workers, hostile ones.

The fake workers speak the protocol through the sans-IO client ``Connection`` (as in
test_server.py); each hostile case of issue 13 is one test: a liar with the honest digest and
another payload, a liar with a wrong digest and the honest payload, colluding liars agreeing
on a wrong digest, a majority member that disconnects before its payload, and duplicate or
unsolicited payloads. Every run must end with the model of the full-payload vote.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from test_server import TIMEOUT, Client, Recorder, make_server, worker_payload

from draco.core.codes import make_code
from draco.core.digests import payload_digest
from draco.net import messages as m
from draco.net.frames import encode_frame
from draco.net.protocol import CLOSED
from draco.net.server import ParameterServer
from draco.ps.config import ServerLimits
from draco.ps.digest_vote import DigestVoteConfig
from draco.tasks.lstsq import LeastSquaresTask

pytestmark = pytest.mark.asyncio

N, S, ROUNDS = 7, 1, 4  # one group of 7 (s = 1 needs >= 3 per group: 2 groups of 3 and 4)


SILENT = object()  # Behaviour.payload: do not answer the request at all


class Behaviour:
    """How a fake worker answers; the defaults are an honest worker's."""

    unsolicited = False  # send the payload right after the digest, unasked
    delay = 0.0  # seconds before sending the digest (to fix who backs a group first)

    def digest(self, t: int, y: np.ndarray, key: bytes, n: int) -> bytes:
        return payload_digest(y, key, n)

    def payload(self, t: int, y: np.ndarray) -> Any:
        """The payload sent on request (None: disconnect instead; SILENT: no answer)."""
        return y

    def after_payload(self, client: Client, t: int, attempt: int, y: np.ndarray) -> None:
        """Called after the payload went out (e.g. to send a duplicate)."""

    def on_request(
        self, client: Client, req: m.PayloadRequest, held: dict[tuple[int, int], np.ndarray]
    ) -> bool:
        """Called first on every PayloadRequest: True means handled (no default answer)."""
        return False


async def digest_worker(
    server: ParameterServer, task: LeastSquaresTask, j: int, how: Behaviour | None = None
) -> dict[str, int]:
    """Serve rounds until Bye or the connection drops; counts what it did."""
    how = how or Behaviour()
    client = await Client.connect(server)
    welcome = await client.handshake(j)
    assert isinstance(welcome, m.Welcome), welcome
    cfg = welcome.config
    assert cfg["vote"] == "digest"
    code = make_code(cfg["code"], cfg["n_workers"], cfg["n_adversaries"], **cfg["code_options"])
    held: dict[tuple[int, int], np.ndarray] = {}
    counts: dict[str, Any] = {"digests": 0, "payloads": 0, "requests": 0, "keys": []}
    while True:
        ev = await client.recv()
        if ev is CLOSED or isinstance(ev, m.Bye | m.Error):
            client.close()
            return counts
        if isinstance(ev, m.PayloadRequest):
            counts["requests"] += 1
            if how.on_request(client, ev, held):
                continue
            y = held[(ev.round_index, ev.attempt)]
            out = how.payload(ev.round_index, y)
            if out is None:
                client.close()
                return counts
            if out is SILENT:
                continue
            client.send(m.Payload(round_index=ev.round_index, attempt=ev.attempt, payload=out))
            counts["payloads"] += 1
            how.after_payload(client, ev.round_index, ev.attempt, out)
            continue
        assert isinstance(ev, m.RoundStart) and len(ev.digest_key) == 32
        counts["keys"].append(ev.digest_key)
        y = worker_payload(task, code, j, ev, cfg)
        held[(ev.round_index, ev.attempt)] = y
        if how.delay:
            await asyncio.sleep(how.delay)
        client.send(
            m.Digest(
                round_index=ev.round_index,
                attempt=ev.attempt,
                digest=how.digest(ev.round_index, y, ev.digest_key, cfg["digest_bytes"]),
                compute_seconds=0.001,
            )
        )
        counts["digests"] += 1
        if how.unsolicited:
            client.send_raw(raw_payload(ev.round_index, ev.attempt, y))


async def run(
    behaviours: dict[int, Behaviour] | None = None,
    *,
    vote: str = "digest",
    attack: str | None = None,
    n: int = N,
    s: int = S,
    digest: DigestVoteConfig | None = None,
    **cfg: Any,
) -> tuple[ParameterServer, Recorder, list[Any]]:
    rec = Recorder()
    server, task = make_server(
        n=n, s=s, rounds=ROUNDS, attack=attack, hooks=rec, vote=vote, digest=digest, **cfg
    )
    await server.start()
    behaviours = behaviours or {}
    if vote == "digest":
        workers = [
            asyncio.create_task(digest_worker(server, task, j, behaviours.get(j))) for j in range(n)
        ]
    else:
        from test_server import honest_worker

        workers = [asyncio.create_task(honest_worker(server, task, j)) for j in range(n)]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    done = await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), TIMEOUT)
    assert outcome.completed, outcome.reason
    return server, rec, done


async def full_vote_params(attack: str | None = None, n: int = N, s: int = S) -> bytes:
    """The model bytes after ROUNDS rounds of the full-payload vote (same task, same liars)."""
    server, _, _ = await run(vote="full", attack=attack, n=n, s=s)
    return server.engine.params.tobytes()


def groups_of(n: int = N, s: int = S) -> tuple[tuple[int, ...], ...]:
    return make_code("repetition", n, s).groups


class Late(Behaviour):
    delay = 0.3


def first_backers(behaviours: dict[int, Behaviour], n: int = N, s: int = S) -> dict[int, Behaviour]:
    """Delay the digests of every other member of the behaving workers' groups but s+1
    in all: a group's fetch starts as soon as s+1 equal digests are in, so those s+1
    (the behaving workers first) are the ones asked, in id order rotated by the round."""
    out = dict(behaviours)
    for members in groups_of(n, s):
        chosen = [j for j in members if j in behaviours]
        if not chosen:
            continue
        partners = [j for j in members if j not in behaviours][: s + 1 - len(chosen)]
        for j in members:
            if j not in chosen and j not in partners:
                out[j] = Late()
    return out


async def test_clean_run_fetches_one_payload_per_group_and_matches_the_full_vote() -> None:
    server, rec, done = await run()
    full, full_rec, _ = await run(vote="full")
    assert server.engine.params.tobytes() == full.engine.params.tobytes()
    n_groups = len(groups_of())
    for r, f in zip(rec.records, full_rec.records, strict=True):
        assert not r["failed"] and r["vote"] == "digest" and f["vote"] == "full"
        assert r["payload_requests"] == n_groups
        assert r["adversaries_located"] == [] and r["erasures"] == []
    assert sum(c["payloads"] for c in done) == n_groups * ROUNDS
    # One fresh key per round, the same for every worker of the round.
    keys = [c["keys"] for c in done]
    assert all(k == keys[0] for k in keys) and len(set(keys[0])) == ROUNDS
    # Spread: the servers of a group rotate with the round.
    assert sum(1 for c in done if c["payloads"]) > n_groups


class HonestDigestOtherPayload(Behaviour):
    def payload(self, t: int, y: np.ndarray) -> np.ndarray:
        return y + np.float32(1.0)


class WrongDigest(Behaviour):
    """Digest of another payload; the honest payload if asked (it never is: minority)."""

    def digest(self, t: int, y: np.ndarray, key: bytes, n: int) -> bytes:
        return payload_digest(y + np.float32(1.0), key, n)


@pytest.mark.parametrize("liar", range(N))
async def test_liar_with_the_honest_digest_and_another_payload_is_located(liar: int) -> None:
    """Whichever member the PS asks first, the model is the full vote's; a liar that was
    asked is located (and costs one more request), nobody else is ever named."""
    server, rec, _ = await run(first_backers({liar: HonestDigestOtherPayload()}))
    assert server.engine.params.tobytes() == await full_vote_params()
    n_groups = len(groups_of())
    asked = 0
    for r in rec.records:
        assert not r["failed"]
        assert set(r["adversaries_located"]) <= {liar}
        if liar in r["adversaries_located"]:
            asked += 1
            assert r["payload_requests"] == n_groups + 1
        else:
            assert r["payload_requests"] == n_groups
    # The liar and one partner back its group first; who is asked first alternates with the
    # round (rotation by round + group), so the liar is asked first in half the rounds.
    assert asked == ROUNDS // 2


@pytest.mark.parametrize("liar", [0, 5])
async def test_liar_with_a_wrong_digest_and_the_honest_payload_is_located(liar: int) -> None:
    server, rec, done = await run({liar: WrongDigest()})
    assert server.engine.params.tobytes() == await full_vote_params()
    for r in rec.records:
        assert not r["failed"] and r["adversaries_located"] == [liar]
        assert r["payload_requests"] == len(groups_of())
    assert done[liar]["requests"] == 0  # a minority digest is never asked for its payload


class Colluder(Behaviour):
    """Colluding liars: one wrong payload agreed among them, digest and payload consistent."""

    def digest(self, t: int, y: np.ndarray, key: bytes, n: int) -> bytes:
        return payload_digest(np.full_like(y, 7.0), key, n)

    def payload(self, t: int, y: np.ndarray) -> np.ndarray:
        return np.full_like(y, 7.0)


class CollusionInMajority(Behaviour):
    """Colluders that send the honest digest, then all the same wrong payload."""

    def payload(self, t: int, y: np.ndarray) -> np.ndarray:
        return np.full_like(y, 7.0)


async def test_colluding_liars_agreeing_on_a_wrong_digest_never_win() -> None:
    """s = 2 colluders per group (groups of 5) agree on one wrong digest: a minority."""
    n, s = 10, 2
    liars = {0, 1, 6, 9}
    server, rec, done = await run({j: Colluder() for j in liars}, n=n, s=s)
    assert server.engine.params.tobytes() == await full_vote_params(n=n, s=s)
    for r in rec.records:
        assert not r["failed"] and set(r["adversaries_located"]) == liars
    assert all(done[j]["requests"] == 0 for j in liars)


async def test_colluders_in_the_majority_cost_at_most_s_more_requests() -> None:
    """Round 0 asks group 0's members in id order: both liars (0, 1) first, then an honest
    one, the (s+1)-th request of the default limit."""
    n, s = 10, 2
    liars = {0, 1}
    server, rec, _ = await run(
        first_backers({j: CollusionInMajority() for j in liars}, n, s), n=n, s=s
    )
    assert server.engine.params.tobytes() == await full_vote_params(n=n, s=s)
    first = rec.records[0]
    assert not first["failed"] and set(first["adversaries_located"]) == liars
    assert first["payload_requests"] == len(groups_of(n, s)) + s
    for r in rec.records:
        assert not r["failed"] and set(r["adversaries_located"]) <= liars


async def test_a_request_limit_below_the_liars_fails_the_attempt_not_the_model() -> None:
    """--max-payload-requests 1 with a lying first member: the attempt fails (model kept) and
    the retry, with a fresh key and the next member first, succeeds."""
    n, s = 10, 2
    server, rec, done = await run(
        first_backers({0: CollusionInMajority()}, n, s),
        n=n,
        s=s,
        digest=DigestVoteConfig(max_payload_requests=1),
    )
    assert server.engine.params.tobytes() == await full_vote_params(n=n, s=s)
    assert rec.records[0]["attempts"] == 2 and not rec.records[0]["failed"]
    # Every attempt, retries included, came with its own key (the liar is asked first again
    # whenever the rotation comes back to it, so more than one round may be retried).
    keys = done[0]["keys"]
    assert len(keys) == sum(r["attempts"] for r in rec.records) > ROUNDS
    assert len(set(keys)) == len(keys)
    assert "no member of its majority" in rec.records[0]["retry_error"]


class Vanish(Behaviour):
    """A majority member that disconnects when asked for its payload."""

    def payload(self, t: int, y: np.ndarray) -> None:
        return None


async def test_a_majority_member_that_disconnects_before_its_payload_is_replaced() -> None:
    # Worker 0 is asked first in round 0 (rotation 0); it drops, worker 1 serves the group.
    server, rec, done = await run(first_backers({0: Vanish()}))
    assert server.engine.params.tobytes() == await full_vote_params()
    first = rec.records[0]
    assert not first["failed"] and first["attempts"] == 1
    assert first["payload_requests"] == len(groups_of()) + 1
    assert first["adversaries_located"] == []  # gone is not lying
    assert done[0]["requests"] == 1


class VanishLater(Behaviour):
    """Asked for its payload, disconnects 0.6 s later: after the last (Late, 0.3 s) digest,
    so in the fetch phase proper, once the digest phase of the attempt has closed."""

    def on_request(
        self, client: Client, req: m.PayloadRequest, held: dict[tuple[int, int], np.ndarray]
    ) -> bool:
        asyncio.get_running_loop().call_later(0.6, client.close)
        return True


async def test_an_attempt_lost_to_a_member_gone_during_the_fetch_is_not_counted() -> None:
    """With one request per group, worker 0 vanishing when asked fails the attempt. It was
    lost to a worker that left, not to liars: like a failed attempt with workers missing it
    is waited out under --rejoin-timeout, not counted (--max-failed-rounds 1 would stop)."""
    server, rec, _ = await run(
        first_backers({0: VanishLater()}),
        digest=DigestVoteConfig(max_payload_requests=1),
        max_failed_rounds=1,
    )
    assert server.engine.params.tobytes() == await full_vote_params()
    first = rec.records[0]
    assert first["attempts"] == 2 and not first["failed"]
    assert "no member of its majority" in first["retry_error"]


class Silent(Behaviour):
    """A majority member that never answers its payload request (frozen)."""

    def payload(self, t: int, y: np.ndarray) -> Any:
        return SILENT


async def test_a_member_that_does_not_answer_in_time_is_replaced() -> None:
    server, rec, _ = await run(
        first_backers({0: Silent()}), digest=DigestVoteConfig(payload_timeout=0.3)
    )
    assert server.engine.params.tobytes() == await full_vote_params()
    first = rec.records[0]
    # The request went out during the digest phase (early fetch), so the timeout shows in
    # the round's wait (broadcast to close), not necessarily in fetch_seconds.
    assert not first["failed"] and first["wait_seconds"] >= 0.3
    assert first["payload_requests"] == len(groups_of()) + 1


class AnswersLate(Behaviour):
    """A majority member frozen between its digest and its payload: it answers its round-0
    request only when next asked (round 2), after the PS gave that request up."""

    def on_request(
        self, client: Client, req: m.PayloadRequest, held: dict[tuple[int, int], np.ndarray]
    ) -> bool:
        if req.round_index == 2:
            client.send(m.Payload(round_index=0, attempt=0, payload=held[(0, 0)]))
        return True  # never answers the request just received


@pytest.mark.parametrize(("cap", "refused"), [(16, 0), (1, 1)])
async def test_a_late_payload_is_ignored_unless_its_request_was_forgotten(
    cap: int, refused: int
) -> None:
    """Worker 0 is asked first in rounds 0 and 2 (rotation over its group's first backers
    0 and 1) and answers neither in time: the PS asks worker 1 after --payload-timeout. Its
    late answer to round 0 is legal and ignored while the PS still remembers that request
    (default bound 16: it keeps its seat); with --max-outstanding-requests 1 the round-2
    request pushed it out, so the answer is unsolicited: a violation, the connection is
    closed. The model is the full vote's either way."""
    server, rec, done = await run(
        first_backers({0: AnswersLate()}),
        digest=DigestVoteConfig(payload_timeout=0.3),
        limits=ServerLimits(max_outstanding_requests=cap),
    )
    assert server.engine.params.tobytes() == await full_vote_params()
    assert server.refused == refused
    for r in rec.records:
        assert not r["failed"] and r["adversaries_located"] == []
    assert [rec.records[t]["payload_requests"] for t in (0, 2)] == [len(groups_of()) + 1] * 2
    assert done[0]["requests"] == 2 and done[0]["payloads"] == 0
    # Kept its seat (answered every round) or was closed right after its late answer.
    assert done[0]["digests"] == (ROUNDS if refused == 0 else 3)


class Duplicate(Behaviour):
    def after_payload(self, client: Client, t: int, attempt: int, y: np.ndarray) -> None:
        client.send_raw(raw_payload(t, attempt, y))


def raw_payload(t: int, attempt: int, y: np.ndarray) -> bytes:
    """A Payload frame built without the client state machine (which refuses to send it)."""
    header, tensors = m.to_wire(m.Payload(round_index=t, attempt=attempt, payload=y))
    return b"".join(bytes(c) for c in encode_frame(header, tensors))


class Unsolicited(Behaviour):
    """Sends its payload right after its digest, unasked."""

    unsolicited = True


@pytest.mark.parametrize("case", ["duplicate", "unsolicited"])
async def test_duplicate_or_unsolicited_payloads_close_the_connection(case: str) -> None:
    """Worker 0 (asked first in round 0) breaks the payload rule: its connection is closed
    as a protocol violation, and the rounds go on with the others (model unchanged)."""
    how: Behaviour = Duplicate() if case == "duplicate" else Unsolicited()
    server, rec, done = await run(first_backers({0: how}))
    assert server.refused == 1  # the violation closed worker 0's connection, nothing else
    assert server.engine.params.tobytes() == await full_vote_params()
    for r in rec.records:
        assert not r["failed"] and r["adversaries_located"] == []
    assert done[0]["digests"] == 1  # gone after its first round
    assert all(r["worker_compute_seconds"][0] is None for r in rec.records[1:])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--vote", "digest", "--code", "cyclic"], "--vote digest works with --code repetition"),
        (["--vote", "digest", "--digest-bytes", "8"], "--digest-bytes"),
        (["--vote", "digest", "--max-payload-requests", "0"], "--max-payload-requests"),
        (["--vote", "digest", "--payload-timeout", "-1"], "--payload-timeout"),
        (["--max-outstanding-requests", "0"], "--max-outstanding-requests"),
        (["--max-outstanding-requests", "5000"], "--max-outstanding-requests"),
    ],
)
async def test_draco_ps_vote_usage_errors_are_one_line_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from draco.cli import ps

    argv = ["--workers", "5", "--adversaries", "1", "--model", "lstsq", *flags]
    assert ps.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("draco-ps: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("host", "code", "want"),
    [
        ("127.0.0.1", "repetition", "full"),
        ("localhost", "repetition", "full"),
        ("0.0.0.0", "repetition", "digest"),
        ("10.0.0.7", "repetition", "digest"),
        ("0.0.0.0", "cyclic", "full"),
    ],
)
async def test_vote_auto_is_digest_for_repetition_off_loopback(
    host: str, code: str, want: str
) -> None:
    from draco.ps.config import PSConfig

    assert PSConfig(host=host, code=code).resolved_vote() == want
    assert PSConfig(host=host, code=code).resolved_vote(exact=False) == "full"
