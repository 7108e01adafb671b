"""Cluster time per round (docs/cluster_time.md): its definition, and untrusted compute times."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from draco.core.codes import make_code
from draco.net import messages as m
from draco.ps.cluster_time import cluster_seconds, transfer_seconds
from draco.ps.collector import Verdict
from draco.ps.engine import RoundEngine
from draco.ps.optim import SGD, SGDConfig
from draco.tasks.lstsq import LeastSquaresTask

DIM = 8


def check_definition(record: dict[str, Any]) -> None:
    """``cluster_seconds`` recomputed from the same record's own fields, independently."""
    gbps = record["link_gbps"]
    used = [j for j, c in enumerate(record["worker_compute_seconds"]) if c is not None]
    assert len(used) == record["received"]
    paths = []
    for j in used:
        nbytes = record["worker_bytes_in"][j] + record["worker_bytes_out"][j]
        paths.append(record["worker_compute_seconds"][j] + nbytes * 8 / (gbps * 1e9))
    expected = max(paths, default=0.0) + record["decode_seconds"] + record["update_seconds"]
    assert record["cluster_seconds"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert record["compute_seconds"] == max(
        (record["worker_compute_seconds"][j] for j in used), default=0.0
    )
    if used:
        assert record["critical_worker"] in used


def test_cluster_seconds_helper() -> None:
    # 1 MB at 8 Gbit/s = 1 ms; worker 1 is on the critical path.
    assert transfer_seconds(1e6, 8.0) == pytest.approx(1e-3)
    total, who = cluster_seconds({0: 0.5, 1: 0.5}, {0: 0, 1: 1_000_000}, 8.0, 0.25)
    assert who == 1 and total == pytest.approx(0.5 + 1e-3 + 0.25)
    assert cluster_seconds({}, {}, 10.0, 0.1) == (pytest.approx(0.1), None)


def _engine(n: int, s: int, **kw: Any) -> tuple[RoundEngine, LeastSquaresTask]:
    code = make_code("repetition", n, s)
    task = LeastSquaresTask(DIM, code.n_partitions, 4, seed=3)
    engine = RoundEngine(
        code,
        task.initial_params(),
        SGD(SGDConfig(lr=0.05), task.dim),
        rounds=5,
        decode_rng=lambda: np.random.default_rng(0),
        **kw,
    )
    return engine, task


@pytest.mark.parametrize("lie", [1e300, math.inf, math.nan, -5.0, "junk"])
def test_hostile_compute_time_is_bounded_by_what_the_ps_observed(lie: Any) -> None:
    """A worker's report is clipped to the wall time between its RoundStart and its payload."""
    engine, task = _engine(7, 1, link_gbps=1.0)
    rnd = engine.start_round()
    for j in range(7):
        rnd.sent(j, 1000, at=100.0)
    for j in range(7):
        g = task.partition_gradients(engine.params, 0, engine.code.partitions_of(j))
        y = engine.code.encode(j, g)
        reported = lie if j == 3 else 0.25
        # arrives 0.5 s after its RoundStart
        verdict = rnd.offer(j, 0, y, reported, 500, received_at=100.5).verdict  # type: ignore[arg-type]
        assert verdict is Verdict.ACCEPTED
    record = dataclasses.asdict(engine.finish(rnd))
    check_definition(record)
    c3 = record["worker_compute_seconds"][3]
    assert 0.0 <= c3 <= 0.5
    assert record["compute_clipped"] == (3,)
    assert record["compute_seconds"] <= 0.5
    # The honest ones are taken as reported; the liar cannot push the round past 0.5 s +
    # transfer + PS time.
    assert record["worker_compute_seconds"][0] == 0.25
    bound = 0.5 + transfer_seconds(1500, 1.0) + record["decode_seconds"] + record["update_seconds"]
    assert record["cluster_seconds"] <= bound + 1e-12


def test_only_the_payloads_the_round_used_count() -> None:
    """A straggler cut off by the early close, and an erased payload, are not on the path."""
    engine, task = _engine(7, 1)
    rnd = engine.start_round()
    for j in range(7):
        rnd.sent(j, 1000, at=0.0)
    for j in range(6):
        g = task.partition_gradients(engine.params, 0, engine.code.partitions_of(j))
        y = engine.code.encode(j, g)
        if j == 5:
            y = np.full_like(y, np.nan)  # an erasure: not used
        rnd.offer(j, 0, y, 0.001 * (j + 1), 500, received_at=10.0)
    record = dataclasses.asdict(engine.finish(rnd))
    check_definition(record)
    assert record["worker_compute_seconds"][5] is None
    assert record["worker_compute_seconds"][6] is None
    assert record["compute_seconds"] == pytest.approx(0.005)


async def test_server_records_satisfy_the_definition_and_bound_a_liar() -> None:
    """Real sockets: a worker reporting 1e300 s of compute does not reach the metrics."""
    from test_server import TIMEOUT, Recorder, honest_worker, make_server

    rec = Recorder()
    server, task = make_server(n=7, s=1, rounds=4, hooks=rec)
    await server.start()

    def brag(t: int, y: np.ndarray) -> Any:
        return m.Gradient(round_index=t, payload=y, compute_seconds=1e300)

    workers = [
        asyncio.create_task(honest_worker(server, task, j, misbehave=brag if j == 2 else None))
        for j in range(7)
    ]
    outcome = await asyncio.wait_for(server.serve(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*workers), TIMEOUT)
    assert outcome.completed
    assert len(rec.records) == 4
    for r in rec.records:
        check_definition(r)
        assert r["compute_seconds"] <= r["wall_seconds"]
        assert r["cluster_seconds"] < r["wall_seconds"] + 1.0
        if r["worker_compute_seconds"][2] is not None:
            assert 2 in r["compute_clipped"]
        assert r["ps_cpu_seconds"] >= r["decode_cpu_seconds"] >= 0.0
