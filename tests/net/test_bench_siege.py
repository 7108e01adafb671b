"""``draco-bench siege`` at a tiny size: real draco-ps / draco-worker processes and a flood."""

from __future__ import annotations

import argparse
import json

import pytest

from draco.bench import siege
from draco.cli import bench_siege
from draco.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_siege.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["siege", *argv])


@pytest.mark.e2e
def test_bench_siege_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(
        "--workers", "3", "--adversaries", "1", "--rounds", "30", "--warmup", "5",
        "--floods", "40", "--repeats", "1", "--json",
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    alone, flood = result["alone"], result["flood_40"]
    assert alone["rounds_per_second_median"] > 0 and flood["rounds_per_second_median"] > 0
    assert flood["ratio"] == pytest.approx(
        flood["rounds_per_second_median"] / alone["rounds_per_second_median"], rel=1e-2
    )
    assert flood["same_model_as_alone"]  # the flood changed nothing in the model
    # 40 idle sockets from one address: the per-source limit (16) evicted the oldest, and the
    # PS never held all of them.
    assert flood["admission"]["evicted"] > 0
    assert 0 < flood["max_fds"] < alone["max_fds"] + 16 + 8
    assert flood["max_rss_mb"] > 0 and len(result["loadavg_before"]) == 3


def test_bench_siege_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        siege.measure(_args("--rounds", "5", "--warmup", "10"))
    with pytest.raises(ConfigError):
        siege.measure(_args("--floods", "0"))
