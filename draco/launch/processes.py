"""Child processes of the launcher: each in its own process group, stopped in order.

``spawn`` starts a command in a new session (the terminal's Ctrl-C reaches only the
launcher; on Linux the child also gets SIGTERM when the launcher dies), ``stop_children``
signals the groups and escalates to SIGKILL after a grace period (seconds), ``wait_ready``
reads the PS's ready file, ``signals_ignored`` holds SIGINT / SIGTERM off during a shutdown.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from draco.errors import DracoError


class Interrupted(Exception):
    """A SIGINT / SIGTERM the launcher turned into an exception (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Own process group: the terminal's Ctrl-C reaches only the launcher, which then stops
    # the children in order (PS first, so it can say Bye). PDEATHSIG: no orphans even if the
    # launcher is SIGKILLed.
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, unbuffered Python output."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen(argv, preexec_fn=_child_setup, env=env)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def stop_children(
    children: Sequence[subprocess.Popen[bytes]], grace: float, sig: int = signal.SIGTERM
) -> None:
    """``sig`` to each child's process group, wait up to ``grace`` s, then SIGKILL."""
    for proc in children:
        _signal_group(proc, sig)
    deadline = time.monotonic() + grace
    for proc in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in children:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def wait_ready(ready: Path, ps: subprocess.Popen[bytes], timeout: float) -> tuple[str, int]:
    """Wait for the PS's ready file; (host, port). DracoError if the PS died or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            try:
                info = json.loads(ready.read_text())
                return str(info["host"]), int(info["port"])
            except (ValueError, KeyError, TypeError, OSError):
                pass  # written atomically, but be tolerant of a foreign partial file
        status = ps.poll()
        if status is not None:
            raise DracoError(
                f"the parameter server exited with status {status} before it was ready "
                "(its messages are above)"
            )
        time.sleep(0.05)
    raise DracoError(f"the parameter server was not ready after {timeout:g} s ({ready} missing)")


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (their handlers restored after it)."""
    # A second Ctrl-C during the orderly shutdown must not leave children behind.
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
