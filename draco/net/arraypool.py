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
        self._arrays: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
        # The reference count a kept array shows in _take when nothing else holds it:
        # measured on a probe through the same code path, not assumed per interpreter.
        probe = [np.empty(1)]
        self._free_refs = self._refs_in_take(probe)

    @staticmethod
    def _refs_in_take(arrays: list[np.ndarray]) -> int:
        for arr in arrays:
            return sys.getrefcount(arr)
        raise AssertionError("unreachable: probe list is not empty")

    def _take(self, arrays: list[np.ndarray]) -> np.ndarray | None:
        for arr in arrays:
            if sys.getrefcount(arr) <= self._free_refs:
                return arr
        return None

    def __call__(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An array of ``dtype`` and ``shape`` (contents undefined): a free kept one if any."""
        dtype = np.dtype(dtype)
        key = (dtype.str, tuple(shape))
        arrays = self._arrays.get(key)
        if arrays is not None:
            arr = self._take(arrays)
            if arr is not None:
                self.reused += 1
                return arr
        self.allocated += 1
        arr = np.empty(shape, dtype=dtype)
        if 0 < arr.nbytes <= self.max_bytes - self.kept_bytes:
            self._arrays.setdefault(key, []).append(arr)
            self.kept_bytes += arr.nbytes
        return arr

    def clear(self) -> None:
        """Forget every kept array (the memory is freed once their other users let go)."""
        self._arrays.clear()
        self.kept_bytes = 0
