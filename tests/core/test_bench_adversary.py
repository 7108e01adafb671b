"""``draco-bench adversary`` on a tiny problem: every family judged, zeros in the failure
columns, the JSON's structure; bad flags exit 2."""

from __future__ import annotations

import json

import pytest

from draco.cli import bench_adversary
from draco.core.lies import LIE_FAMILIES


def test_json_report_every_family_no_failure(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--workers", "11", "--adversaries", "2", "--dim", "600", "--trials", "1", "--json"]
    assert bench_adversary.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failures"] == 0 and report["numpy_mean_seconds"] > 0
    seen = {(r["code"], r["family"]) for r in report["results"]}
    assert seen == {(c, f) for c in ("repetition", "cyclic") for f in LIE_FAMILIES}
    for row in report["results"]:
        assert row["trials"] == 1 and row["liars"] == 2
        assert (row["refused"], row["silent"], row["framed"]) == (0, 0, 0), row
        assert row["worst_relative_error"] <= report["parameters"]["error_bound"]
        assert row["ratio_to_mean"] > 0


@pytest.mark.parametrize(
    "argv",
    [["--workers", "5", "--adversaries", "3"], ["--families", "nonsense"], ["--trials", "0"]],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_adversary.main(argv) == 2
    assert "draco-bench adversary:" in capsys.readouterr().err
