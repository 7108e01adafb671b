"""draco-plot: accuracy curves of several run directories in one figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from draco.cli import plot
from draco.experiment.curves import load_curve
from draco.ps.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(path: Path, rounds: int, seconds_per_round: float, final_acc: float) -> Path:
    run = RunDir(path)
    run.write_config({"rounds": rounds})
    for t in range(rounds):
        record: dict[str, object] = {"round": t, "wall_seconds": seconds_per_round}
        if (t + 1) % 5 == 0:
            record["test_accuracy"] = final_acc * (t + 1) / rounds
            record["test_loss"] = 2.3 / (t + 1)
        run.append_metrics(record)
    return path


def test_load_curve(tmp_path: Path) -> None:
    curve = load_curve(fake_run(tmp_path / "draco", 20, 0.5, 0.9))
    assert curve.label == "draco"
    assert curve.rounds == [5, 10, 15, 20]
    assert curve.seconds == pytest.approx([2.5, 5.0, 7.5, 10.0])
    assert curve.accuracy == pytest.approx([0.225, 0.45, 0.675, 0.9])


def test_plot_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    a = fake_run(tmp_path / "draco", 20, 0.5, 0.95)
    b = fake_run(tmp_path / "median", 30, 0.2, 0.8)
    out = tmp_path / "fig.png"
    assert plot.main([str(a), str(b), "--out", str(out), "--title", "test"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


def test_labels_must_match_runs(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", 5, 1.0, 0.5)
    assert (
        plot.main([str(a), "--out", str(tmp_path / "x.png"), "--label", "1", "--label", "2"]) == 2
    )


def test_not_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    assert plot.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 1
    assert "metrics.jsonl not found" in capsys.readouterr().err


def test_run_without_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    run = RunDir(tmp_path / "run")
    run.append_metrics({"round": 0, "wall_seconds": 1.0})
    assert plot.main([str(run.path), "--out", str(tmp_path / "x.png")]) == 1
    assert "test_accuracy" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_matplotlib_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = fake_run(tmp_path / "a", 5, 1.0, 0.5)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plot.main([str(a), "--out", str(tmp_path / "x.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
