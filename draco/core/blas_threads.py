"""Run a block of numpy calls on one OpenBLAS thread (process-wide, restored afterwards).

Why: numpy's bundled OpenBLAS splits every gemv of the cyclic decode (about 63 complex
gemv's of 40 x 16,384 at n = 45, d = 1,033,510) over all cores. Each call waits for its
worker thread, and the worker busy-waits after the call, stealing the core from the
staging copy that follows. Measured on the 2-core machine (docs/numerics.md, "Decode
timings"): idle, 2 threads 19.5 ms vs 1 thread 20.9 ms; with one other busy process,
62 ms [37-132] vs 24.7 ms [22.6-44.5]. The decode is memory-bound, so one thread loses
about 1 ms when the machine is idle and avoids the stalls when it is not.

The OpenBLAS that numpy loaded is found through /proc/self/maps (Linux), else next to
numpy (wheels vendor it in ``numpy.libs`` or ``numpy/.dylibs``), and driven through its
exported ``*openblas_set_num_threads*`` / ``*get_num_threads*``. With another BLAS (MKL,
BLIS, Accelerate) or no such symbols, ``single_blas_thread`` does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["blas_threads", "single_blas_thread"]

#: (set, get) names as exported by scipy-openblas (numpy's wheels) and plain OpenBLAS.
_NAMES = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)

_lock = threading.Lock()
_depth = 0
_saved = 0


def _candidates() -> list[str]:
    """Paths of OpenBLAS libraries: the ones mapped into this process first."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.split()[-1]
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(np.__file__))
    for sub in ("numpy.libs", os.path.join("numpy", ".dylibs")):
        paths += [p for p in glob.glob(os.path.join(root, sub, "*openblas*")) if p not in paths]
    return paths


def _load() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same handle, no new copy
        except OSError:
            continue
        for set_name, get_name in _NAMES:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


_FUNCS = _load()


def blas_threads() -> int | None:
    """OpenBLAS's current thread count, or None when it cannot be controlled here."""
    return None if _FUNCS is None else int(_FUNCS[1]())


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Limit OpenBLAS to one thread inside the block; re-entrant; restores the old count.

    Process-wide: other threads calling numpy's BLAS meanwhile run single-threaded too.
    """
    global _depth, _saved
    if _FUNCS is None:
        yield
        return
    setter, getter = _FUNCS
    with _lock:
        if _depth == 0:
            _saved = getter()
            if _saved != 1:
                setter(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved != 1:
                setter(_saved)
