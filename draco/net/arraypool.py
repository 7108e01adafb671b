"""Receive buffers reused across frames: the ``allocate`` hook of the frame decoder.

``FrameDecoder`` receives a frame's tensors into arrays from its ``allocate`` hook
(:data:`Allocate`): ``np.empty`` by default, an :class:`ArrayPool` on the parameter server, so
a round's payloads land in the memory the previous round's payloads used (already mapped: no
page faults, no ``malloc`` search).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from draco.errors import ConfigError

__all__ = ["Allocate", "ArrayPool", "new_array"]

_Key = tuple[np.dtype, tuple[int, ...]]

#: ``allocate(dtype, shape)`` -> a C-contiguous, writeable array of exactly that dtype and
#: shape whose contents may be anything (the decoder overwrites every byte before the frame
#: is surfaced). Called only after the frame's declarations passed the :class:`Limits`.
Allocate = Callable[[np.dtype, tuple[int, ...]], np.ndarray]


def new_array(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The default hook: ``np.empty(shape, dtype)``."""
    return np.empty(shape, dtype=dtype)


class ArrayPool:
    """Receive buffers reused across frames: an ``allocate`` hook for :class:`FrameDecoder`.

    Why: the parameter server receives n payloads of the same dtype and shape every round. A
    fresh ``np.empty`` per payload is a ``malloc`` of several MB whose pages, unless the
    allocator happens to hand back the same memory, are faulted in and zeroed by the kernel
    on first touch -- work on the event loop of the order of the copy itself. The pool keeps
    the arrays it handed out and gives one back out again once nothing else refers to it.

    An array counts as free when the pool holds the only reference to it (CPython reference
    count). Every numpy view, ``memoryview`` or ``torch.from_numpy`` tensor of it holds a
    reference to it (numpy views point at the owning array), so an array still in use by a
    round, a decode or a late consumer is never handed out twice; only code that keeps a raw
    pointer without a Python reference could be fooled, and the project has none. Use it
    from one thread (the event loop); other threads may drop references meanwhile.

    Parameters
    ----------
    max_bytes : int
        Most bytes the pool keeps (>= 0). Requests beyond it are plain ``np.empty`` arrays
        that are not kept. Zero-size and larger-than-``max_bytes`` requests are never kept.

    Attributes
    ----------
    reused, allocated : int
        Requests served from the pool / by a new array (kept or not), for tests and metrics.
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"ArrayPool max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        self.reused = 0
        self.allocated = 0
        self._free_refs = 0
        self._arrays: dict[_Key, list[np.ndarray]] = {}
        # Per key, where the next search starts: just after the array handed out last. Arrays
        # go out in turn and come back in about the same order (a round's payloads are let go
        # together), so the first one looked at is nearly always free: one reference-count
        # read per request instead of a scan past the arrays still in use (each a cache miss
        # on the parameter server's ingest path, where the caches are cold after every read).
        self._next: dict[_Key, int] = {}
        # The reference count a kept array shows in _take when nothing else holds it:
        # measured on a probe through the same code path, not assumed per interpreter.
        self._free_refs = self._refs([np.empty(1)], 0)

    @staticmethod
    def _refs(arrays: list[np.ndarray], i: int) -> int:
        return sys.getrefcount(arrays[i])

    def _take(self, key: _Key, arrays: list[np.ndarray]) -> int:
        """Index of a free array in ``arrays`` (searched from the key's cursor on), or -1."""
        n = len(arrays)
        start = self._next.get(key, 0)
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            if self._refs(arrays, i) <= self._free_refs:
                self._next[key] = i + 1 if i + 1 < n else 0
                return i
        return -1

    def __call__(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An array of ``dtype`` and ``shape`` (contents undefined): a free kept one if any."""
        if not isinstance(dtype, np.dtype):  # the decoder passes np.dtype objects already
            dtype = np.dtype(dtype)
        # (dtype, shape): dtypes hash and compare by value ("<f4" == float32); dtype.str
        # would build a new string on every request.
        key = (dtype, tuple(shape))
        arrays = self._arrays.get(key)
        if arrays is not None:
            i = self._take(key, arrays)
            if i >= 0:
                self.reused += 1
                return arrays[i]
        self.allocated += 1
        arr = np.empty(shape, dtype=dtype)
        if 0 < arr.nbytes <= self.max_bytes - self.kept_bytes:
            self._arrays.setdefault(key, []).append(arr)
            self.kept_bytes += arr.nbytes
        return arr

    def clear(self) -> None:
        """Forget every kept array (the memory is freed once their other users let go)."""
        self._arrays.clear()
        self._next.clear()
        self.kept_bytes = 0
