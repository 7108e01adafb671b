"""The round engine and collector (draco.ps): pure logic, no sockets. Real codes, lstsq task."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.core.attacks import make_attack
from draco.core.codes import make_code
from draco.errors import ConfigError
from draco.ps.collector import Verdict
from draco.ps.digest_vote import DigestVoteConfig
from draco.ps.engine import RoundEngine
from draco.ps.optim import SGD, SGDConfig
from draco.ps.plan import attack_seed, choose_liars
from draco.tasks.lstsq import LeastSquaresTask

DIM = 8


def _task(n: int) -> LeastSquaresTask:
    return LeastSquaresTask(DIM, n, 4, seed=3)


def _payloads(code: Any, task: LeastSquaresTask, params: np.ndarray, t: int) -> dict:
    return {
        j: code.encode(j, task.partition_gradients(params, t, code.partitions_of(j)))
        for j in range(code.n_workers)
    }


def _engine(code: Any, task: LeastSquaresTask, **kw: Any) -> RoundEngine:
    kw.setdefault("rounds", 10)
    kw.setdefault("decode_rng", lambda: np.random.default_rng(0))
    return RoundEngine(code, task.initial_params(), SGD(SGDConfig(lr=0.05), task.dim), **kw)


def _run_round(
    engine: RoundEngine, task: LeastSquaresTask, forge: Any = None, skip: frozenset = frozenset()
) -> Any:
    """One round where every worker sends (liars apply ``forge`` if given)."""
    rnd = engine.start_round()
    honest = _payloads(engine.code, task, engine.params, rnd.index)
    for j, y in honest.items():
        if j in skip:
            continue
        attack, _ = rnd.plan.instruction(j)
        if attack is not None and forge is not None:
            y = forge(y)
        offer = rnd.offer(j, rnd.index, y, 0.01, y.nbytes, attempt=rnd.attempt)
        assert offer.verdict is Verdict.ACCEPTED
    return engine.finish(rnd, wait_seconds=0.0)


# ----------------------------------------------------------------------------- the plan


def test_liars_are_seeded_and_sized() -> None:
    a = [choose_liars(15, 2, t, seed=7, schedule="random") for t in range(20)]
    b = [choose_liars(15, 2, t, seed=7, schedule="random") for t in range(20)]
    assert a == b
    assert all(len(x) == 2 and x <= set(range(15)) for x in a)
    assert len(set(a)) > 1  # random: the set changes between rounds
    fixed = {choose_liars(15, 2, t, seed=7, schedule="fixed") for t in range(20)}
    assert len(fixed) == 1
    assert choose_liars(15, 2, 0, seed=8, schedule="random") != a[0] or a[1] != choose_liars(
        15, 2, 1, seed=8, schedule="random"
    )
    with pytest.raises(ConfigError):
        choose_liars(15, 2, 0, seed=7, schedule="sometimes")


def test_attack_seeds_differ_per_round_and_worker() -> None:
    seeds = {attack_seed(1, t, j) for t in range(10) for j in range(10)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**63 for s in seeds)
    assert attack_seed(1, 3, 4) == attack_seed(1, 3, 4)


def test_plan_instructs_only_liars_and_not_for_omniscient_attacks() -> None:
    code = make_code("repetition", 7, 1)
    task = _task(7)
    engine = _engine(code, task, attack=make_attack("constant"))
    plan = engine.plan(0)
    assert len(plan.liars) == 1 and not plan.simulated_at_ps
    for j in range(7):
        attack, seed = plan.instruction(j)
        assert attack == ("constant" if j in plan.liars else None)
        assert seed == attack_seed(engine.seed, 0, j)
    omni = _engine(code, task, attack=make_attack("alie")).plan(0)
    assert omni.simulated_at_ps and len(omni.liars) == 1
    assert all(omni.instruction(j)[0] is None for j in range(7))
    assert _engine(code, task).plan(0).liars == frozenset()


# ----------------------------------------------------------------------------- collecting


def test_offer_validation() -> None:
    code = make_code("repetition", 7, 1)
    task = _task(7)
    engine = _engine(code, task)
    engine.totals.completed_rounds = 3  # round 3 is current
    rnd = engine.start_round()
    good = np.ones(DIM, np.float32)
    assert rnd.offer(0, 3, good).verdict is Verdict.ACCEPTED
    assert rnd.offer(1, 2, good).verdict is Verdict.STALE  # late: ignored, not erased
    assert 1 not in rnd.erased
    assert rnd.offer(1, 4, good).verdict is Verdict.VIOLATION  # future round
    assert rnd.offer(2, 3, good.astype(np.float64)).verdict is Verdict.VIOLATION
    assert rnd.offer(3, 3, np.ones(DIM + 1, np.float32)).verdict is Verdict.VIOLATION
    # NaN/Inf values are not read on arrival (the decoders erase them: see
    # test_nonfinite_payloads_are_erasures_in_the_record).
    bad = good.copy()
    bad[5] = np.nan
    assert rnd.offer(4, 3, bad).verdict is Verdict.ACCEPTED
    inf = good.copy()
    inf[0] = np.inf
    assert rnd.offer(5, 3, inf).verdict is Verdict.ACCEPTED
    assert rnd.offer(99, 3, good).verdict is Verdict.VIOLATION
    assert set(rnd.received) == {0, 4, 5}
    assert set(rnd.erased) == {1, 2, 3}
    # A second payload is a violation and voids the first one too.
    assert rnd.offer(0, 3, good).verdict is Verdict.VIOLATION
    assert set(rnd.received) == {4, 5} and "duplicate" in rnd.erased[0]


def test_finite_check_survives_overflowing_sum() -> None:
    code = make_code("repetition", 3, 1)
    engine = _engine(code, _task(3))
    rnd = engine.start_round()
    big = np.full(DIM, np.finfo(np.float32).max, np.float32)  # sum overflows, values finite
    assert rnd.offer(0, 0, big).verdict is Verdict.ACCEPTED


def test_early_close_when_the_code_is_ready() -> None:
    code = make_code("repetition", 7, 1)  # groups {0..3}, {4..6}: s+1 = 2 equal per group
    task = _task(7)
    engine = _engine(code, task)
    rnd = engine.start_round()
    y = _payloads(code, task, engine.params, 0)
    for j in (0, 1, 4):
        rnd.offer(j, 0, y[j])
        assert not rnd.should_close
    rnd.offer(5, 0, y[5])
    assert rnd.ready and rnd.should_close and not rnd.complete
    rec = engine.finish(rnd, wait_seconds=0.1)
    assert rec.ok and rec.erasures == (2, 3, 6)


def test_round_closes_when_every_worker_is_accounted_for() -> None:
    code = make_code("none", 4, 1, aggregator="median")
    engine = _engine(code, _task(4))
    rnd = engine.start_round()
    for j in range(3):
        rnd.offer(j, 0, np.ones(DIM, np.float32))
    assert not rnd.should_close
    rnd.erase(3, "disconnected")
    assert rnd.complete and rnd.should_close


# ----------------------------------------------------------------------------- decode + update


@pytest.mark.parametrize("name", ["repetition", "cyclic"])
def test_honest_round_updates_with_the_mean_gradient(name: str) -> None:
    code = make_code(name, 7, 1)
    task = _task(7)
    engine = _engine(code, task)
    w0 = engine.params
    rec = _run_round(engine, task)
    assert rec.ok and engine.next_round == 1
    total = task.partition_gradients(w0, 0, range(7)).sum(axis=0, dtype=np.float32)
    expected = SGD(SGDConfig(lr=0.05), DIM).step(w0, total / np.float32(7))
    np.testing.assert_allclose(engine.params, expected, rtol=1e-5, atol=1e-7)
    assert w0 is not engine.params and np.all(w0 == 0)  # never updated in place
    r = rec
    # (The round's wall time is the shell's figure: draco.ps.record.RoundRecord.)
    for key in [
        "round",
        "wait_seconds",
        "compute_seconds",
        "decode_seconds",
        "update_seconds",
        "bytes_in",
        "bytes_out",
        "erasures",
        "adversaries_located",
        "liars",
        "attack_simulated_at_ps",
        "failed",
    ]:
        assert hasattr(r, key)
    assert r.round == 0 and r.failed is False and r.bytes_in > 0


def test_attacked_repetition_run_equals_clean_run_bitwise() -> None:
    code = make_code("repetition", 7, 1)
    task = _task(7)
    clean = _engine(code, task, rounds=6)
    liars = _engine(code, task, rounds=6, attack=make_attack("constant"))
    located = []
    while not clean.finished:
        assert _run_round(clean, task).ok
        rec = _run_round(liars, task, forge=lambda y: np.full_like(y, -100.0))
        assert rec.ok
        located.append(set(rec.adversaries_located))
        assert set(rec.liars) == located[-1]
    assert clean.params.tobytes() == liars.params.tobytes()


def test_omniscient_attack_is_simulated_at_the_ps_and_located() -> None:
    code = make_code("repetition", 7, 1)
    task = _task(7)
    clean = _engine(code, task, rounds=3)
    engine = _engine(code, task, rounds=3, attack=make_attack("alie"))
    while not engine.finished:
        _run_round(clean, task)
        rec = _run_round(engine, task)  # workers honest: the PS forges the liars' payloads
        assert rec.attack_simulated_at_ps is True
        assert rec.adversaries_located == rec.liars
    assert clean.params.tobytes() == engine.params.tobytes()


def test_failed_round_keeps_the_model_and_reruns_the_same_round() -> None:
    code = make_code("repetition", 7, 1)
    task = _task(7)
    engine = _engine(code, task, max_failed_rounds=3)
    _run_round(engine, task)
    w = engine.params.copy()
    for k in range(1, 3):
        rec = _run_round(engine, task, skip=frozenset({0, 1, 2}))  # group 0 below s+1
        assert not rec.ok and rec.failed and rec.round == 1
        assert rec.error and engine.totals.consecutive_failures == k
        assert engine.params.tobytes() == w.tobytes() and engine.next_round == 1
        assert not engine.stopped
    assert _run_round(engine, task).ok  # success resets the streak
    assert engine.totals.consecutive_failures == 0 and engine.totals.failed_rounds == 2
    for _ in range(3):
        _run_round(engine, task, skip=frozenset({4, 5}))
    assert engine.stopped and engine.finished and not engine.done


def test_ps_simulated_liars_do_not_make_a_round_ready() -> None:
    # Their payloads are replaced before decoding, so readiness must come from the others.
    code = make_code("repetition", 5, 1)  # one group of 5: s+1 = 2 equal copies suffice
    task = _task(5)
    engine = _engine(code, task, attack=make_attack("ipm"), schedule="fixed")
    rnd = engine.start_round()
    liars = sorted(rnd.plan.liars)
    honest = [j for j in range(5) if j not in liars]
    y = _payloads(code, task, engine.params, 0)
    rnd.offer(liars[0], 0, y[liars[0]])
    rnd.offer(honest[0], 0, y[honest[0]])
    assert not rnd.should_close  # two equal copies, but one will be forged
    rnd.offer(honest[1], 0, y[honest[1]])
    assert rnd.should_close
    rec = engine.finish(rnd)
    assert rec.ok and list(rec.adversaries_located) == liars


def test_answers_to_a_failed_attempt_are_stale_not_violations() -> None:
    code = make_code("repetition", 5, 1)
    task = _task(5)
    engine = _engine(code, task)
    first = engine.start_round()
    y = _payloads(code, task, engine.params, 0)
    assert first.offer(0, 0, y[0], attempt=0).verdict is Verdict.ACCEPTED
    assert not engine.finish(first).ok  # too few payloads: retried under the same index
    retry = engine.start_round()
    assert retry.index == 0 and retry.attempt == 1 and engine.attempt == 1
    for j in range(1, 5):  # late answers to the failed attempt: ignored, whoever sends them
        assert retry.offer(j, 0, y[j], attempt=0).verdict is Verdict.STALE
    assert not retry.received
    assert retry.offer(2, 0, y[2], attempt=2).verdict is Verdict.VIOLATION  # never started
    for j in (0, 1, 3):  # the answers to the retry
        assert retry.offer(j, 0, y[j], attempt=1).verdict is Verdict.ACCEPTED
    assert retry.offer(1, 0, y[1], attempt=1).verdict is Verdict.VIOLATION  # one per attempt
    rec = engine.finish(retry)
    assert rec.ok and rec.attempts == 2 and engine.attempt == 0
    assert engine.start_round().attempt == 0  # the next round starts afresh


def test_uncounted_failures_do_not_use_up_the_budget() -> None:
    code = make_code("repetition", 5, 1)
    task = _task(5)
    engine = _engine(code, task, max_failed_rounds=2)
    for k in range(1, 6):  # workers missing: the shell bounds these by time, not by count
        rec = engine.finish(engine.start_round(), count_failure=False)
        assert not rec.ok and rec.attempts == k
    assert not engine.stopped and engine.totals.failed_rounds == 5
    for _ in range(2):
        engine.finish(engine.start_round())
    assert engine.stopped and engine.attempt == 7


def test_non_finite_decoded_gradient_fails_the_round() -> None:
    class Exploding:
        name = "none"
        n_workers = n_partitions = 2
        n_adversaries = 0
        payload_dtype = np.dtype(np.float32)

        def ready(self, received: Any) -> bool:
            return False

        def decode(self, received: Any, rng: Any = None) -> Any:
            from draco.core.decoder_types import DecodeResult

            g = np.full(DIM, np.inf, np.float32)
            return DecodeResult(gradient=g, adversaries=frozenset(), erasures=frozenset())

    engine = _engine(Exploding(), _task(2))
    rnd = engine.start_round()
    rec = engine.finish(rnd)
    assert not rec.ok and np.all(engine.params == 0)


def test_checkpoint_state_resumes_identically() -> None:
    code = make_code("repetition", 7, 1)
    task = _task(7)
    forge = lambda y: -y  # noqa: E731
    full = _engine(code, task, rounds=6, attack=make_attack("sign_flip"))
    while not full.finished:
        _run_round(full, task, forge)
    first = _engine(code, task, rounds=6, attack=make_attack("sign_flip"))
    for _ in range(3):
        _run_round(first, task, forge)
    params, opt, extra = first.state()
    resumed = _engine(code, task, rounds=6, attack=make_attack("sign_flip"))
    resumed.restore(params, opt, extra)
    assert resumed.next_round == 3
    while not resumed.finished:
        _run_round(resumed, task, forge)
    assert resumed.params.tobytes() == full.params.tobytes()
    assert resumed.totals.adversaries_located == full.totals.adversaries_located
    with pytest.raises(ConfigError):
        resumed.restore(np.zeros(DIM + 1, np.float32), {}, {})


@settings(max_examples=40, deadline=None)
@given(
    arrivals=st.lists(st.sampled_from(range(7)), max_size=12),
    garbage=st.sets(st.sampled_from(range(7)), max_size=1),  # at most s = 1 liar
    t=st.integers(0, 5),
)
def test_any_arrival_pattern_gives_the_exact_sum_or_no_update(
    arrivals: list[int], garbage: set[int], t: int
) -> None:
    """Whatever subset/order/duplicates arrive, with at most s forged payloads: the model is
    either updated with exactly the clean gradient, or not at all. (Two identical forgeries
    with s = 1 are beyond the code's promise: they look like an honest majority.)"""
    code = make_code("repetition", 7, 1)
    task = _task(7)
    engine = _engine(code, task, rounds=10)
    engine.totals.completed_rounds = t
    w0 = engine.params
    rnd = engine.start_round()
    honest = _payloads(code, task, w0, t)
    for j in arrivals:
        y = np.full(DIM, 7.0, np.float32) if j in garbage else honest[j]
        rnd.offer(j, t, y)
    rec = engine.finish(rnd)
    if rec.ok:
        total = task.partition_gradients(w0, t, range(7)).sum(axis=0, dtype=np.float32)
        expected = SGD(SGDConfig(lr=0.05), DIM).step(w0, total / np.float32(7))
        np.testing.assert_allclose(engine.params, expected, rtol=1e-6, atol=1e-7)
    else:
        assert engine.params is w0


# -- digest-first vote (unit level: the collector's digest and fetch phases) ---------------


def _run_digest_round(
    engine: RoundEngine,
    task: LeastSquaresTask,
    forge: Any = None,
    hosts: dict[int, str] | None = None,
    lie_on_fetch: frozenset = frozenset(),
) -> Any:
    """One digest-first round: every worker sends its digest, the PS asks the planned
    members in turn; ``lie_on_fetch`` members send another payload than they digested."""
    from draco.core.digests import payload_digest

    rnd = engine.start_round()
    assert rnd.digest_mode and rnd.digest_key is not None and len(rnd.digest_key) == 32
    honest = _payloads(engine.code, task, engine.params, rnd.index)
    sent = {}
    for j, y in honest.items():
        attack, _ = rnd.plan.instruction(j)
        if attack is not None and forge is not None:
            y = forge(y)
        sent[j] = y
        d = payload_digest(y, rnd.digest_key, 32)
        offer = rnd.offer_digest(j, rnd.index, d, 0.01, 100, attempt=rnd.attempt)
        assert offer.verdict is Verdict.ACCEPTED
    rnd.plan_fetch(hosts)
    for g in rnd.fetch_groups:
        while (j := rnd.next_candidate(g)) is not None:
            rnd.requested(j, g, 50)
            y = sent[j] + np.float32(1) if j in lie_on_fetch else sent[j]
            assert rnd.check_payload(j, rnd.index, rnd.attempt, y, y.nbytes).verdict is (
                Verdict.ACCEPTED
            )
            if rnd.verify(j, y, payload_digest(y, rnd.digest_key, 32)):
                break
    return engine.finish(rnd, wait_seconds=0.0)


@pytest.mark.parametrize("vote", ["full", "digest"])
def test_a_diverged_model_ends_the_run_in_either_vote(vote: str) -> None:
    """Every honest gradient of a NaN model is NaN. The full vote sees more NaN payloads
    than s; the digest vote sees only one fetched payload per group, but each is backed by
    s+1 equal digests, so an honest worker sent it. Either way: diverged at once."""
    n, s = 15, 2
    task = _task(n)
    engine = _engine(make_code("repetition", n, s), task, vote=vote, max_failed_rounds=5)
    engine.params = np.full(DIM, np.nan, np.float32)
    rec = (_run_digest_round if vote == "digest" else _run_round)(engine, task)
    assert not rec.ok and "diverged" in rec.error and engine.diverged == rec.error
    assert engine.stopped and engine.totals.consecutive_failures == 1


def test_liars_cannot_fake_a_divergence_under_the_digest_vote() -> None:
    """s liars per group digest and deliver NaN: their digests never make a majority, so
    nothing non-finite is verified and the round decodes."""
    n, s = 15, 2
    task = _task(n)
    engine = _engine(
        make_code("repetition", n, s), task, vote="digest", attack=make_attack("constant")
    )
    rec = _run_digest_round(engine, task, forge=lambda y: np.full_like(y, np.nan))
    assert rec.ok and not engine.diverged and rec.adversaries_located


@pytest.mark.parametrize(
    "attack", [None, "constant", "reverse", "gaussian", "sign_flip", "alie", "ipm", "colluding"]
)
def test_digest_vote_follows_the_full_vote_bit_for_bit(attack: str | None) -> None:
    """Same params after every round and the same located liars, including the omniscient
    attacks the PS simulates (rebuilt from the verified payloads)."""
    n, s = 15, 2
    task = _task(n)
    engines = {
        vote: _engine(
            make_code("repetition", n, s),
            task,
            vote=vote,
            attack=None if attack is None else make_attack(attack),
        )
        for vote in ("full", "digest")
    }
    for _ in range(4):
        forge = None
        if attack is not None and not make_attack(attack).omniscient:
            a = make_attack(attack)

            def forge(y: np.ndarray, a: Any = a) -> np.ndarray:
                return a.apply(y, rng=np.random.default_rng(1), n_workers=n, n_adversaries=s)

        full = _run_round(engines["full"], task, forge)
        dig = _run_digest_round(engines["digest"], task, forge)
        assert full.ok and dig.ok
        assert engines["full"].params.tobytes() == engines["digest"].params.tobytes()
        for key in ("adversaries_located", "erasures", "liars", "attack_simulated_at_ps"):
            assert getattr(dig, key) == getattr(full, key), key
        assert dig.vote == "digest" and full.vote == "full"
        # Ingress: n digests + one payload per group, not n payloads.
        assert dig.payload_requests == len(engines["digest"].code.groups)


def test_fetch_spreads_groups_over_hosts_and_rotates_with_the_round() -> None:
    n, s = 15, 2  # groups of 5: (0..4), (5..9), (10..14)
    code = make_code("repetition", n, s)
    task = _task(n)
    engine = _engine(code, task, vote="digest")
    # Host A holds the first member of every group, host B the rest.
    hosts = {j: ("A" if j in (0, 5, 10) else "B") for j in range(n)}
    for _ in range(3):
        rnd_record = _run_digest_round(engine, task, hosts=hosts)
        assert rnd_record.ok
    rnd = engine.start_round()
    for j, y in _payloads(code, task, engine.params, rnd.index).items():
        from draco.core.digests import payload_digest

        assert rnd.digest_key is not None
        rnd.offer_digest(j, rnd.index, payload_digest(y, rnd.digest_key, 32), attempt=0)
    rnd.plan_fetch(hosts)
    firsts = [rnd.next_candidate(g) for g in rnd.fetch_groups]
    # Round 3: group 0 starts its rotation at member 3 (host B); group 1's rotation starts
    # at 9 (B), but host A serves nothing yet, so 5 goes first; group 2: a tie, rotation 10.
    assert firsts == [3, 5, 10]
    rnd.plan_fetch(None)
    # Without hosts: the rotation (round 3) starts at member 3 of group 0.
    assert rnd.next_candidate(0) == code.groups[0][(3 + 0 + 0) % 5]


def test_fetch_liars_are_located_and_requests_are_bounded() -> None:
    n, s = 10, 2
    code = make_code("repetition", n, s)
    task = _task(n)
    # Round 0 asks members 0, 1, 2 of group 0 in that order; 0 and 1 lie on fetch.
    engine = _engine(code, task, vote="digest")
    res = _run_digest_round(engine, task, lie_on_fetch=frozenset({0, 1}))
    assert res.ok and res.adversaries_located == (0, 1)
    assert res.payload_requests == len(code.groups) + 2
    # With at most one request per group, the same liar fails the attempt (model kept).
    from draco.ps.digest_vote import DigestVoteConfig

    engine = _engine(code, task, vote="digest", digest=DigestVoteConfig(max_payload_requests=1))
    before = engine.params.copy()
    res = _run_digest_round(engine, task, lie_on_fetch=frozenset({0}))
    assert not res.ok and "no member of its majority" in res.error
    assert engine.params.tobytes() == before.tobytes() and engine.attempt == 1


def test_backers_whose_digests_came_after_the_plan_are_asked_when_the_planned_ones_fail() -> None:
    """A group is planned at its first s+1 equal digests (the early fetch); when those all
    die or freeze between digest and payload, a member whose equal digest came later serves
    the group in the same attempt (within --max-payload-requests)."""
    from draco.core.digests import payload_digest

    n, s = 10, 2  # groups of 5: (0..4), (5..9)
    code = make_code("repetition", n, s)
    task = _task(n)
    engine = _engine(code, task, vote="digest", digest=DigestVoteConfig(max_payload_requests=4))
    rnd = engine.start_round()
    assert rnd.digest_key is not None
    honest = _payloads(code, task, engine.params, rnd.index)

    def digest(j: int) -> None:
        d = payload_digest(honest[j], rnd.digest_key or b"", 32)
        assert rnd.offer_digest(j, rnd.index, d, attempt=0).verdict is Verdict.ACCEPTED

    for j in (0, 1, 2):
        digest(j)
    assert rnd.group_decided(0)
    rnd.plan_group(0)
    asked = []
    for _ in range(3):  # the planned backers 0, 1, 2 vanish one after the other
        j = rnd.next_candidate(0)
        assert j is not None
        asked.append(j)
        rnd.requested(j, 0, 50)
        rnd.give_up(j, "disconnected before sending its payload")
    assert sorted(asked) == [0, 1, 2]
    assert rnd.next_candidate(0) is None  # nobody else backs the majority yet
    digest(4)
    digest(3)
    assert rnd.next_candidate(0) == 3  # id order among the late backers
    rnd.requested(3, 0, 50)
    # That was the fourth request, the limit: member 4 (a backer too) is not asked.
    assert rnd.next_candidate(0) is None and len(rnd.asked) == 4
    y = honest[3]
    assert rnd.check_payload(3, rnd.index, 0, y).verdict is Verdict.ACCEPTED
    assert rnd.verify(3, y, payload_digest(y, rnd.digest_key, 32))
    assert rnd.verified[0] is y and not rnd.fetch_liars


def test_digest_offer_validation() -> None:
    code = make_code("repetition", 5, 1)
    task = _task(5)
    engine = _engine(code, task, vote="digest")
    rnd = engine.start_round()
    d = b"\x01" * 32
    assert rnd.offer_digest(0, 0, d, attempt=0).verdict is Verdict.ACCEPTED
    assert rnd.offer_digest(0, 0, d, attempt=0).verdict is Verdict.VIOLATION  # duplicate
    assert rnd.offer_digest(1, 0, b"\x01" * 16, attempt=0).verdict is Verdict.VIOLATION
    y = np.zeros(DIM, np.float32)
    assert rnd.offer(2, 0, y, attempt=0).verdict is Verdict.VIOLATION  # full payload
    assert rnd.offer_digest(3, 1, d, attempt=0).verdict is Verdict.VIOLATION  # future round
    # A payload nobody asked for is stale (the Connection already refuses unsolicited ones).
    rnd.plan_fetch()
    assert rnd.check_payload(4, 0, 0, y).verdict is Verdict.STALE
    full = _engine(code, task).start_round()
    assert full.offer_digest(0, 0, d, attempt=0).verdict is Verdict.VIOLATION


@pytest.mark.parametrize(
    ("name", "options"),
    [("cyclic", {}), ("none", {"aggregator": "mean"}), ("repetition", {"rtol": 0.1})],
)
def test_digest_vote_needs_the_exact_repetition_vote(name: str, options: dict) -> None:
    code = make_code(name, 5, 1, **options)
    with pytest.raises(ConfigError, match="--vote digest"):
        _engine(code, _task(code.n_partitions), vote="digest")
    with pytest.raises(ConfigError, match="--vote"):
        _engine(make_code("repetition", 5, 1), _task(5), vote="fast")
