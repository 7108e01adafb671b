"""The wire format of a frame and its encoder (sans-IO; no asyncio, no sockets).

A frame (full spec with byte offsets in ``docs/protocol.md``)::

    prefix   24 bytes, network byte order, struct "!4sHHIQI":
             magic b"DRCO" | version u16 | flags u16 (0) | header_len u32 |
             tensor_bytes u64 | n_tensors u32
    header   header_len bytes: one msgpack map {"type": str, <fields>..., "tensors": [desc...]}
             desc = {"dtype": "<f4", "shape": [d, ...], "nbytes": int}
    tensors  tensor_bytes raw bytes: the tensors' C-order bytes, back to back, in desc order

This module holds the constants, the receiver's :class:`Limits`, the decoded :class:`Frame`
and :func:`encode_frame`; the incremental decoder is ``draco.net.framedecoder``, its receive
buffers ``draco.net.arraypool``. ``draco.net.frames`` re-exports all of them.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from draco.errors import ConfigError, LocalProtocolError

__all__ = [
    "DTYPES",
    "MAGIC",
    "PREFIX",
    "PREFIX_SIZE",
    "PROTOCOL_VERSION",
    "TENSORS_KEY",
    "Frame",
    "Limits",
    "encode_frame",
]

#: The first four bytes of every frame.
MAGIC = b"DRCO"
#: The version this code speaks. Bumped on any incompatible change; magic + version (the first
#: six bytes) keep this position in every future version so a mismatch is always reported.
#: Version 2 added ``attempt`` to ``round_start`` and ``gradient`` (retried rounds); a
#: version-1 peer would refuse those keys, so it is told "version mismatch" instead.
PROTOCOL_VERSION = 3
#: magic, version, flags, header_len, tensor_bytes, n_tensors (network byte order).
PREFIX = struct.Struct("!4sHHIQI")
PREFIX_SIZE = PREFIX.size  # 24
#: Tensor dtypes accepted on the wire (numpy ``dtype.str``; little-endian only).
DTYPES: frozenset[str] = frozenset({"<f4", "<f8", "<c8", "<c16", "<i8", "|u1"})
#: The header key the frame layer reserves for the tensor descriptors.
TENSORS_KEY = "tensors"

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
# numpy's own bound on ndim; the wire never allows more whatever the limits say.
_NDIM_CAP = 32


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer may declare in one frame; checked before any allocation.

    Parameters
    ----------
    max_header_bytes : int
        Largest msgpack header accepted, bytes (1 .. 2**32-1). Default 64 KiB.
    max_tensor_bytes : int
        Largest total of tensor bytes in one frame, bytes (>= 0). Default 256 MiB (a float32
        vector of 67M parameters, or complex128 of 16.7M).
    max_tensors : int
        Most tensors in one frame (>= 0). Default 4.
    max_ndim : int
        Most dimensions of one tensor (1 .. 32). Default 4.

    Raises
    ------
    ConfigError
        A bound is not an int or out of range.
    """

    max_header_bytes: int = 64 * 1024
    max_tensor_bytes: int = 256 * 1024 * 1024
    max_tensors: int = 4
    max_ndim: int = 4

    def __post_init__(self) -> None:
        ranges = {
            "max_header_bytes": (1, _U32_MAX),
            "max_tensor_bytes": (0, _U64_MAX),
            "max_tensors": (0, _U32_MAX),
            "max_ndim": (1, _NDIM_CAP),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"Limits.{name} must be an int, got {value!r}")
            if not lo <= value <= hi:
                raise ConfigError(f"Limits.{name} must be in [{lo}, {hi}], got {value}")

    def pre_auth(self) -> Limits:
        """The same limits with no tensor bytes at all (used before authentication)."""
        if self.max_tensor_bytes == 0 and self.max_tensors == 0:
            return self  # already so (the server's handshake limits): no copy per connection
        return dataclasses.replace(self, max_tensor_bytes=0, max_tensors=0)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame.

    Attributes
    ----------
    header : dict[str, Any]
        The msgpack header map without the ``"tensors"`` key.
    tensors : tuple[np.ndarray, ...]
        Writeable, C-contiguous arrays with the declared dtype and shape, in wire order.
    wire_bytes : int
        Size of the frame on the wire (prefix + header + tensor bytes), for byte counters.
    """

    header: dict[str, Any]
    tensors: tuple[np.ndarray, ...]
    wire_bytes: int


def encode_frame(
    header: Mapping[str, Any], tensors: Sequence[np.ndarray] = ()
) -> list[bytes | memoryview]:
    """Encode one frame as chunks for ``transport.writelines`` (tensor bytes are not copied).

    Parameters
    ----------
    header : Mapping[str, Any]
        msgpack-able map with str keys; must not contain ``"tensors"``.
    tensors : Sequence[np.ndarray]
        Arrays with a dtype in :data:`DTYPES` (big-endian arrays are converted). C-contiguous
        arrays are sent as ``memoryview`` s of their own memory: do NOT mutate them until the
        transport has flushed them (``drain()``). Others are copied once into C order.

    Returns
    -------
    list[bytes | memoryview]
        ``[prefix + header, tensor_0_bytes, ...]`` (zero-size tensors contribute no chunk).

    Raises
    ------
    LocalProtocolError
        The header is not a packable str-keyed map, uses the reserved key, or a tensor has a
        dtype outside the whitelist.
    """
    if not isinstance(header, Mapping):
        raise LocalProtocolError(f"frame header must be a mapping, got {type(header).__name__}")
    if TENSORS_KEY in header:
        raise LocalProtocolError(f"frame header key {TENSORS_KEY!r} is reserved for the framing")
    descriptors: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    total = 0
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, np.ndarray):
            raise LocalProtocolError(f"tensor {i} is a {type(tensor).__name__}, not an ndarray")
        if tensor.dtype.byteorder == ">":
            tensor = tensor.astype(tensor.dtype.newbyteorder("<"))
        if tensor.dtype.str not in DTYPES:
            allowed = ", ".join(sorted(DTYPES))
            raise LocalProtocolError(
                f"tensor {i} has dtype {tensor.dtype.str!r}; the wire carries only {allowed}"
            )
        # C order is what the receiver assumes; a copy only for strided/Fortran arrays.
        tensor = np.ascontiguousarray(tensor)
        descriptors.append(
            {"dtype": tensor.dtype.str, "shape": list(tensor.shape), "nbytes": tensor.nbytes}
        )
        if tensor.nbytes:
            chunks.append(tensor.reshape(-1).view(np.uint8).data)
        total += tensor.nbytes
    body = dict(header)
    body[TENSORS_KEY] = descriptors
    try:
        packed = msgpack.packb(body, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"frame header cannot be encoded as msgpack: {exc}") from exc
    if len(packed) > _U32_MAX:
        raise LocalProtocolError(f"frame header of {len(packed)} bytes exceeds the u32 field")
    prefix = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(packed), total, len(descriptors))
    return [prefix + packed, *chunks]
