"""Run a block of numpy calls on one BLAS thread (process-wide, restored afterwards).

Why: numpy's bundled OpenBLAS splits every gemv of the cyclic decode (about 63 complex
gemv's of 40 x 16,384 at n = 45, d = 1,033,510) over all cores. Each call waits for its
worker thread, and the worker busy-waits after the call, stealing the core from the
staging copy that follows. Measured on the 2-core machine (CHANGELOG.md, 2026-11-28,
"Why one BLAS thread"): idle, 2 threads 19.5 ms vs 1 thread 20.9 ms; with one other busy process,
62 ms [37-132] vs 24.7 ms [22.6-44.5]. The decode is memory-bound, so one thread loses
about 1 ms when the machine is idle and avoids the stalls when it is not.

The thread count is driven through threadpoolctl (the well-kept library made for this:
it finds the BLAS that numpy loaded, OpenBLAS, MKL or BLIS, and sets its threads through
the library's own API). Without a controllable BLAS, ``single_blas_thread`` does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy  # noqa: F401  (loads numpy's BLAS before the controller looks for it)
from threadpoolctl import ThreadpoolController

__all__ = ["blas_threads", "single_blas_thread"]

_lock = threading.Lock()
_depth = 0
_limiter: Any = None


def _controller() -> ThreadpoolController | None:
    """The BLAS libraries loaded in this process (numpy's), or None if none is controllable."""
    controller = ThreadpoolController().select(user_api="blas")
    return controller if controller.lib_controllers else None


#: Found once at import (numpy, imported above, has loaded its BLAS by then).
_CONTROLLER = _controller()


def blas_threads() -> int | None:
    """The BLAS's current thread count, or None when it cannot be controlled here."""
    if _CONTROLLER is None:
        return None
    return int(_CONTROLLER.lib_controllers[0].num_threads)


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Limit the BLAS to one thread inside the block; re-entrant; restores the old count.

    Process-wide: other threads calling numpy's BLAS meanwhile run single-threaded too.
    """
    global _depth, _limiter
    if _CONTROLLER is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _limiter = _CONTROLLER.limit(limits=1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
