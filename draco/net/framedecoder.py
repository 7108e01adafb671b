"""The incremental, bounded frame decoder (sans-IO): bytes in, frames out.

The format is in ``draco.net.wireformat`` (and ``docs/protocol.md``). Every declared length
is checked against :class:`Limits` before anything is allocated or read; the tensor bytes then
land straight in their final, preallocated ``numpy`` arrays (the ``get_buffer`` /
``buffer_updated`` path of ``asyncio.BufferedProtocol``), so the parameter server's ingest
loop copies each payload byte at most once (zero times on that path, apart from the few KB
of a payload that arrive in the same read as its frame's header).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np

from draco.errors import LocalProtocolError, RemoteProtocolError, VersionMismatchError
from draco.net.arraypool import Allocate, new_array
from draco.net.wireformat import (
    DTYPES,
    MAGIC,
    PREFIX,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    TENSORS_KEY,
    Frame,
    Limits,
)

__all__ = ["FrameDecoder"]

# Size of the scratch buffer lent to the BufferedProtocol path outside tensor bodies.
_SCRATCH_BYTES = 64 * 1024
# What a read between frames may take: the prefix, a usual header (a Gradient's is ~110
# bytes) and the first bytes of the body, in one read instead of three. Small, because the
# body bytes in it are copied once more (scratch -> array) and moved in the backlog.
_LOOKAHEAD_BYTES = 4096
# The wire dtypes, built once: a frame's descriptors are checked against this table.
_WIRE_DTYPES: dict[str, np.dtype] = {name: np.dtype(name) for name in DTYPES}
_PREFIX_PHASE, _HEADER_PHASE, _BODY_PHASE = "prefix", "header", "body"
_LENT_NONE, _LENT_SCRATCH, _LENT_TENSOR = 0, 1, 2
_DESCRIPTOR_KEYS = frozenset({"dtype", "shape", "nbytes"})
# First bytes of a TLS record (handshake, version 3.x): a hint when one side forgot --tls-*.
_TLS_RECORD = b"\x16\x03"


class FrameDecoder:
    """Incremental, bounded frame parser (sans-IO).

    Feed it with :meth:`receive_data` (any split of the byte stream, ``b""`` = EOF) or with the
    zero-copy pair :meth:`get_buffer` / :meth:`buffer_updated`; take frames with
    :meth:`next_frame`. It parses at most one frame ahead: bytes after a completed frame wait
    unparsed until that frame is taken, so limits changed in between (after authentication)
    apply to the next frame's declarations.

    Hostile input never raises from the feeding methods: the error is stored and raised as
    :class:`RemoteProtocolError` by :meth:`next_frame` (after any frames completed before it);
    from then on the decoder is dead and discards input.

    Parameters
    ----------
    limits : Limits
        Applied to each frame when its prefix is parsed; the attribute may be replaced.
    allocate : Allocate, optional
        Where a frame's tensors are received into (see :data:`Allocate`); ``np.empty`` by
        default. Called once per non-empty tensor, after the frame's header passed the limits.
    """

    def __init__(self, limits: Limits, allocate: Allocate | None = None) -> None:
        if not isinstance(limits, Limits):
            raise LocalProtocolError(f"limits must be a Limits, got {type(limits).__name__}")
        if allocate is not None and not callable(allocate):
            raise LocalProtocolError(f"allocate must be callable, got {type(allocate).__name__}")
        self.limits = limits
        self._allocate: Allocate = allocate if allocate is not None else new_array
        self._buf = bytearray()  # received, not yet parsed (prefix/header bytes or backlog)
        self._phase = _PREFIX_PHASE
        self._header_len = 0
        self._tensor_bytes = 0
        self._n_tensors = 0
        self._header: dict[str, Any] = {}
        self._arrays: list[np.ndarray] = []
        self._views: list[memoryview] = []  # flat uint8 views of the non-empty arrays
        self._view_index = 0  # tensor being received
        self._view_fill = 0  # bytes of it received so far
        self._ready: Frame | None = None
        self._error: RemoteProtocolError | None = None
        self._error_raised = False
        self._eof = False
        # Allocated on first use: an idle connection (a flood's) never costs these 64 KB.
        self._scratch: memoryview | None = None
        self._lent = _LENT_NONE
        self._lent_len = 0

    # -- feeding -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (tensor bytes are copied once into their array); ``b""`` = EOF.

        Feeding ``b""`` again is harmless.

        Raises
        ------
        LocalProtocolError
            Data fed after EOF (a bug in the caller).
        """
        if len(data) == 0:
            self._eof = True  # idempotent: eof_received and connection_lost may both report it
            return
        if self._eof:
            raise LocalProtocolError("receive_data called after EOF")
        with memoryview(data) as view:
            self._feed(view.cast("B") if view.format != "B" or view.ndim != 1 else view)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable buffer for the next read (``BufferedProtocol.get_buffer``).

        While a tensor body is being received this is a view into that tensor's final array
        (all its remaining bytes: one read takes whatever the kernel holds); otherwise a
        scratch buffer: 4 KiB between frames (the prefix, a usual header and the first body
        bytes in one read), the bytes still needed inside a header.
        """
        # The hot path first, with no call: the rest of the tensor being received. The body
        # phase means no frame is waiting (_complete leaves it), so there is nothing to parse.
        if self._phase == _BODY_PHASE and not self._buf and self._error is None:
            view = self._views[self._view_index][self._view_fill :]
            self._lent, self._lent_len = _LENT_TENSOR, len(view)
            return view
        self._process()
        idle_body = self._phase == _BODY_PHASE and not self._buf
        if self._error is None and self._ready is None and idle_body:
            view = self._views[self._view_index][self._view_fill :]
            self._lent, self._lent_len = _LENT_TENSOR, len(view)
            return view
        if self._error is not None or self._ready is not None or self._eof:
            need = _SCRATCH_BYTES  # discarded (dead) or kept as backlog (frame waiting)
        elif self._phase == _PREFIX_PHASE:
            need = _LOOKAHEAD_BYTES
        else:
            need = self._header_len - len(self._buf)
        need = max(1, min(need, _SCRATCH_BYTES))
        self._lent, self._lent_len = _LENT_SCRATCH, need
        if self._scratch is None:
            self._scratch = memoryview(bytearray(_SCRATCH_BYTES))
        return self._scratch[:need]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last buffer from :meth:`get_buffer`.

        Raises
        ------
        LocalProtocolError
            No buffer was lent, or ``nbytes`` exceeds its size (a bug in the caller).
        """
        lent, self._lent = self._lent, _LENT_NONE
        if lent == _LENT_TENSOR and 0 < nbytes < self._lent_len:
            self._view_fill += nbytes  # the hot path: still inside the tensor, nothing to parse
            return
        if lent == _LENT_NONE:
            raise LocalProtocolError("buffer_updated called without a preceding get_buffer")
        if not 0 <= nbytes <= self._lent_len:
            raise LocalProtocolError(f"buffer_updated({nbytes}) exceeds the lent buffer")
        if nbytes == 0:
            return
        if lent == _LENT_TENSOR:
            self._advance_body(nbytes)  # the bytes are already in the array
        else:
            assert self._scratch is not None  # lent by get_buffer
            self._feed(self._scratch[:nbytes])

    def _feed(self, data: memoryview) -> None:
        if self._error is not None:
            return  # dead: discard
        pos, end = 0, len(data)
        # Fast path: a tensor body with nothing buffered before it -> straight into the array.
        while pos < end and self._ready is None and self._phase == _BODY_PHASE and not self._buf:
            dst = self._views[self._view_index]
            k = min(end - pos, len(dst) - self._view_fill)
            dst[self._view_fill : self._view_fill + k] = data[pos : pos + k]
            pos += k
            self._advance_body(k)
        if pos < end:
            self._buf += data[pos:]
        self._process()

    def _advance_body(self, nbytes: int) -> None:
        self._view_fill += nbytes
        while self._view_index < len(self._views) and self._view_fill == len(
            self._views[self._view_index]
        ):
            self._view_index += 1
            self._view_fill = 0
        if self._view_index == len(self._views):
            self._complete()

    # -- parsing -------------------------------------------------------------------------

    def _process(self) -> None:
        """Parse buffered bytes until one frame is complete or more bytes are needed."""
        if self._error is not None:
            return
        try:
            while self._ready is None:
                if self._phase == _PREFIX_PHASE:
                    if not self._parse_prefix():
                        return
                elif self._phase == _HEADER_PHASE:
                    if len(self._buf) < self._header_len:
                        return
                    self._parse_header()
                else:
                    if not self._buf:
                        return
                    self._drain_buffer_into_body()
        except RemoteProtocolError as exc:
            self._fail(exc)

    @staticmethod
    def _check_start(buf: bytearray) -> None:
        """Raise if the magic or the version, as far as received, is not this side's."""
        seen = bytes(buf[: len(MAGIC)])
        if seen != MAGIC[: len(seen)]:
            hint = ""
            if seen.startswith(_TLS_RECORD[: len(seen)]) and len(seen) >= 2:
                hint = " (it looks like TLS: enable --tls-* on both sides or on neither)"
            raise RemoteProtocolError(
                f"not a draco frame: bad magic {seen!r}, expected {MAGIC!r}{hint}"
            )
        if len(buf) >= 6:
            # Magic and version keep their offsets in every version: report a mismatch first.
            (version,) = struct.unpack_from("!H", buf, 4)
            if version != PROTOCOL_VERSION:
                raise VersionMismatchError(
                    f"peer speaks draco protocol version {version}, this side speaks version "
                    f"{PROTOCOL_VERSION}; run the same draco release on the server and workers"
                )

    def _parse_prefix(self) -> bool:
        buf = self._buf
        if len(buf) < PREFIX_SIZE:
            self._check_start(buf)  # report a wrong magic or version as early as seen
            return False
        magic, version, flags, header_len, tensor_bytes, n_tensors = PREFIX.unpack_from(buf)
        if magic != MAGIC or version != PROTOCOL_VERSION:
            self._check_start(buf)
            raise AssertionError("unreachable: _check_start raises on this prefix")
        limits = self.limits
        if flags != 0:
            raise RemoteProtocolError(f"frame sets unknown flags 0x{flags:04x}")
        if header_len == 0:
            raise RemoteProtocolError("frame declares an empty header")
        if header_len > limits.max_header_bytes:
            raise RemoteProtocolError(
                f"frame declares a {header_len}-byte header; the limit is "
                f"{limits.max_header_bytes} bytes (max_header_bytes)"
            )
        if (n_tensors or tensor_bytes) and limits.max_tensors == 0:
            raise RemoteProtocolError(
                f"frame declares {n_tensors} tensors ({tensor_bytes} bytes) where no tensor "
                "data is accepted (before authentication)"
            )
        if n_tensors > limits.max_tensors:
            raise RemoteProtocolError(
                f"frame declares {n_tensors} tensors; the limit is {limits.max_tensors}"
            )
        if tensor_bytes > limits.max_tensor_bytes:
            raise RemoteProtocolError(
                f"frame declares {tensor_bytes} tensor bytes; the limit is "
                f"{limits.max_tensor_bytes} bytes (max_tensor_bytes)"
            )
        if n_tensors == 0 and tensor_bytes != 0:
            raise RemoteProtocolError(f"frame declares {tensor_bytes} tensor bytes but 0 tensors")
        self._header_len = header_len
        self._tensor_bytes = tensor_bytes
        self._n_tensors = n_tensors
        del buf[:PREFIX_SIZE]
        self._phase = _HEADER_PHASE
        return True

    def _parse_header(self) -> None:
        raw = bytes(self._buf[: self._header_len])
        del self._buf[: self._header_len]
        try:
            # unpackb bounds every str/bin/array/map length by len(raw) <= max_header_bytes.
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, max_ext_len=0)
        except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
            raise RemoteProtocolError(
                f"frame header is not valid msgpack: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(obj, dict):
            raise RemoteProtocolError(
                f"frame header must be a msgpack map, got {type(obj).__name__}"
            )
        descriptors = obj.pop(TENSORS_KEY, None)
        if not isinstance(descriptors, list):
            raise RemoteProtocolError(f"frame header lacks the {TENSORS_KEY!r} list")
        if len(descriptors) != self._n_tensors:
            raise RemoteProtocolError(
                f"frame prefix declares {self._n_tensors} tensors, header describes "
                f"{len(descriptors)}"
            )
        specs = [self._parse_descriptor(i, d) for i, d in enumerate(descriptors)]
        declared = sum(nbytes for _, _, nbytes in specs)
        if declared != self._tensor_bytes:
            raise RemoteProtocolError(
                f"tensor descriptors sum to {declared} bytes, the prefix declares "
                f"{self._tensor_bytes}"
            )
        # Every length is now checked against the limits: allocation is bounded.
        self._header = obj
        self._arrays = [self._receive_array(dtype, shape) for dtype, shape, _ in specs]
        self._views = [a.reshape(-1).view(np.uint8).data for a in self._arrays if a.nbytes]
        self._view_index = self._view_fill = 0
        self._phase = _BODY_PHASE
        if not self._views:
            self._complete()

    def _receive_array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        if math.prod(shape) == 0:
            return np.empty(shape, dtype=dtype)  # no bytes to receive: never the hook's business
        arr = self._allocate(dtype, shape)
        ok = isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.shape == shape
        if not (ok and (flags := arr.flags).c_contiguous and flags.writeable):
            # A bug in the hook, not the peer's fault: never receive into the wrong memory.
            raise LocalProtocolError(
                f"allocate({dtype.str}, {shape}) returned {type(arr).__name__} "
                f"{getattr(arr, 'dtype', '')} {getattr(arr, 'shape', '')}: expected a "
                "C-contiguous writeable array of exactly that dtype and shape"
            )
        return arr

    def _parse_descriptor(self, i: int, desc: Any) -> tuple[np.dtype, tuple[int, ...], int]:
        # Exact type checks: msgpack makes plain dict, list, str and int (never bool for an
        # int), and they are cheaper than isinstance on this per-frame path.
        if type(desc) is not dict or desc.keys() != _DESCRIPTOR_KEYS:
            raise RemoteProtocolError(
                f"tensor descriptor {i} must be a map with keys dtype, shape, nbytes"
            )
        name, shape, nbytes = desc["dtype"], desc["shape"], desc["nbytes"]
        dtype = _WIRE_DTYPES.get(name) if type(name) is str else None
        if dtype is None:
            allowed = ", ".join(sorted(DTYPES))
            raise RemoteProtocolError(f"tensor {i} has dtype {name!r}; allowed: {allowed}")
        if type(shape) is not list or len(shape) > self.limits.max_ndim:
            raise RemoteProtocolError(
                f"tensor {i} shape must be a list of at most {self.limits.max_ndim} sizes"
            )
        for n in shape:
            if type(n) is not int or n < 0:
                raise RemoteProtocolError(f"tensor {i} shape {shape!r} has a non-size entry")
        if type(nbytes) is not int:
            raise RemoteProtocolError(f"tensor {i} nbytes must be an int, got {nbytes!r}")
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if expected != nbytes:
            raise RemoteProtocolError(
                f"tensor {i}: shape {shape} x itemsize of {name} = {expected} bytes, "
                f"descriptor says {nbytes}"
            )
        if nbytes > self._tensor_bytes:
            raise RemoteProtocolError(
                f"tensor {i} declares {nbytes} bytes, more than the frame's {self._tensor_bytes}"
            )
        return dtype, tuple(shape), nbytes

    def _drain_buffer_into_body(self) -> None:
        with memoryview(self._buf) as src:
            pos = 0
            while pos < len(src) and self._ready is None:
                dst = self._views[self._view_index]
                k = min(len(src) - pos, len(dst) - self._view_fill)
                dst[self._view_fill : self._view_fill + k] = src[pos : pos + k]
                pos += k
                self._advance_body(k)
        del self._buf[:pos]

    def _complete(self) -> None:
        self._ready = Frame(
            header=self._header,
            tensors=tuple(self._arrays),
            wire_bytes=PREFIX_SIZE + self._header_len + self._tensor_bytes,
        )
        self._header, self._arrays, self._views = {}, [], []
        self._view_index = self._view_fill = 0
        self._phase = _PREFIX_PHASE

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self._buf = bytearray()
        self._arrays, self._views = [], []

    # -- output --------------------------------------------------------------------------

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` if more bytes are needed (or at a clean EOF).

        Raises
        ------
        RemoteProtocolError
            Malformed or over-limit input, or EOF in the middle of a frame; raised again
            (as a new exception of the same type) on every later call.
        VersionMismatchError
            The peer's frame carries another protocol version.
        """
        frame = self._ready
        if frame is not None:
            self._ready = None
            return frame
        idle = self._phase == _PREFIX_PHASE and not self._buf and not self._eof
        if idle and self._error is None:
            return None  # between frames with nothing received: the pump's last call
        self._process()
        if self._ready is not None:
            frame, self._ready = self._ready, None
            return frame
        if self._error is None and self._eof and not self.idle:
            self._fail(
                RemoteProtocolError(
                    f"peer closed the connection in the middle of a frame ({self._phase})"
                )
            )
        if self._error is not None:
            if not self._error_raised:
                self._error_raised = True
                raise self._error
            raise type(self._error)(f"decoder already failed: {self._error}")
        return None

    @property
    def mid_body(self) -> bool:
        """True while tensor bytes of a frame are still expected and nothing is to report:
        :meth:`next_frame` would return ``None`` (the per-read fast path of the shells)."""
        return (
            self._phase == _BODY_PHASE
            and self._ready is None
            and self._error is None
            and not self._eof
            and not self._buf
        )

    @property
    def eof(self) -> bool:
        """True once EOF was fed."""
        return self._eof

    @property
    def idle(self) -> bool:
        """True between frames: no partial frame is buffered and none is waiting."""
        return self._phase == _PREFIX_PHASE and not self._buf and self._ready is None
