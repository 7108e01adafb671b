"""NaN/Inf payloads now reach the decoders (``RoundCollector.offer`` no longer reads values).

Every case runs the real collector and the real decoders twice on the same arrivals: as the
PS does now (every well-formed payload offered) and as it did when ``offer`` screened
payloads (a payload holding NaN/Inf erased on arrival). Readiness after every arrival, the
record's erasures, located liars and per-worker metrics, and the model must be the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from draco.core.attacks import make_attack
from draco.core.codes import CyclicCode, make_code
from draco.ps.collector import Verdict
from draco.ps.engine import RoundEngine
from draco.ps.optim import SGD, SGDConfig
from draco.ps.record import AttemptRecord
from draco.tasks.lstsq import LeastSquaresTask

DIM = 8
#: Large enough for the cyclic decoder's fast path (>= 8 projection blocks).
BIG = 8 * (1 << 16) + 5

Payloads = dict[int, np.ndarray]
RECORD_KEYS = (
    "failed",
    "erasures",
    "adversaries_located",
    "received",
    "worker_compute_seconds",
    "worker_bytes_in",
    "compute_clipped",
)


def _engine(code: Any, params: np.ndarray, **kw: Any) -> RoundEngine:
    kw.setdefault("rounds", 10)
    kw.setdefault("decode_rng", lambda: np.random.default_rng(0))
    return RoundEngine(code, params.copy(), SGD(SGDConfig(lr=0.05), params.size), **kw)


def _lstsq(code: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Payloads]]:
    task = LeastSquaresTask(DIM, code.n_workers, 4, seed=3)

    def honest(params: np.ndarray) -> Payloads:
        return {
            j: code.encode(j, task.partition_gradients(params, 0, code.partitions_of(j)))
            for j in range(code.n_workers)
        }

    return task.initial_params(), honest


def _run(
    engine: RoundEngine, sent: Payloads, order: Sequence[int], screened: bool
) -> tuple[AttemptRecord, list[bool]]:
    """One round: ``sent[j]`` arrive in ``order``; the record and ``should_close`` after each.

    ``screened``: the former ``offer``, which erased a payload holding NaN/Inf on arrival.
    """
    rnd = engine.start_round()
    ready = []
    for j in order:
        y = sent[j]
        rnd.sent(j, 100, at=0.0)
        if screened and not np.isfinite(y).all():
            rnd.erase(j, "non-finite values")
        else:
            offer = rnd.offer(j, rnd.index, y, 0.01 * (j + 1), y.nbytes, received_at=1.0)
            assert offer.verdict is Verdict.ACCEPTED
        ready.append(rnd.should_close)  # complete or ready: what closes the round
    return engine.finish(rnd, wait_seconds=0.0), ready


def _same_as_screened(
    code: Any,
    params: np.ndarray,
    sent: Payloads,
    order: Sequence[int] | None = None,
    **kw: Any,
) -> tuple[AttemptRecord, list[bool]]:
    """Run both ways; assert readiness, record and model agree; return the new way's."""
    order = list(sent) if order is None else list(order)
    lazy, screened = _engine(code, params, **kw), _engine(code, params, **kw)
    rec, ready = _run(lazy, sent, order, screened=False)
    ref, ref_ready = _run(screened, sent, order, screened=True)
    assert ready == ref_ready
    for key in RECORD_KEYS:
        assert getattr(rec, key) == getattr(ref, key), key
    assert lazy.params.tobytes() == screened.params.tobytes()
    return rec, ready


def _nan_at(y: np.ndarray, i: int, value: float = np.nan) -> np.ndarray:
    out = y.copy()
    out[i] = value
    return out


# ----------------------------------------------------------------------------- repetition


def test_repetition_minority_nan_and_inf_are_erasures() -> None:
    code = make_code("repetition", 15, 2)  # groups of 5, s+1 = 3
    params, honest = _lstsq(code)
    sent = honest(params)
    sent[0] = _nan_at(sent[0], 3)  # a minority of group 0, first to arrive
    sent[7] = np.full(DIM, np.inf, np.float32)
    sent[8] = _nan_at(sent[8], 0, -np.inf)
    sent[12] = -sent[12]  # a finite liar: located, as always
    rec, ready = _same_as_screened(code, params, sent)
    assert rec.ok and ready[-1]
    assert rec.erasures == (0, 7, 8)
    assert rec.adversaries_located == (12,)
    assert rec.worker_compute_seconds[0] is None  # not used: not in the metrics


@pytest.mark.parametrize("identical", [True, False])
def test_repetition_nan_majority_of_a_group_fails_without_an_early_close(
    identical: bool,
) -> None:
    """s+1 NaN payloads in one group: never ready (the decode would fail), then a failed
    round with them as erasures, whether or not the NaN payloads are bit-identical."""
    code = make_code("repetition", 15, 2)
    params, honest = _lstsq(code)
    sent = honest(params)
    for j in (0, 1, 2):
        sent[j] = np.full(DIM, np.nan, np.float32) if identical else _nan_at(sent[j], j)
    rec, ready = _same_as_screened(code, params, sent, order=[0, 1, 2, *range(5, 15), 3, 4])
    assert not rec.ok and not any(ready[:-1])  # closes only once every worker answered
    assert rec.erasures == (0, 1, 2)


def test_repetition_huge_finite_liar_is_located_not_erased() -> None:
    code = make_code("repetition", 15, 2)
    params, honest = _lstsq(code)
    sent = honest(params)
    sent[4] = np.full(DIM, 1e38, np.float32)
    sent[5] = np.full(DIM, np.finfo(np.float32).max, np.float32)  # its sum overflows
    rec, _ = _same_as_screened(code, params, sent)
    assert rec.ok and rec.adversaries_located == (4, 5) and rec.erasures == ()


@pytest.mark.parametrize("attack", ["alie", "ipm", "colluding"])
def test_omniscient_attack_sees_the_finite_honest_payloads_only(attack: str) -> None:
    """The PS-simulated attack's statistic leaves NaN payloads out, as when they were
    screened (colluding's median would not propagate a NaN but shift by a row), and a
    scheduled liar whose own payload is NaN stays an erasure."""
    code = make_code("repetition", 15, 2)
    params, honest = _lstsq(code)
    engine = _engine(code, params, attack=make_attack(attack))
    liars = sorted(engine.plan(0).liars)
    others = [j for j in range(15) if j not in liars]
    sent = honest(params)
    sent[liars[0]] = _nan_at(sent[liars[0]], 1)
    sent[others[0]] = _nan_at(sent[others[0]], 2)
    rec, _ = _same_as_screened(code, params, sent, attack=make_attack(attack))
    assert {liars[0], others[0]} <= set(rec.erasures)


def test_baseline_nan_is_an_erasure() -> None:
    code = make_code("none", 7, 1, aggregator="median")
    params, honest = _lstsq(code)
    sent = honest(params)
    sent[3] = _nan_at(sent[3], 0)
    rec, ready = _same_as_screened(code, params, sent)
    assert rec.ok and rec.erasures == (3,) and ready[-1]


@pytest.mark.parametrize("aggregator", ["mean", "median", "krum", "centered_clipping"])
def test_a_diverged_model_is_named_when_more_payloads_are_nan_than_liars_can_send(
    aggregator: str,
) -> None:
    """Every honest gradient of a diverged model is NaN (the mean under ``reverse``): the
    round fails with a DecodeError (not a ValueError out of the aggregator: the receive path
    no longer screens NaN), and its error says why instead of only "no usable payload"."""
    code = make_code("none", 7, 1, aggregator=aggregator)
    params, honest = _lstsq(code)
    sent = {j: np.full(DIM, np.nan, np.float32) for j in honest(params)}
    rec, _ = _run(_engine(code, params), sent, list(sent), screened=False)
    assert not rec.ok and "7 of 7 payloads are NaN/Inf" in rec.error
    assert "diverged" in rec.error


def test_a_diverged_model_stops_the_run_at_its_first_attempt() -> None:
    """A retry would recompute the same NaN gradients from the same parameters: the engine
    stops at once (``max_failed_rounds`` is not spent), keeping its model."""
    code = make_code("none", 7, 1, aggregator="mean")
    params, honest = _lstsq(code)
    engine = _engine(code, params, max_failed_rounds=5)
    _run(engine, honest(params), range(7), screened=False)  # one good round first
    before = engine.params.copy()
    sent = {j: np.full(DIM, np.nan, np.float32) for j in range(7)}
    rec, _ = _run(engine, sent, range(7), screened=False)
    assert not rec.ok and engine.diverged == rec.error and "diverged" in rec.error
    assert engine.stopped and engine.finished and engine.totals.consecutive_failures == 1
    assert np.array_equal(engine.params, before) and engine.next_round == 1


def test_s_nan_payloads_do_not_stop_the_run() -> None:
    """Up to s NaN payloads are liars' business: the round still decodes, no divergence."""
    code = make_code("repetition", 15, 2)
    params, honest = _lstsq(code)
    engine = _engine(code, params)
    sent = honest(params)
    sent[0] = sent[1] = np.full(DIM, np.nan, np.float32)
    rec, _ = _run(engine, sent, range(15), screened=False)
    assert rec.ok and not engine.diverged and not engine.stopped


def test_an_update_that_overflows_the_model_is_refused_and_ends_the_run() -> None:
    """Finite payloads whose mean overflows float32 parameters: the update is not applied
    (the last finite model stays, never a NaN one) and the run ends as diverged."""
    code = make_code("none", 7, 1, aggregator="mean")
    params, _ = _lstsq(code)
    params = np.full_like(params, np.float32(3.4e38))  # float32 max: 3.403e38
    engine = _engine(code, params)
    sent = {j: np.full(DIM, -1e37, np.float32) for j in range(7)}  # their sum is finite
    rec, _ = _run(engine, sent, range(7), screened=False)
    assert not rec.ok and "NaN/Inf" in rec.error and engine.diverged == rec.error
    assert engine.stopped and np.array_equal(engine.params, params)
    assert np.isfinite(engine.params).all()


def test_nan_payloads_within_the_liars_budget_do_not_claim_divergence() -> None:
    code = make_code("repetition", 15, 2)
    params, honest = _lstsq(code)
    sent = honest(params)
    for j in (0, 1):  # s = 2 NaN payloads: liars can send those
        sent[j] = np.full(DIM, np.nan, np.float32)
    sent[5] = np.full(DIM, 5.0, np.float32)  # and a lie in another group: still decodes
    rec, _ = _run(_engine(code, params), sent, list(sent), screened=False)
    assert rec.ok and "diverged" not in rec.error


# ----------------------------------------------------------------------------- cyclic


def _cyclic_round(n: int, s: int, d: int, seed: int = 5) -> tuple[CyclicCode, np.ndarray, Payloads]:
    code = make_code("cyclic", n, s)
    assert isinstance(code, CyclicCode)
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((n, d)).astype(np.float32)
    sent = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(n)}
    return code, np.zeros(d, np.float32), sent


@pytest.mark.parametrize("d", [DIM * 64, BIG])
def test_cyclic_nan_first_then_early_close(d: int) -> None:
    """A NaN payload arrives first; worker 8 never does. With s = 2 the round closes early
    once the others are in (NaN row + missing row = 2 erasures <= s), exactly when it did
    with the NaN payload screened; the NaN row is an erasure of the decode."""
    code, params, sent = _cyclic_round(9, 2, d)
    sent[3] = _nan_at(sent[3], d // 2)
    order = [3, 0, 1, 2, 4, 5, 6, 7]
    rec, ready = _same_as_screened(code, params, {j: sent[j] for j in order}, order)
    assert ready[-1] and not ready[-2]
    assert rec.ok and rec.erasures == (3, 8)


def test_cyclic_nan_over_budget_waits_for_the_rest() -> None:
    """s = 1: a NaN row and a missing row are 2 erasures > s: not ready until every worker
    answered (as when the NaN payload was screened)."""
    code, params, sent = _cyclic_round(5, 1, DIM * 64)
    sent[0] = _nan_at(sent[0], 7, np.inf)
    rec, ready = _same_as_screened(code, params, sent, order=[0, 1, 2, 3, 4])
    assert not any(ready[:-1])
    assert rec.ok and rec.erasures == (0,)


@pytest.mark.parametrize("d", [DIM * 64, BIG])
def test_cyclic_liar_with_nan_outside_the_sample_is_an_erasure(d: int) -> None:
    """A liar whose lie the sample sees but whose NaN it misses: left out on the sample,
    then read in full: an erasure (as screened), not a located liar."""
    code, params, sent = _cyclic_round(9, 2, d)
    sent[4] = (-100 * sent[4]).astype(sent[4].dtype)
    sent[4][d - 3] = np.nan  # the last coordinates are never in the fast path's sample
    sent[6] = (-100 * sent[6]).astype(sent[6].dtype)  # a finite liar
    rec, _ = _same_as_screened(code, params, sent)
    assert rec.ok
    assert rec.erasures == (4,) and rec.adversaries_located == (6,)


def test_cyclic_nan_in_an_honest_row_outside_the_sample() -> None:
    code, params, sent = _cyclic_round(9, 2, BIG)
    sent[2] = _nan_at(sent[2], BIG - 2)
    rec, _ = _same_as_screened(code, params, sent)
    assert rec.ok and rec.erasures == (2,) and rec.adversaries_located == ()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the sample's sum
@pytest.mark.parametrize("d", [DIM * 64, BIG])
def test_cyclic_huge_finite_liar_is_used_and_classified_as_before(d: int) -> None:
    """A liar sending 1e38 (finite: ``offer`` always accepted it). The full path (small d,
    float64 projection) locates it; the fast path's float32 sample overflows and erases it,
    as it did before. Either way it is no NaN/Inf payload: its metrics are kept."""
    code, params, sent = _cyclic_round(9, 2, d)
    sent[5] = np.full(d, 1e38, sent[5].dtype)
    rec, _ = _same_as_screened(code, params, sent)
    assert rec.ok and rec.worker_compute_seconds[5] is not None
    located, erased = rec.adversaries_located, rec.erasures
    assert (located, erased) == (((5,), ()) if d < BIG else ((), (5,)))


# ----------------------------------------------------------------------------- digest vote


def test_digest_vote_names_a_nan_minority_a_liar_where_the_full_vote_erases_it() -> None:
    """The rule of docs/protocol.md: the PS never fetches a minority member's payload, so a
    digest that differs from the majority names its sender a liar whatever the payload held;
    the full vote reads it and reports a NaN payload as an erasure. Same model."""
    from draco.core.digests import payload_digest

    code = make_code("repetition", 15, 2)
    params, honest = _lstsq(code)
    sent = honest(params)
    sent[6] = _nan_at(sent[6], 1)
    full = _engine(code, params)
    rec_full, _ = _run(full, sent, list(range(15)), screened=False)
    digest = _engine(code, params, vote="digest")
    rnd = digest.start_round()
    assert rnd.digest_key is not None
    for j, y in sent.items():
        d = payload_digest(y, rnd.digest_key, 32)
        assert rnd.offer_digest(j, 0, d, 0.01, 100).verdict is Verdict.ACCEPTED
    rnd.plan_fetch()
    for g in rnd.fetch_groups:
        j = rnd.next_candidate(g)
        assert j is not None
        rnd.requested(j, g, 50)
        assert rnd.check_payload(j, 0, 0, sent[j]).verdict is Verdict.ACCEPTED
        assert rnd.verify(j, sent[j], payload_digest(sent[j], rnd.digest_key, 32))
    rec_digest = digest.finish(rnd)
    assert rec_full.ok and rec_digest.ok
    assert rec_full.erasures == (6,) and rec_full.adversaries_located == ()
    assert rec_digest.erasures == () and rec_digest.adversaries_located == (6,)
    assert full.params.tobytes() == digest.params.tobytes()


def test_cyclic_nan_outside_the_sample_stays_on_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rows that made the recovery check non-finite are found by reading only those
    blocks and erased; the fast path runs again without them (no full projection)."""
    from draco.core import cyclic_decoder

    full_projections = []
    project = cyclic_decoder.project_rows

    def counting(rows: Any, d: int, rng: Any, blocks: Any = None) -> Any:
        full_projections.append(blocks is None)
        return project(rows, d, rng, blocks)

    monkeypatch.setattr(cyclic_decoder, "project_rows", counting)
    code, _, sent = _cyclic_round(9, 2, BIG)
    sent[2] = _nan_at(sent[2], BIG - 2)
    sent[7] = (-100 * sent[7]).astype(sent[7].dtype)
    result = code.decode(sent, rng=np.random.default_rng(1))
    assert result.erasures == {2} and result.adversaries == {7}
    assert full_projections and not any(full_projections)
