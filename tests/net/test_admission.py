"""The sans-IO admission policy, fed events by hand (no sockets, no clock)."""

from __future__ import annotations

import logging

import pytest

from draco.net.admission import Admission, AdmissionLimits, RateLimitedLog


def policy(**kw: object) -> Admission:
    base: dict[str, object] = {"max_pending": 8, "max_pending_per_source": 4}
    base.update(kw)
    return Admission(AdmissionLimits(**base), n_workers=6)  # type: ignore[arg-type]


def test_per_source_limit_evicts_the_oldest_idle_of_that_source() -> None:
    adm = policy()
    for k in range(4):
        assert adm.open(("a", k), "10.0.0.1", now=k).admit
    d = adm.open(("a", 4), "10.0.0.1", now=4)
    assert d.admit and d.evict == (("a", 0),)  # the oldest, not the newest, goes
    d = adm.open(("a", 5), "10.0.0.1", now=5)
    assert d.evict == (("a", 1),)
    assert adm.pending_from("10.0.0.1") == 4 and adm.counters["evicted"] == 2


def test_a_flood_far_above_the_limits_never_holds_more_than_the_limits() -> None:
    adm = policy()
    held: set[object] = set()
    for k in range(10_000):
        d = adm.open(k, f"10.0.0.{k % 3}", now=k)
        held -= set(d.evict)
        if d.admit:
            held.add(k)
        assert adm.pending == len(held) <= 8
        assert all(adm.pending_from(f"10.0.0.{i}") <= 4 for i in range(3))
    # The newest connections are the ones held.
    assert held >= {9_999, 9_998, 9_997}


def test_global_limit_takes_room_from_the_heaviest_source() -> None:
    adm = policy(max_pending=6, max_pending_per_source=4)
    for k in range(4):
        adm.open(("flood", k), "10.0.0.66", now=k)
    adm.open("w1", "10.0.0.1", now=10)
    adm.open("w2", "10.0.0.2", now=11)
    d = adm.open("w3", "10.0.0.3", now=12)  # full: the flooder loses its oldest, not w1
    assert d.admit and d.evict == (("flood", 0),)


def test_a_hello_for_a_free_seat_is_never_evicted_for_idle_newcomers() -> None:
    adm = policy()
    adm.open("worker3", "10.0.0.1", now=0)
    assert adm.hello("worker3", 3, seat_free=True, now=0.01)
    for k in range(100):
        d = adm.open(k, "10.0.0.1", now=1 + k)  # an idle flood from the worker's own host
        assert "worker3" not in d.evict
    assert adm.is_reserved("worker3")


def test_reserved_slots_are_one_per_id_and_at_most_half_a_source() -> None:
    adm = policy()
    for k in range(4):
        adm.open(k, "10.0.0.9", now=k)
    assert adm.hello(0, 1, seat_free=True, now=5)
    assert not adm.hello(1, 1, seat_free=True, now=5)  # id 1 already reserved
    assert not adm.hello(1, 99, seat_free=True, now=5)  # not an id of this run
    assert not adm.hello(1, 2, seat_free=False, now=5)  # seat held: nothing to reserve
    assert adm.hello(1, 2, seat_free=True, now=5)
    assert not adm.hello(2, 3, seat_free=True, now=5)  # half of 4 slots already reserved
    # So a source full of Hellos still has idle slots to evict: a newcomer always gets in.
    d = adm.open("new", "10.0.0.9", now=6)
    assert d.admit and d.evict == (2,)
    # Releasing the holder frees the id's reservation.
    adm.release(0)
    adm.open("again", "10.0.0.9", now=7)
    assert adm.hello("again", 1, seat_free=True, now=7)


def test_refused_only_when_every_held_slot_is_reserved() -> None:
    adm = Admission(AdmissionLimits(max_pending=2, max_pending_per_source=2), n_workers=6)
    adm.open("a", "10.0.0.1", now=0)
    adm.open("b", "10.0.0.2", now=0)
    adm.hello("a", 0, seat_free=True, now=0)
    adm.hello("b", 1, seat_free=True, now=0)
    d = adm.open("c", "10.0.0.3", now=1)
    assert not d.admit and d.evict == () and adm.counters["refused"] == 1


def test_auth_failures_are_throttled_per_source_after_the_burst() -> None:
    adm = policy(auth_failure_burst=3, auth_failure_rate=2.0)
    now = 100.0
    for _ in range(3):
        assert adm.auth_delay("10.0.0.66", now) == 0
        adm.auth_failed("10.0.0.66", now)
    assert adm.auth_delay("10.0.0.66", now) == 0  # the burst fits the tolerance exactly
    adm.auth_failed("10.0.0.66", now)
    delay = adm.auth_delay("10.0.0.66", now)
    assert delay == pytest.approx(0.5)  # one more failure costs 1 / rate
    assert adm.auth_delay("10.0.0.7", now) == 0  # another source is not affected
    # 300 failures at once: the next answer waits for the whole debt at 2 per second.
    for _ in range(300):
        adm.auth_failed("10.0.0.66", now)
    assert adm.auth_delay("10.0.0.66", now) == pytest.approx(150.5)
    assert adm.counters["auth_failed"] == 304 and adm.counters["throttled"] == 2
    # The debt drains with time.
    assert adm.auth_delay("10.0.0.66", now + 151) == 0


def test_a_throttled_source_reserves_no_slot() -> None:
    adm = policy(auth_failure_burst=1, auth_failure_rate=1.0)
    adm.auth_failed("10.0.0.66", 0.0)
    adm.auth_failed("10.0.0.66", 0.0)
    adm.open("x", "10.0.0.66", now=0.0)
    assert not adm.hello("x", 0, seat_free=True, now=0.0)
    assert adm.hello("x", 0, seat_free=True, now=5.0)


def test_the_source_table_is_bounded() -> None:
    adm = policy(max_sources=10)
    for k in range(1000):
        adm.auth_failed(f"10.1.{k // 256}.{k % 256}", float(k))
    assert len(adm._sources) <= 10


def test_release_is_idempotent_and_unknown_keys_are_ignored() -> None:
    adm = policy()
    adm.open("a", "10.0.0.1", now=0)
    adm.release("a")
    adm.release("a")
    adm.release("never")
    assert adm.pending == 0 and adm.pending_from("10.0.0.1") == 0
    assert not adm.hello("a", 0, seat_free=True, now=0)


@pytest.mark.parametrize(
    "kw",
    [
        {"max_pending": 0},
        {"max_pending_per_source": 0},
        {"auth_failure_burst": 0},
        {"auth_failure_rate": 0.0},
        {"auth_failure_rate": float("inf")},
        {"max_sources": 0},
    ],
)
def test_limits_are_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AdmissionLimits(**kw)  # type: ignore[arg-type]


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("draco.test.ratelimit")
    say = RateLimitedLog(logger, interval=3600)
    with caplog.at_level(logging.INFO, logger=logger.name):
        assert say(logging.WARNING, "evict", "evicted %s", "a")
        for k in range(1000):
            assert not say(logging.WARNING, "evict", "evicted %s", k)
        assert say(logging.WARNING, "refuse", "refused %s", "b")  # another kind: own budget
    assert [r.getMessage() for r in caplog.records] == ["evicted a", "refused b"]
    say._last["evict"] = -1e9  # the interval passed
    with caplog.at_level(logging.INFO, logger=logger.name):
        assert say(logging.WARNING, "evict", "evicted %s", "c")
    assert "and 1000 more like it" in caplog.records[-1].getMessage()


def test_server_limits_validate_the_admission_flags() -> None:
    from draco.errors import ConfigError
    from draco.ps.config import ServerLimits

    for bad in (
        {"max_pending_per_source": 0},
        {"auth_failure_burst": 0},
        {"auth_failure_rate": 0.0},
        {"auth_failure_rate": float("nan")},
        {"auth_failure_rate": True},
    ):
        with pytest.raises(ConfigError, match="--"):
            ServerLimits(**bad)  # type: ignore[arg-type]


def test_draco_ps_has_the_admission_flags() -> None:
    from draco.cli.ps import build_parser
    from draco.ps.config import PSConfig

    args = build_parser().parse_args(
        ["--max-pending-per-source", "3", "--max-pending-handshakes", "9",
         "--auth-failure-burst", "4", "--auth-failure-rate", "0.5"]
    )  # fmt: skip
    config = PSConfig.from_args(args, {"model": "lstsq"})
    lim = config.limits
    assert (lim.max_pending_per_source, lim.max_pending_handshakes) == (3, 9)
    assert (lim.auth_failure_burst, lim.auth_failure_rate) == (4, 0.5)
    assert PSConfig.from_dict(config.to_dict()).limits == lim  # saved with the run
