"""Sans-IO framing: bytes in, frames out; frames in, byte chunks out. No asyncio, no sockets.

The frame's layout is in ``draco.net.wireformat`` (byte offsets in ``docs/protocol.md``).

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
