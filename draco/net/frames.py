"""Sans-IO framing: bytes in, frames out; frames in, byte chunks out. No asyncio, no sockets.

A frame (full spec with byte offsets in ``docs/protocol.md``)::

    prefix   24 bytes, network byte order, struct "!4sHHIQI":
             magic b"DRCO" | version u16 | flags u16 (0) | header_len u32 |
             tensor_bytes u64 | n_tensors u32
    header   header_len bytes: one msgpack map {"type": str, <fields>..., "tensors": [desc...]}
             desc = {"dtype": "<f4", "shape": [d, ...], "nbytes": int}
    tensors  tensor_bytes raw bytes: the tensors' C-order bytes, back to back, in desc order

The public face of three modules, one job each:

- ``draco.net.wireformat``: the constants, :class:`Limits`, :class:`Frame` and
  :func:`encode_frame`;
- ``draco.net.framedecoder``: :class:`FrameDecoder`, the incremental, bounded parser (every
  declared length is checked against :class:`Limits` before anything is allocated or read;
  tensor bytes land straight in their final arrays);
- ``draco.net.arraypool``: :class:`ArrayPool`, the receive buffers the parameter server reuses
  from round to round (the decoder's :data:`Allocate` hook).
"""

from __future__ import annotations

from draco.net.arraypool import Allocate, ArrayPool
from draco.net.framedecoder import FrameDecoder
from draco.net.wireformat import (
    DTYPES,
    MAGIC,
    PREFIX,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    TENSORS_KEY,
    Frame,
    Limits,
    encode_frame,
)

__all__ = [
    "DTYPES",
    "MAGIC",
    "PREFIX",
    "PREFIX_SIZE",
    "PROTOCOL_VERSION",
    "TENSORS_KEY",
    "Allocate",
    "ArrayPool",
    "Frame",
    "FrameDecoder",
    "Limits",
    "encode_frame",
]
