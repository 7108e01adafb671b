"""Helpers for the end-to-end tests: run the REAL commands as processes, read run directories.

Every command is started as ``sys.executable -m draco.cli.<name>`` (no PATH lookups), in its
own process group, and killed with its group if a test fails half way (no orphans).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from draco.net.auth import issue_tokens, write_secret, write_token_file
from draco.ps.rundir import RunDir, read_metrics

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 120.0  # seconds: a hung run fails the test instead of blocking CI
# draco-run processes at a time in a batch (``run_batch``). A short run is mostly serial
# start-up: the PS imports torch (~70 % of a logreg run's wall time), only then the worker
# process does, then both exit (torch's teardown); the rounds are a few per cent. One run
# thus keeps about one of the 2 cores busy, and two runs side by side use both.
PARALLEL_RUNS = 2


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def command(name: str, *args: Any) -> list[str]:
    """argv of ``draco-<name>``: ``[python, -m, draco.cli.<name>, args...]``."""
    return [sys.executable, "-m", f"draco.cli.{name}", *map(str, args)]


def run(name: str, *args: Any, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``draco-<name> args`` to completion; output captured as text."""
    return subprocess.run(
        command(name, *args), capture_output=True, text=True, timeout=timeout, env=_env()
    )


def start(name: str, *args: Any, **kw: Any) -> subprocess.Popen[str]:
    """Start ``draco-<name> args`` in its own process group; output captured as text."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        command(name, *args), text=True, start_new_session=True, env=_env(), **kw
    )


def finish(proc: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> tuple[int, str, str]:
    """Wait for ``proc``; (exit status, stdout, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out or "", err or ""


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc``'s process group if anything of it is still alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=10)


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Kill the given processes' groups when the block ends (pass or fail)."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p)


def make_keys(folder: Path, n_workers: int) -> tuple[Path, Path]:
    """A cluster secret and the tokens of ids 0..n-1 (mode 0600), as draco-ps keys writes."""
    secret_path, tokens_path = folder / "secret", folder / "tokens"
    secret = write_secret(secret_path)
    write_token_file(tokens_path, issue_tokens(secret, range(n_workers)))
    return secret_path, tokens_path


def wait_for(predicate: Any, timeout: float, what: str, proc: Any = None) -> Any:
    """Poll ``predicate()`` until truthy; AssertionError after ``timeout`` or if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{err}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ready_port(ready_file: Path, proc: Any = None, timeout: float = 60.0) -> int:
    """The port in a PS ready file, once it exists."""

    def read() -> int | None:
        try:
            return int(json.loads(ready_file.read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None

    return int(wait_for(read, timeout, f"{ready_file}", proc))


def summary(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "summary.json").read_text()))


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_metrics(run_dir)


def rounds_done(run_dir: Path) -> int:
    """Rounds logged so far in ``run_dir/metrics.jsonl`` (0 if none)."""
    try:
        return len(read_metrics(run_dir))
    except Exception:  # a torn line while the PS writes: not yet
        return 0


def final_params(run_dir: Path, rounds: int) -> np.ndarray:
    """The parameters after ``rounds`` rounds, from the run's last checkpoint."""
    ckpt = RunDir(run_dir, resume=True).latest_checkpoint()
    assert ckpt is not None, f"{run_dir} holds no checkpoint"
    assert ckpt.round_index == rounds, f"last checkpoint is of round {ckpt.round_index}"
    return np.asarray(ckpt.params, dtype=np.float32)


def assert_liars_located(records: list[dict[str, Any]], s: int, *, caught: bool = True) -> None:
    """Each round: s liars scheduled, nobody else located, no failed round; with ``caught``,
    every liar whose payload arrived was located.

    A liar can be an erasure instead: the PS closes a round as soon as the code can decode,
    so a late payload, honest or not, is not waited for. ``caught=False`` for an attack
    whose lie may equal the truth (ALIE on the repetition code: the honest payloads of a
    group are identical, their std is 0, so ALIE sends the honest value).
    """
    for r in records:
        liars, located = set(r["liars"]), set(r["adversaries_located"])
        assert len(liars) == s, r
        assert located <= liars, r
        assert not caught or liars <= located | set(r["erasures"]), r
        assert not r["failed"], r


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64)) / max(float(np.linalg.norm(b64)), 1e-300)


def draco_run(run_dir: Path, *args: Any, timeout: float = RUN_TIMEOUT) -> tuple[int, str, str]:
    """``draco-run --run-dir RUN_DIR args`` to completion: (status, stdout, stderr)."""
    p = run("run", "--run-dir", run_dir, *args, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


@dataclass(frozen=True)
class RunResult:
    """A finished ``draco-run``: its run directory, exit status (None: timed out), output."""

    run_dir: Path
    status: int | None
    out: str
    err: str

    def check(self) -> RunResult:
        """AssertionError with the run's own stderr unless it exited 0."""
        where = f"draco-run --run-dir {self.run_dir}"
        assert self.status == 0, f"{where}: status {self.status}\n{self.err}"
        return self


def _batch_job(run_dir: Path, args: Sequence[Any]) -> RunResult:
    try:
        return RunResult(run_dir, *draco_run(run_dir, *args))
    except subprocess.TimeoutExpired as exc:  # reported by the test that needs this run
        return RunResult(run_dir, None, "", f"timed out after {exc.timeout} s")


def run_batch(
    jobs: Mapping[str, tuple[Path, Sequence[Any]]], parallel: int = PARALLEL_RUNS
) -> dict[str, RunResult]:
    """``draco-run --run-dir DIR ARGS`` for each ``name: (DIR, ARGS)``, ``parallel`` at a
    time, each to completion: {name: RunResult}. A failed run fails only the tests that
    look at it (``RunResult.check``)."""
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        futures = {name: pool.submit(_batch_job, d, args) for name, (d, args) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def runs_wanted(items: Iterable[Any], module: Any) -> list[str]:
    """Names of the runs that ``module``'s selected tests ask for with
    ``@pytest.mark.draco_runs("clean", "repetition-{attack}-{vote}")`` (``{param}``: the
    test's parametrization), in first-asked order: a ``-k`` that selects one test starts
    only that test's runs."""
    names: dict[str, None] = {}
    for item in items:
        marker = item.get_closest_marker("draco_runs")
        if marker is None or getattr(item, "module", None) is not module:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        names.update(dict.fromkeys(str(a).format(**params) for a in marker.args))
    return list(names)


def trained_run(run_dir: Path, rounds: int, *args: Any) -> tuple[dict[str, Any], np.ndarray]:
    """``draco-run args`` that must complete ``rounds`` rounds without a failed one:
    (summary, the final parameters from its last checkpoint)."""
    status, _, err = draco_run(run_dir, *args)
    assert status == 0, err
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (rounds, 0), summ
    return summ, final_params(run_dir, rounds)


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if text in cmdline and "\nState:\tZ" not in status:
            found.append(int(entry.name))
    return found


def flags(**kw: Any) -> Sequence[str]:
    """``flags(workers=5, batch_size=8)`` -> ``["--workers", "5", "--batch-size", "8"]``."""
    out: list[str] = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def assert_resume_reproduces(tmp_path: Path, args: Sequence[Any]) -> None:
    """A ``draco-run`` with ``args`` killed (SIGTERM) after its first checkpoint and resumed
    ends on the same ``model_sha256`` as the same run left alone.

    The uninterrupted run goes on beside the cut one (independent processes and run
    directories; see ``PARALLEL_RUNS``): the kill still comes when the cut run's first
    checkpoint appears, whatever the speed of either run.
    """
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    alone = start("run", "--run-dir", whole, *args)
    proc = start("run", "--run-dir", cut, *args)
    with reaped(alone, proc):
        ckpts = cut / "checkpoints"
        wait_for(lambda: ckpts.is_dir() and any(ckpts.glob("ckpt-*.npz")), 90, "a checkpoint")
        os.kill(proc.pid, signal.SIGTERM)
        status, _, err = finish(proc)
        assert status == 128 + signal.SIGTERM, err
        assert not (cut / "summary.json").exists(), "the run ended before the kill"
        status, _, err = draco_run(cut, "--resume", cut)
        assert status == 0, err
        status, _, err = finish(alone)
        assert status == 0, err
    assert summary(cut)["rounds"] == summary(whole)["rounds"]
    assert summary(cut)["model_sha256"] == summary(whole)["model_sha256"]
