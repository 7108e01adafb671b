"""End to end, network side: the real ``draco-run`` / ``draco-ps`` / ``draco-worker`` processes.

Each test is about a mechanism, so the task is the tiny numpy least-squares one (no torch):
liars at the code's limit located, a garbage client hammering the PS port, a spoofed id and a
reused seat refused, a worker killed mid-run, and Ctrl-C leaving no process behind.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    assert_liars_located,
    draco_run,
    finish,
    make_keys,
    metrics,
    processes_mentioning,
    ready_port,
    reaped,
    rounds_done,
    run,
    start,
    summary,
    wait_for,
)

from draco.net.auth import read_token_file, write_token_file

pytestmark = pytest.mark.e2e

LSTSQ = ["--model", "lstsq", "--lstsq-dim", "16", "--batch-size", "8", "--eval-every", "0"]


@pytest.mark.parametrize(
    ("code", "schedule"), [("repetition", "random"), ("cyclic", "random"), ("cyclic", "fixed")]
)
def test_liars_at_the_limit_are_located(tmp_path: Path, code: str, schedule: str) -> None:
    # n = 2s + 1: the most liars either code can take.
    n, s, rounds = 5, 2, 6
    run_dir = tmp_path / "run"
    status, _, err = draco_run(
        run_dir,
        *["--code", code, "--workers", n, "--adversaries", s, "--attack", "constant"],
        *["--adversary-schedule", schedule, "--rounds", rounds, *LSTSQ],
    )
    assert status == 0, err
    assert "Traceback" not in err
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (rounds, 0)
    records = metrics(run_dir)
    assert [r["round"] for r in records] == list(range(rounds))
    assert_liars_located(records, s)
    # Not "> 0": with a fixed schedule the liars may sit in the slower worker process and be
    # cut off by the early close every round (then they are erasures, checked above).
    assert summ["adversaries_located"] == sum(len(r["adversaries_located"]) for r in records)


# -- a hostile client on the PS port ------------------------------------------------------

_PREFIX = struct.Struct("!4sHHIQI")


def _garbage(rng: random.Random) -> bytes:
    """One hostile opening: noise, lies about sizes, another protocol, a future version."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 4096))
    if kind == 1:  # a frame declaring 1 TB of tensors before authentication
        return _PREFIX.pack(b"DRCO", 1, 0, 16, 2**40, 1) + rng.randbytes(16)
    if kind == 2:  # a header bigger than any limit
        return _PREFIX.pack(b"DRCO", 1, 0, 2**31, 0, 0) + b"\x00" * 64
    if kind == 3:
        return b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    if kind == 4:  # a protocol version from the future
        return _PREFIX.pack(b"DRCO", 99, 0, 8, 0, 0) + b"\x81\xa4type\xa5hello"
    return b""  # connect and hang up at once


def _hammer(port: int, stop: threading.Event, stats: dict[str, int]) -> None:
    rng = random.Random(1234)
    silent: list[socket.socket] = []  # a few idle connections, like a slowloris
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1.0)
        except OSError:
            stats["refused"] += 1
            time.sleep(0.01)
            continue
        stats["connections"] += 1
        if len(silent) < 8 and rng.random() < 0.05:
            silent.append(sock)
            continue
        try:
            sock.sendall(_garbage(rng))
            sock.settimeout(0.2)
            sock.recv(4096)
        except OSError:
            pass
        finally:
            sock.close()
    for sock in silent:
        sock.close()


def test_garbage_client_hammering_the_port_mid_run(tmp_path: Path) -> None:
    n, s, rounds = 5, 2, 400
    common = [
        *["--workers", n, "--adversaries", s, "--attack", "constant", "--rounds", rounds],
        *LSTSQ,
    ]
    clean = tmp_path / "clean"
    status, _, err = draco_run(clean, *common)
    assert status == 0, err

    run_dir = tmp_path / "attacked"
    proc = start("run", "--run-dir", run_dir, *common)
    stats = {"connections": 0, "refused": 0, "mid_run": 0}
    with reaped(proc):
        port = ready_port(run_dir / "ps-ready.json", proc)
        stop = threading.Event()
        hammer = threading.Thread(target=_hammer, args=(port, stop, stats), daemon=True)
        hammer.start()
        # Count connections made while rounds were running (not just before or after).
        wait_for(lambda: rounds_done(run_dir) >= 1, 60, "the first round", proc)
        before = stats["connections"]
        wait_for(lambda: proc.poll() is not None or rounds_done(run_dir) >= rounds // 2, 60, "")
        stats["mid_run"] = stats["connections"] - before
        status, _, err = finish(proc)
        stop.set()
        hammer.join(10)
    assert status == 0, err
    assert stats["mid_run"] > 0, stats
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (rounds, 0)
    # The garbage changed nothing: the very model of the undisturbed run.
    assert summ["model_sha256"] == summary(clean)["model_sha256"]


# -- credentials ---------------------------------------------------------------------------


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Lines of ``proc``'s stderr until one contains ``needle`` (AssertionError on timeout)."""
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if needle in line:
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    assert found.wait(timeout), f"{needle!r} not seen; stderr so far: {''.join(lines)}"
    return lines


def test_spoofed_id_and_reused_seat_are_refused(tmp_path: Path) -> None:
    n = 5
    secret, tokens = make_keys(tmp_path, n)
    ready, run_dir = tmp_path / "ready.json", tmp_path / "run"
    ps = start(
        "ps",
        *["--port", 0, "--ready-file", ready, "--secret-file", secret, "--run-dir", run_dir],
        *["--workers", n, "--adversaries", 2, "--rounds", 5, "--join-timeout", 60, *LSTSQ],
    )
    with reaped(ps):
        address = f"127.0.0.1:{ready_port(ready, ps)}"
        # 1. Worker 3's token presented as worker 4's: one token proves one id only.
        spoof = tmp_path / "spoof"
        write_token_file(spoof, {4: read_token_file(tokens)[3]})
        r = run("worker", "--ps", address, "--id", 4, "--token-file", spoof, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "draco-worker: error:" in r.stderr and "auth_failed" in r.stderr
        assert "Traceback" not in r.stderr
        # 2. Seats 0..3 taken by honest workers; a second worker 0 (valid token) is refused.
        honest = start(
            "worker", "--ps", address, "--id", 0, "--count", 4, "--token-file", tokens,
            "--log-level", "INFO",
        )  # fmt: skip
        with reaped(honest):
            _read_until(honest, "worker 0: joined", 60)
            dup = run("worker", "--ps", address, "--id", 0, "--token-file", tokens, timeout=60)
            assert dup.returncode == 2, dup.stderr
            assert "seat_taken" in dup.stderr and "Traceback" not in dup.stderr
            # 3. The last honest worker joins; the run completes with everyone honest.
            last = run("worker", "--ps", address, "--id", 4, "--token-file", tokens, timeout=60)
            assert last.returncode == 0, last.stderr
            assert finish(honest)[0] == 0
        status, _, err = finish(ps)
    assert status == 0, err
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (5, 0)


# -- a worker dies ---------------------------------------------------------------------------


def test_worker_killed_mid_run_is_an_erasure_and_the_run_completes(tmp_path: Path) -> None:
    # One repetition group of 7 with s = 2 liars: one dead worker more still decodes.
    n, s, rounds = 7, 2, 1000
    secret, tokens = make_keys(tmp_path, n)
    ready, run_dir = tmp_path / "ready.json", tmp_path / "run"
    ps = start(
        "ps",
        *["--port", 0, "--ready-file", ready, "--secret-file", secret, "--run-dir", run_dir],
        *["--workers", n, "--adversaries", s, "--attack", "constant", "--rounds", rounds],
        *["--round-timeout", 30, *LSTSQ],
    )
    with reaped(ps):
        address = f"127.0.0.1:{ready_port(ready, ps)}"
        common = ["--ps", address, "--token-file", tokens]
        survivors = start("worker", *common, "--id", 0, "--count", n - 1)
        victim = start("worker", *common, "--id", n - 1)
        with reaped(survivors, victim):
            wait_for(lambda: rounds_done(run_dir) >= 3, 60, "three rounds", ps)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            killed_at = rounds_done(run_dir)
            status, _, err = finish(ps)
            assert finish(survivors)[0] == 0
    assert status == 0, err
    assert killed_at < rounds, "the run ended before the kill: nothing was tested"
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (rounds, 0)
    records = metrics(run_dir)
    after = [r for r in records if r["round"] > killed_at]
    assert after and all(n - 1 in r["erasures"] and not r["failed"] for r in after)
    # No round waited for the dead worker until the deadline: each closed within budget.
    assert all(r["wall_seconds"] < 30 for r in records)


# -- the launcher ----------------------------------------------------------------------------


def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start(
        "run", "--run-dir", run_dir, "--workers", 5, "--adversaries", 2, "--rounds", 10**6,
        *LSTSQ,
    )  # fmt: skip
    with reaped(proc):
        wait_for(lambda: rounds_done(run_dir) >= 2, 60, "two rounds", proc)
        assert len(processes_mentioning(str(run_dir))) >= 3  # the PS and two worker processes
        os.kill(proc.pid, signal.SIGINT)
        status, _, err = finish(proc, timeout=60)
    assert status == 128 + signal.SIGINT, err
    assert processes_mentioning(str(run_dir)) == []
    assert not (run_dir / "summary.json").exists() or summary(run_dir)["rounds"] < 10**6


def test_launcher_reports_a_ps_that_cannot_start(tmp_path: Path) -> None:
    status, _, err = draco_run(tmp_path / "run", "--workers", 3, "--adversaries", 3, *LSTSQ)
    assert status == 2
    assert "--adversaries" in err  # the PS's own message, passed through
    assert "draco-run: error: the parameter server exited" in err
    assert "Traceback" not in err
