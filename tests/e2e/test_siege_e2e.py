"""End to end under siege: the real draco-ps / draco-worker while an idle flood (plain TCP
and TLS, at and far above the admission limits) is held during joining and mid-run, and a
worker process is killed and restarted under it. The run must end on the clean run's model.

The flood is ``idle_flood.py`` in its own process. On one address (127.0.0.1) it replaces
dropped sockets after 0.2 s, like a slowloris; from a separate network namespace (its own
address, where the machine allows it) it hammers without pause, and per-address limits must
keep it from touching the workers at all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    _env,
    command,
    draco_run,
    finish,
    make_keys,
    metrics,
    ready_port,
    reaped,
    rounds_done,
    start,
    summary,
    wait_for,
)

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
LSTSQ = ["--model", "lstsq", "--lstsq-dim", "16", "--batch-size", "8", "--eval-every", "0"]
N, S, ROUNDS = 7, 2, 800  # one repetition group of 7: a dead worker more still decodes
RUN = ["--workers", N, "--adversaries", S, "--attack", "constant", "--rounds", ROUNDS]
LIMITS = ["--max-pending-per-source", 8, "--max-pending-handshakes", 32]


@pytest.fixture(scope="module")
def clean_sha(tmp_path_factory: pytest.TempPathFactory) -> str:
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    status, _, err = draco_run(run_dir, *RUN, *LSTSQ)
    assert status == 0, err
    return str(summary(run_dir)["model_sha256"])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,IP:10.201.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _flood(host: str, port: int, *, plain: int, tls: int, pause: float, netns: str | None):
    argv = [sys.executable, str(HERE / "idle_flood.py"), host, port, "--plain", plain]
    argv += ["--tls", tls, "--pause", pause, "--seconds", 150]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(
        [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    assert "started" in proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""
    return proc


def _stop_flood(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, err
    return dict(json.loads(lines[-1]))


def _siege(
    tmp_path: Path,
    clean_sha: str,
    *,
    flood: int,
    tls: tuple[Path, Path] | None,
    listen: str = "127.0.0.1",
    netns: str | None = None,
    pause: float = 0.2,
) -> None:
    secret, tokens = make_keys(tmp_path, N)
    ready, run_dir = tmp_path / "ready.json", tmp_path / "run"
    ps_tls: list[Any] = []
    worker_tls: list[Any] = []
    if tls is not None:
        ps_tls = ["--tls-cert", tls[0], "--tls-key", tls[1]]
        worker_tls = ["--tls-ca", tls[0]]
    ps = start(
        "ps", "--host", listen, "--port", 0, "--ready-file", ready, "--secret-file", secret,
        "--run-dir", run_dir, "--join-timeout", 90, "--round-timeout", 30, "--log-level", "ERROR",
        *RUN, *LIMITS, *ps_tls, *LSTSQ,
    )  # fmt: skip
    with reaped(ps):
        port = ready_port(ready, ps)
        base_fds = _fd_count(ps.pid)
        # Half never send a byte (a TLS PS sees them as TLS handshakes in progress), half
        # complete a TLS handshake and idle (plain PS: half and half idle TCP).
        flooder = _flood(
            listen, port, plain=flood - flood // 2 if tls else flood, tls=flood // 2 if tls else 0,
            pause=pause, netns=netns,
        )  # fmt: skip
        max_fds = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.2):
                max_fds[0] = max(max_fds[0], _fd_count(ps.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            address = f"{listen}:{port}"
            common = ["--ps", address, "--token-file", tokens, *worker_tls, "--log-level", "INFO"]
            # Joining under the flood.
            most = start("worker", *common, "--id", 0, "--count", N - 1)
            victim = start("worker", *common, "--id", N - 1)
            with reaped(most, victim):
                wait_for(lambda: rounds_done(run_dir) >= 5, 90, "five rounds", ps)
                # Mid-run, still under the flood: the victim dies and a new process rejoins.
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(10)
                killed_at = rounds_done(run_dir)
                again = subprocess.Popen(
                    command("worker", *common, "--id", N - 1), text=True, env=_env(),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                )  # fmt: skip
                with reaped(again):
                    status, _, err = finish(ps, timeout=180)
                    assert finish(most)[0] == 0
                    again_status, _, again_err = finish(again)
        finally:
            sampling.set()
            stats = _stop_flood(flooder)
    assert status == 0, err
    assert again_status == 0, again_err
    assert killed_at < ROUNDS - 100, "the run nearly ended before the kill: nothing was tested"
    assert stats["opened"] >= flood, stats
    summ = summary(run_dir)
    assert (summ["rounds"], summ["failed_rounds"]) == (ROUNDS, 0)
    assert summ["model_sha256"] == clean_sha  # the siege changed nothing
    records = metrics(run_dir)
    rejoined = [
        r["round"] for r in records if r["round"] > killed_at and N - 1 not in r["erasures"]
    ]
    assert rejoined, "the restarted worker never answered a round"
    # File descriptors bounded by the admission limits (32 pending) + 7 workers + the PS's own.
    assert max_fds[0] <= base_fds + N + 32 + 8, (max_fds[0], base_fds)
    if flood > 8:
        assert summ.get("admission", {}).get("evicted", 0) > 0, summ


def test_idle_plain_and_tls_flood_while_joining_and_restarting(
    tmp_path: Path, clean_sha: str, tls_files: tuple[Path, Path]
) -> None:
    """A TLS PS; 60 sockets that never start TLS and 60 that finish it and idle: 15x the
    per-source limit (the asyncio tests in tests/net cover floods at the limit). Each TLS
    handshake costs the PS ~1 ms of CPU: a larger TLS flood mostly measures that."""
    _siege(tmp_path, clean_sha, flood=120, tls=tls_files)


# -- a separate host -----------------------------------------------------------------------


@pytest.fixture
def flood_host() -> Iterator[tuple[str, str]]:
    """A network namespace with its own address (10.201.0.2) on a veth pair to the host
    (10.201.0.1): the flood comes from another host. Skipped where it cannot be made."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("needs Linux and the ip command (iproute2)")
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root (CI runs as root)")
    name = f"draco-flood-{uuid.uuid4().hex[:8]}"
    host_if, ns_if = f"dfh{name[-6:]}", f"dfn{name[-6:]}"

    def ip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)

    made = ip("netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        steps = [
            ("link", "add", host_if, "type", "veth", "peer", "name", ns_if),
            ("link", "set", ns_if, "netns", name),
            ("addr", "add", "10.201.0.1/30", "dev", host_if),
            ("link", "set", host_if, "up"),
            ("-n", name, "addr", "add", "10.201.0.2/30", "dev", ns_if),
            ("-n", name, "link", "set", ns_if, "up"),
            ("-n", name, "link", "set", "lo", "up"),
        ]
        for step in steps:
            r = ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the veth pair here: ip {' '.join(step)}: {r.stderr}")
        yield name, "10.201.0.1"
    finally:
        ip("link", "del", host_if)
        ip("netns", "del", name)


def test_hammering_flood_from_another_host_never_touches_the_workers(
    tmp_path: Path, clean_sha: str, flood_host: tuple[str, str]
) -> None:
    """400 idle plain sockets from another address, replaced at once when dropped."""
    netns, listen = flood_host
    _siege(tmp_path, clean_sha, flood=400, tls=None, listen=listen, netns=netns, pause=0.0)
