"""``draco-bench net`` on tiny sizes: one JSON object with both throughputs and their ratio."""

from __future__ import annotations

import json

import pytest

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


def test_bench_net_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        bench_net.measure(0, 10, 1)
