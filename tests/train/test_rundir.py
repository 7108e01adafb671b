"""draco.ps.rundir: atomic files, resume refusal, metrics, checkpoints, the progress line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from draco.errors import ConfigError
from draco.fileio import atomic_write
from draco.ps.rundir import (
    KEEP_CHECKPOINTS,
    CheckpointWarning,
    RunDir,
    atomic_write_json,
    dumps,
    format_progress,
    load_checkpoint,
    read_metrics,
)


def _params(seed: int, d: int = 257) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def test_new_run_then_refuses_to_overwrite(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "a" / "run")
    assert run.path.is_dir() and run.checkpoint_dir.is_dir()
    run.write_config({"workers": 15, "seed": 1})
    assert run.read_config() == {"workers": 15, "seed": 1}
    with pytest.raises(ConfigError, match="--resume") as info:
        RunDir(run.path)
    assert "--run-dir" in str(info.value)
    again = RunDir(run.path, resume=True)
    assert again.read_config()["workers"] == 15


def test_resume_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no run"):
        RunDir(tmp_path / "empty", resume=True)


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        RunDir(f)


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write_json(target, {"v": 1})

    def half_then_crash(f: IO[bytes]) -> None:
        f.write(b'{"v": 2, "trunc')
        raise RuntimeError("simulated crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_summary_round_trip(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.read_summary() is None
    run.write_summary({"rounds": np.int64(3), "test_accuracy": np.float32(0.5)})
    assert run.read_summary() == {"rounds": 3, "test_accuracy": 0.5}


def test_json_of_numpy_and_sets() -> None:
    text = dumps({"ids": frozenset({3, 1}), "a": np.arange(2), "b": np.bool_(True)})
    assert json.loads(text) == {"ids": [1, 3], "a": [0, 1], "b": True}
    with pytest.raises(TypeError):
        dumps({"x": object()})


def test_metrics_append_read_and_truncate(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.read_metrics() == []
    for t in range(5):
        run.append_metrics({"round": t, "erasures": [np.int64(t)], "wall_seconds": 0.5})
    lines = run.metrics_path.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[2]) == {
        "round": 2,
        "erasures": [2],
        "wall_seconds": 0.5,
    }
    assert [r["round"] for r in read_metrics(run.path)] == [0, 1, 2, 3, 4]
    assert run.truncate_metrics(3) == 3
    assert [r["round"] for r in run.read_metrics()] == [0, 1, 2]


def test_metrics_torn_last_line_is_skipped(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.append_metrics({"round": 0})
    with open(run.metrics_path, "a") as f:
        f.write('{"round": 1, "wall_')  # the process died mid-line
    with pytest.warns(CheckpointWarning, match="torn"):
        records = run.read_metrics()
    assert records == [{"round": 0}]


def test_metrics_damaged_middle_line_raises(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.metrics_path.write_text('{"round": 0}\nnot json\n{"round": 2}\n')
    with pytest.raises(ConfigError, match="line 2"):
        run.read_metrics()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.latest_checkpoint() is None
    params = _params(0)
    state = {"momentum_buffer": _params(1)}
    extra = {"totals": {"completed_rounds": 7}, "rng": [1, 2, 3]}
    path = run.save_checkpoint(7, params, state, extra)
    assert path == run.checkpoint_path(7) and path.is_file()
    ck = run.latest_checkpoint()
    assert ck is not None
    assert ck.round_index == 7
    assert ck.params.dtype == np.float32
    assert ck.params.tobytes() == params.tobytes()
    assert ck.optimizer_state.keys() == {"momentum_buffer"}
    assert ck.optimizer_state["momentum_buffer"].tobytes() == state["momentum_buffer"].tobytes()
    assert ck.extra == extra
    # An empty optimizer state (before the first step) round-trips too.
    run.save_checkpoint(8, params, {}, {})
    ck8 = run.latest_checkpoint()
    assert ck8 is not None and ck8.round_index == 8 and ck8.optimizer_state == {}


def test_checkpoint_keeps_the_last_two(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    for t in (2, 4, 6, 8):
        run.save_checkpoint(t, _params(t), {}, {"t": t})
    rounds = [int(p.name[5:13]) for p in run.iter_checkpoints()]
    assert rounds == [8, 6][:KEEP_CHECKPOINTS]
    assert [p.name for p in run.checkpoint_dir.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "bitflip"])
def test_corrupt_newest_checkpoint_falls_back(tmp_path: Path, damage: str) -> None:
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(10, _params(10), {"momentum_buffer": _params(11)}, {"t": 10})
    newest = run.save_checkpoint(20, _params(20), {"momentum_buffer": _params(21)}, {"t": 20})
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        newest.write_bytes(b"not a zip file at all")
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        # Flip a byte inside the params' data: only the zip CRC can notice.
        i = data.index(_params(20).tobytes()[:16]) + 100
        newest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    with pytest.warns(CheckpointWarning, match="ckpt-00000020"):
        ck = run.latest_checkpoint()
    assert ck is not None and ck.round_index == 10
    assert ck.params.tobytes() == _params(10).tobytes()


def test_all_checkpoints_corrupt_gives_none(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.checkpoint_path(5).write_bytes(b"PK\x03\x04 partial")
    # Leftover temp file of a crashed write: never considered.
    (run.checkpoint_dir / ".tmp-ckpt-00000006.npz.abc").write_bytes(b"partial")
    with pytest.warns(CheckpointWarning):
        assert run.latest_checkpoint() is None


def test_checkpoint_with_wrong_round_in_name_is_rejected(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    p = run.save_checkpoint(3, _params(3), {}, {})
    os.replace(p, run.checkpoint_path(4))
    with pytest.raises(ValueError, match="round index"):
        load_checkpoint(run.checkpoint_path(4), expected_round=4)


def test_save_checkpoint_rejects_bad_params(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(ValueError, match="float32"):
        run.save_checkpoint(1, np.zeros(3, np.float64), {}, {})
    with pytest.raises(ValueError):
        run.save_checkpoint(-1, np.zeros(3, np.float32), {}, {})


def test_format_progress() -> None:
    line = format_progress(120, 2000, 6.25, 303.0, 0.9134)
    assert line.startswith("round  120/2000")
    assert "6.25 rounds/s" in line and "ETA 05:03" in line and "91.34%" in line
    early = format_progress(0, 10, float("nan"), float("inf"), None)
    assert "ETA --:--" in early and "acc    --" in early
    assert "1:01:01" in format_progress(1, 10, 1.0, 3661.0, None)
