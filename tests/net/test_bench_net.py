"""``draco-bench net`` on tiny sizes: one JSON object with both throughputs and their ratio."""

from __future__ import annotations

import json

import pytest

from draco.bench import net
from draco.cli import bench_net
from draco.errors import ConfigError


def test_bench_net_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    bench_net.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["net", "--workers", "3", "--dim", "1000", "--repeats", "2", "--json"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["workers"] == 3 and result["dim"] == 1000 and result["repeats"] == 2
    assert result["project_gbps"] > 0 and result["raw_gbps"] > 0
    assert result["ratio"] == pytest.approx(result["project_gbps"] / result["raw_gbps"], rel=1e-2)
    assert len(result["project_seconds"]) == len(result["raw_seconds"]) == 2
    # The same bytes on both paths: n frames of one float32 payload (+ prefix and header).
    assert 3 * 4000 < result["bytes_per_round"] < 3 * 4200


def test_bench_net_trials_alternate_and_report_each_ratio() -> None:
    result = net.measure(2, 500, 2, trials=3)
    ratios = [t["ratio"] for t in result["per_trial"]]
    assert result["ratios"] == ratios and len(ratios) == 3
    assert result["ratio"] == sorted(ratios)[1]
    assert result["ratio_min"] == min(ratios) and result["ratio_max"] == max(ratios)
    for t in result["per_trial"]:
        assert t["ratio"] == pytest.approx(t["project_gbps"] / t["raw_gbps"], rel=1e-2)
        assert t["project_cpu_ms"] > 0 and t["raw_cpu_ms"] >= 0
        assert t["project_minflt"] >= 0 and t["raw_minflt"] >= 0
        assert 0 < t["project_offer_ms"] < 1e3 * max(result["project_seconds"])
    assert len(result["project_seconds"]) == len(result["raw_seconds"]) == 6
    assert len(result["loadavg_before"]) == len(result["loadavg_after"]) == 3


def test_bench_net_raw_loop_baseline_reports_its_own_ratio() -> None:
    result = net.measure(2, 500, 2, trials=2, raw_loop=True)
    assert len(result["raw_loop_seconds"]) == 4 and result["raw_loop_gbps"] > 0
    for t in result["per_trial"]:
        assert t["ratio_vs_raw_loop"] == pytest.approx(
            t["project_gbps"] / t["raw_loop_gbps"], rel=1e-2
        )
        assert t["raw_loop_cpu_ms"] > 0
    assert "raw_loop_gbps" not in net.measure(2, 500, 1)


def test_bench_net_without_payload_checks_spends_no_time_in_offer() -> None:
    result = net.measure(2, 500, 2, checks=False)
    assert result["payload_checks"] is False and result["ratio"] > 0
    assert result["project_offer_ms_per_round"] == 0.0


def test_bench_net_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        net.measure(0, 10, 1)
    with pytest.raises(ConfigError, match="trials"):
        net.measure(2, 10, 1, trials=0)


@pytest.mark.parametrize("vote", ["full", "digest"])
def test_bench_net_vote_rounds(vote: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Whole PS rounds on loopback: the ingress ratio is 1 for the full vote and one
    payload per group (+ digests) for the digest vote."""
    from draco.cli import bench

    argv = ["net", "--vote", vote, "--workers", "7", "--adversaries", "1", "--dim", "20000"]
    assert bench.main([*argv, "--rounds", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["vote"] == vote and result["rounds_measured"] == 2
    ratio = result["ingress_ratio"]["median"]
    if vote == "full":
        # Socket bytes per round: answers after an early close land in the next round.
        assert 0.5 < ratio < 1.5 and result["payload_requests"] == [0, 0]
    else:
        # 2 groups of 7 workers: 2 payloads of 7, plus 7 digest frames (~100 bytes each).
        assert 2 / 7 <= ratio < 2 / 7 + 0.01 and result["payload_requests"] == [2, 2]
        assert result["hash_seconds"]["median"] > 0


def test_bench_net_vote_refuses_impossible_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    from draco.cli import bench

    assert bench.main(["net", "--vote", "digest", "--workers", "2", "--adversaries", "1"]) == 2
    assert "draco-bench: error:" in capsys.readouterr().err
