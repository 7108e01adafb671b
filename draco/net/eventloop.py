"""The event loop both shells run on, and their stop signals: written once for PS and worker.

- :func:`loop_factory` picks uvloop (the default: its socket path is what the benchmarks
  measured) or the stock asyncio loop;
- :func:`run_with_loop` runs a coroutine factory to completion on it;
- :func:`on_stop_signals` routes SIGINT/SIGTERM to a callback inside the running loop (the
  PS asks its server to stop with Bye; a worker cancels its task), as 128 + signal number is
  what the shells then exit with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["STOP_SIGNALS", "exit_status", "loop_factory", "on_stop_signals", "run_with_loop"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The signals that stop a PS or a worker cleanly (Ctrl-C, and what launchers and SLURM send).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


def exit_status(sig: int) -> int:
    """The shell's exit status for a process stopped by ``sig``: 128 + its number (130, 143)."""
    return 128 + int(sig)


def loop_factory(loop_name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory for ``"uvloop"`` (None, the asyncio default, otherwise).

    Falls back to asyncio with a warning if uvloop is not installed (it is a dependency on
    POSIX; the fallback keeps a source checkout usable elsewhere).
    """
    if loop_name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        log.warning("uvloop is not installed; using the asyncio event loop")
        return None
    return uvloop.new_event_loop


def run_with_loop(main: Callable[[], Coroutine[Any, Any, T]], loop_name: str) -> T:
    """Run coroutine factory ``main`` to completion on ``loop_name``'s loop; its result."""
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        return runner.run(main())


def on_stop_signals(callback: Callable[[signal.Signals], object]) -> None:
    """Call ``callback(sig)`` in the running loop when SIGINT or SIGTERM arrives.

    A no-op where the loop cannot take signal handlers (non-POSIX loops, a non-main thread).
    """
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, callback, sig)
