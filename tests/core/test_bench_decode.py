"""``draco-bench decode`` on a tiny problem: structure of the JSON, every method present."""

from __future__ import annotations

import json

import pytest

from draco.cli import bench_decode

METHODS = {
    "numpy_mean",
    "repetition_decode",
    "cyclic_decode",
    "geometric_median",
    "krum",
    "multi_krum",
    "median",
    "trimmed_mean",
    "bulyan",
    "centered_clipping",
}


def test_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--workers", "11", "--dim", "300", "--repeats", "1", "--adversaries", "1", "3"]
    assert bench_decode.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"]["workers"] == 11 and report["parameters"]["dim"] == 300
    assert report["machine"]["numpy"] and report["machine"]["cores_usable"] >= 1
    by_s: dict[int, set[str]] = {}
    for row in report["results"]:
        assert set(row) >= {"method", "adversaries", "seconds", "ratio_to_mean"}
        assert "error" not in row, row
        assert row["seconds"] > 0 and row["ratio_to_mean"] > 0
        by_s.setdefault(row["adversaries"], set()).add(row["method"])
        if row["method"].endswith("_decode"):
            assert row["relative_error"] < 1e-5 and row["liars_located"], row
    assert by_s[1] == METHODS  # 11 >= 4*1+3
    assert by_s[3] == METHODS - {"bulyan"}  # 11 < 4*3+3
    assert len(report["parameters"]["liars"]["3"]) == 3


def test_table_and_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("draco.cli.bench_net")  # draco-bench registers both subcommands
    from draco.cli import bench

    argv = ["decode", "--workers", "7", "--dim", "64", "--repeats", "1", "--adversaries", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "repetition_decode" in out and "geometric_median" in out


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_decode.main(["--workers", "5", "--adversaries", "3"]) == 2
    assert "2s+1" in capsys.readouterr().err


def test_skip_aggregators_times_only_the_mean_and_the_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--workers", "7", "--dim", "64", "--repeats", "1", "--adversaries", "1"]
    assert bench_decode.main([*argv, "--skip-aggregators", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    methods = {row["method"] for row in report["results"]}
    assert methods == {"numpy_mean", "repetition_decode", "cyclic_decode"}
    assert report["parameters"]["aggregators"] is False
