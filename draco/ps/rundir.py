"""The run directory: everything a run leaves behind, written so a crash never corrupts it.

Layout of ``RUN_DIR``::

    config.json              the run's configuration (written once, atomically)
    metrics.jsonl            one JSON object per round, appended and flushed line by line
    summary.json             the final result (written atomically at the end)
    checkpoints/ckpt-00000120.npz
                             params + optimizer arrays + JSON extra, named by round index
                             (= completed rounds); the last two are kept

Atomic writes: the bytes go to a temporary file in the same folder, are flushed and fsynced,
then ``os.replace`` renames them over the target (atomic on POSIX and Windows), and the folder
is fsynced so the rename itself survives a power cut. A reader therefore sees the old file or
the new one, never half of one. ``latest_checkpoint`` still verifies what it loads (zip CRCs,
shapes, round index) and falls back to an older checkpoint, with a warning, if the newest one
is unreadable.

numpy and the standard library only: the parameter server uses this without torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from draco.errors import ConfigError
from draco.fileio import TMP_PREFIX, atomic_write

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
CHECKPOINT_FORMAT = 1

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.npz$")
_PARAMS_KEY = "params"
_OPT_PREFIX = "opt__"
_EXTRA_KEY = "extra_json"
_META_KEY = "meta_json"


class CheckpointWarning(UserWarning):
    """A checkpoint file was skipped because it is partial or corrupt."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    round_index : int
        Completed rounds when it was written (= the next round to run).
    params : np.ndarray
        float32, shape (d,).
    optimizer_state : dict[str, np.ndarray]
        The optimizer's arrays (``draco.ps.optim.SGD.state_dict()``); may be empty.
    extra : dict
        JSON-able extras (sampler state, RNG state, counters ...), as saved.
    path : Path
        The file it came from.
    """

    round_index: int
    params: np.ndarray
    optimizer_state: dict[str, np.ndarray]
    extra: dict[str, Any]
    path: Path = field(compare=False)


# ----------------------------------------------------------------------------- JSON helpers


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays, sets (e.g. frozenset of worker ids) and paths appear in records.
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """JSON text of ``obj``; numpy scalars/arrays, sets and paths are converted."""
    return json.dumps(obj, default=_json_default, indent=indent, sort_keys=indent is not None)


# ----------------------------------------------------------------------------- atomic writes


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with the UTF-8 ``text``."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON (plus a final newline)."""
    atomic_write_text(path, dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------- reading back


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (or of a run directory holding one).

    A torn last line (the process died mid-write) is skipped with a warning; a bad line in
    the middle means the file was edited or damaged and raises ``ConfigError``.
    Returns ``[]`` for a missing file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_NAME
    if not p.exists():
        return []
    lines = p.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(lines):
                warnings.warn(
                    f"{p}: skipping a torn last line ({exc})", CheckpointWarning, stacklevel=2
                )
                break
            raise ConfigError(f"{p}, line {number}: not a JSON object ({exc})") from exc
        records.append(record)
    return records


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON object from ``path``; ``ConfigError`` if missing or not a JSON object."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p} does not exist") from exc
    except ValueError as exc:
        raise ConfigError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ConfigError(f"{p} does not hold a JSON object")
    return obj


# ----------------------------------------------------------------------------- progress line


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_progress(
    round_index: int,
    total: int,
    rounds_per_second: float,
    eta_seconds: float,
    accuracy: float | None,
) -> str:
    """One progress line, e.g. ``round  120/2000  6.2 rounds/s  ETA 05:03  acc 91.34%``.

    Parameters
    ----------
    round_index : int
        Rounds completed so far.
    total : int
        Rounds in the run.
    rounds_per_second : float
        Recent throughput (rounds/s).
    eta_seconds : float
        Estimated seconds left; non-finite or negative prints ``--:--``.
    accuracy : float or None
        Last test accuracy in [0, 1], or None if not evaluated yet.
    """
    width = len(str(total))
    rate = f"{rounds_per_second:5.2f}" if math.isfinite(rounds_per_second) else "  -- "
    acc = "acc    --" if accuracy is None else f"acc {100.0 * accuracy:6.2f}%"
    return (
        f"round {round_index:>{width}}/{total}  {rate} rounds/s  "
        f"ETA {_format_duration(eta_seconds)}  {acc}"
    )


# ----------------------------------------------------------------------------- the run dir


class RunDir:
    """A run's folder: config, per-round metrics, summary and checkpoints.

    Parameters
    ----------
    path : str or PathLike
        The folder; created (with parents) if it does not exist.
    resume : bool
        False (a new run): refuse a folder that already holds a run (``config.json``
        exists), so a finished run is never overwritten by accident. True: the folder must
        hold a run to continue.

    Raises
    ------
    ConfigError
        The folder holds a run and ``resume`` is False, holds none and ``resume`` is True,
        or ``path`` is not a usable folder.
    """

    def __init__(self, path: str | os.PathLike[str], *, resume: bool = False) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG_NAME
        self.metrics_path = self.path / METRICS_NAME
        self.summary_path = self.path / SUMMARY_NAME
        self.checkpoint_dir = self.path / CHECKPOINT_DIR
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path} exists and is not a folder")
        if resume:
            if not self.config_path.exists():
                raise ConfigError(
                    f"cannot resume: {self.path} holds no run ({CONFIG_NAME} is missing); "
                    "start a new run with --run-dir instead"
                )
        elif self.config_path.exists():
            raise ConfigError(
                f"{self.path} already holds a run ({CONFIG_NAME} exists); pass --resume "
                f"{self.path} to continue it, or pick another --run-dir"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {self.path}: {exc}") from exc
        self.resume = resume

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, resume={self.resume})"

    # -- config / summary

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` atomically (indented JSON)."""
        atomic_write_json(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        """The saved config; ``ConfigError`` if missing or damaged."""
        return read_json(self.config_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically (indented JSON)."""
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any] | None:
        """The saved summary, or None if the run has not finished."""
        if not self.summary_path.exists():
            return None
        return read_json(self.summary_path)

    # -- metrics

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line and flush it to the OS.

        Not fsynced per line (that would cost a disk flush per round); a crash can lose the
        last lines or tear the very last one, which ``read_metrics`` tolerates.
        """
        line = json.dumps(record, default=_json_default) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        """All metric records so far (see the module-level ``read_metrics``)."""
        return read_metrics(self.metrics_path)

    def truncate_metrics(self, round_index: int) -> int:
        """Keep only records with ``round < round_index`` (atomically); returns how many stay.

        For resuming: the rounds after the checkpoint are run again and would otherwise be
        logged twice. Records without a ``round`` key are kept.
        """
        kept = [r for r in self.read_metrics() if int(r.get("round", -1)) < round_index]
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in kept)
        atomic_write_text(self.metrics_path, text)
        return len(kept)

    # -- checkpoints

    def checkpoint_path(self, round_index: int) -> Path:
        """Where the checkpoint for ``round_index`` completed rounds lives."""
        return checkpoint_file(self.path, round_index)

    def _checkpoint_files(self) -> list[tuple[int, Path]]:
        """(round, path) of the checkpoint files present, newest first."""
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found, reverse=True)

    def save_checkpoint(
        self,
        round_index: int,
        params: np.ndarray,
        optimizer_state: dict[str, np.ndarray],
        extra: dict[str, Any],
    ) -> Path:
        """Write a checkpoint atomically and keep only the newest ``KEEP_CHECKPOINTS``.

        Parameters
        ----------
        round_index : int
            Completed rounds (the next round to run), >= 0.
        params : np.ndarray
            float32, shape (d,).
        optimizer_state : dict[str, np.ndarray]
            Named arrays (names: letters, digits, ``_``).
        extra : dict
            JSON-able extras.

        Returns
        -------
        Path
            The checkpoint file.
        """
        if round_index < 0:
            raise ValueError(f"round_index must be >= 0, got {round_index}")
        params = np.asarray(params)
        if params.ndim != 1 or params.dtype != np.float32:
            raise ValueError(
                f"params must be float32 of shape (d,), got {params.dtype} {params.shape}"
            )
        arrays: dict[str, np.ndarray] = {_PARAMS_KEY: params}
        for name, value in optimizer_state.items():
            if not re.fullmatch(r"\w+", name):
                raise ValueError(f"bad optimizer state name {name!r}")
            arrays[_OPT_PREFIX + name] = np.asarray(value)
        meta = {"format": CHECKPOINT_FORMAT, "round_index": int(round_index)}
        # JSON travels as uint8 bytes so np.load never needs pickle.
        arrays[_EXTRA_KEY] = np.frombuffer(dumps(extra).encode("utf-8"), dtype=np.uint8)
        arrays[_META_KEY] = np.frombuffer(dumps(meta).encode("utf-8"), dtype=np.uint8)
        path = self.checkpoint_path(round_index)
        atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
        self._prune_checkpoints(keep_newest=path)
        return path

    def _prune_checkpoints(self, keep_newest: Path) -> None:
        files = self._checkpoint_files()
        for _, p in files[KEEP_CHECKPOINTS:]:
            if p != keep_newest:
                with contextlib.suppress(OSError):
                    p.unlink()
        # Temp files left by a crash mid-write are ours and never complete: remove them.
        for p in self.checkpoint_dir.glob(TMP_PREFIX + "ckpt-*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint that loads and verifies, or None if there is none.

        Partial or corrupt files are skipped with a ``CheckpointWarning`` (and a log line),
        falling back to the next older checkpoint.
        """
        for round_index, path in self._checkpoint_files():
            try:
                return load_checkpoint(path, expected_round=round_index)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
                message = f"ignoring unreadable checkpoint {path}: {exc}"
                log.warning(message)
                warnings.warn(message, CheckpointWarning, stacklevel=2)
        return None

    def iter_checkpoints(self) -> Iterator[Path]:
        """Paths of the checkpoint files present, newest first (not verified)."""
        for _, p in self._checkpoint_files():
            yield p


def checkpoint_file(run_dir: str | os.PathLike[str], round_index: int) -> Path:
    """Where a run directory keeps the checkpoint of ``round_index`` completed rounds (for
    readers that must not open the run as a ``RunDir``, which creates folders)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-{round_index:08d}.npz"


def load_checkpoint(
    path: str | os.PathLike[str], *, expected_round: int | None = None
) -> Checkpoint:
    """Load and verify one checkpoint file.

    Every member is read in full, so zip CRC errors surface here. Raises ``ValueError``
    (or ``zipfile.BadZipFile`` / ``OSError``) for a damaged or foreign file.
    """
    p = Path(path)
    with np.load(p, allow_pickle=False) as z:
        names = set(z.files)
        for key in (_PARAMS_KEY, _EXTRA_KEY, _META_KEY):
            if key not in names:
                raise ValueError(f"member {key!r} missing")
        meta = json.loads(bytes(z[_META_KEY]).decode("utf-8"))
        extra = json.loads(bytes(z[_EXTRA_KEY]).decode("utf-8"))
        params = np.array(z[_PARAMS_KEY])
        opt = {
            n[len(_OPT_PREFIX) :]: np.array(z[n])
            for n in sorted(names)
            if n.startswith(_OPT_PREFIX)
        }
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"unknown checkpoint format {meta!r}")
    round_index = meta.get("round_index")
    if not isinstance(round_index, int) or (
        expected_round is not None and round_index != expected_round
    ):
        raise ValueError(f"round index {round_index!r} does not match the file name")
    if params.ndim != 1 or params.dtype != np.float32:
        raise ValueError(f"params have dtype {params.dtype} and shape {params.shape}")
    if not isinstance(extra, dict):
        raise ValueError("extra is not a JSON object")
    return Checkpoint(round_index, params, opt, extra, p)
