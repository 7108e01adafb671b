"""The protocol's messages: one frozen dataclass each, validating its own fields.

Constructing a message with bad fields raises :class:`LocalProtocolError` (we built it);
:func:`from_wire` turns the same failures on received data into :class:`RemoteProtocolError`.
Header keys per message type are listed in ``docs/protocol.md``.

Tensor fields (``RoundStart.params``, ``Gradient.payload``) travel out of band as frame
tensors; every other field is a key of the msgpack header. Values are not checked for
finiteness here: a non-finite payload is an erasure for the round engine, not a protocol error.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeAlias

import numpy as np

from draco.core.digests import MAX_DIGEST_BYTES, MIN_DIGEST_BYTES
from draco.errors import (
    AuthError,
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    SeatTakenError,
    VersionMismatchError,
)

__all__ = [
    "MAX_ATTEMPT",
    "MAX_WORKER_ID",
    "MESSAGE_TYPES",
    "NONCE_BYTES",
    "PAYLOAD_DTYPES",
    "Auth",
    "Bye",
    "Challenge",
    "Digest",
    "Error",
    "Gradient",
    "Hello",
    "Message",
    "Payload",
    "PayloadRequest",
    "RoundStart",
    "Welcome",
    "from_wire",
    "to_wire",
]

#: Length of the handshake nonce and of the handshake MAC (HMAC-SHA256), bytes.
NONCE_BYTES = 32
MAC_BYTES = 32
#: dtypes a Gradient payload may have (the codes' payload dtypes).
PAYLOAD_DTYPES: tuple[np.dtype, ...] = (
    np.dtype(np.float32),
    np.dtype(np.complex64),
    np.dtype(np.complex128),
)


class ErrorCode(enum.StrEnum):
    """The ``Error.code`` values this package sends (the field accepts any short snake_case
    identifier, so a newer peer's codes still parse). Chosen by exception type in
    :func:`error_code_for`, never by an exception's text."""

    PROTOCOL_ERROR = "protocol_error"  # the peer broke the protocol (RemoteProtocolError)
    VERSION_MISMATCH = "version_mismatch"  # the peer speaks another protocol version
    AUTH_FAILED = "auth_failed"  # wrong MAC, unknown worker id
    SEAT_TAKEN = "seat_taken"  # another live connection holds this worker id
    TIMEOUT = "timeout"  # the handshake was not completed in time
    REFUSED_CONFIG = "refused_config"  # a worker will not run the Welcome's task (its policy)


def error_code_for(exc: BaseException) -> ErrorCode:
    """The code an ``Error`` message gives for ``exc`` (most specific exception type first)."""
    if isinstance(exc, VersionMismatchError):
        return ErrorCode.VERSION_MISMATCH
    if isinstance(exc, SeatTakenError):
        return ErrorCode.SEAT_TAKEN
    if isinstance(exc, AuthError):
        return ErrorCode.AUTH_FAILED
    if isinstance(exc, ConfigError):
        return ErrorCode.REFUSED_CONFIG
    return ErrorCode.PROTOCOL_ERROR


MAX_WORKER_ID = 2**32 - 1  # worker ids are uint32 on the wire
_MAX_ROUND = 2**63 - 1
#: Largest attempt number of one round (a retry counter; the PS gives up long before).
MAX_ATTEMPT = 2**32 - 1
_MAX_SEED = 2**64 - 1
_MAX_TEXT = 4096
_MAX_CONFIG_DEPTH = 16
# Digest and digest-key lengths a message may carry: MIN_DIGEST_BYTES..MAX_DIGEST_BYTES
# (draco.core.digests). The run's exact digest length is checked by the round engine.
_IDENT = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _fail(cls: type, msg: str) -> LocalProtocolError:
    return LocalProtocolError(f"{cls.__name__}: {msg}")


def _check_int(obj: Any, name: str, lo: int, hi: int) -> None:
    """Integer field in [lo, hi]; numpy integers are normalized to int, bools refused."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise _fail(type(obj), f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not lo <= value <= hi:
        raise _fail(type(obj), f"{name} must be in [{lo}, {hi}], got {value}")
    object.__setattr__(obj, name, value)


def _check_bytes(obj: Any, name: str, length: int) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _fail(type(obj), f"{name} must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) != length:
        raise _fail(type(obj), f"{name} must be {length} bytes, got {len(value)}")
    object.__setattr__(obj, name, value)


def _check_bytes_range(obj: Any, name: str, lo: int, hi: int, *, empty: bool = False) -> None:
    """A bytes field of lo..hi bytes (or empty, when ``empty``)."""
    value = getattr(obj, name)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _fail(type(obj), f"{name} must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if not (lo <= len(value) <= hi or (empty and not value)):
        allowed = f"empty or {lo}..{hi}" if empty else f"{lo}..{hi}"
        raise _fail(type(obj), f"{name} must be {allowed} bytes, got {len(value)}")
    object.__setattr__(obj, name, value)


def _check_compute_seconds(obj: Any) -> None:
    value = obj.compute_seconds
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise _fail(type(obj), f"compute_seconds must be a float, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise _fail(type(obj), f"compute_seconds must be finite and >= 0, got {value}")
    object.__setattr__(obj, "compute_seconds", value)


def _check_text(obj: Any, name: str, *, ident: bool = False, max_len: int = _MAX_TEXT) -> None:
    value = getattr(obj, name)
    if not isinstance(value, str):
        raise _fail(type(obj), f"{name} must be a str, got {type(value).__name__}")
    if len(value) > max_len:
        raise _fail(type(obj), f"{name} is longer than {max_len} characters")
    if ident and not _IDENT.fullmatch(value):
        raise _fail(type(obj), f"{name} must be a snake_case identifier, got {value!r}")


def _check_vector(obj: Any, name: str, dtypes: Sequence[np.dtype]) -> None:
    value = getattr(obj, name)
    if not isinstance(value, np.ndarray):
        raise _fail(type(obj), f"{name} must be a numpy array, got {type(value).__name__}")
    if value.ndim != 1:
        raise _fail(type(obj), f"{name} must be 1-D, got shape {value.shape}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise _fail(type(obj), f"{name} must have dtype {allowed}; got {value.dtype}")


def _normalize_config(cls: type, value: Any, path: str, depth: int = 0) -> Any:
    """A copy of ``value`` as msgpack carries it: numpy scalars -> Python, tuples -> lists.

    Refuses non-str map keys, ints beyond 64 bits, arrays and other types msgpack cannot carry
    (so a received Welcome equals the one sent).
    """
    if depth > _MAX_CONFIG_DEPTH:
        raise _fail(cls, f"{path} nests deeper than {_MAX_CONFIG_DEPTH} levels")
    if isinstance(value, np.generic) and not isinstance(value, np.void):
        value = value.item()
    if value is None or isinstance(value, bool | float | str | bytes):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value <= 2**64 - 1:
            raise _fail(cls, f"{path} = {value} does not fit in 64 bits")
        return value
    if isinstance(value, list | tuple):
        return [
            _normalize_config(cls, item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)
        ]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(cls, f"{path} has a non-str key {key!r}")
            out[key] = _normalize_config(cls, item, f"{path}[{key!r}]", depth + 1)
        return out
    hint = " (use .tolist())" if isinstance(value, np.ndarray) else ""
    raise _fail(
        cls, f"{path} has a value of type {type(value).__name__} msgpack cannot carry{hint}"
    )


@dataclass(frozen=True)
class Hello:
    """Client -> server, first message: the protocol version and the claimed worker id."""

    type_name: ClassVar[str] = "hello"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    protocol_version: int
    worker_id: int

    def __post_init__(self) -> None:
        _check_int(self, "protocol_version", 0, 2**16 - 1)
        _check_int(self, "worker_id", 0, MAX_WORKER_ID)


@dataclass(frozen=True)
class Challenge:
    """Server -> client: a fresh random nonce (32 bytes) to be MACed with the worker token."""

    type_name: ClassVar[str] = "challenge"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    nonce: bytes

    def __post_init__(self) -> None:
        _check_bytes(self, "nonce", NONCE_BYTES)


@dataclass(frozen=True)
class Auth:
    """Client -> server: ``mac = HMAC-SHA256(token, b"draco-auth-v1" + nonce + id)`` (32 bytes)."""

    type_name: ClassVar[str] = "auth"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    mac: bytes

    def __post_init__(self) -> None:
        _check_bytes(self, "mac", MAC_BYTES)


@dataclass(frozen=True)
class Welcome:
    """Server -> client after a valid Auth: the run configuration for this worker.

    ``config`` is a msgpack-able map with str keys (keys listed in docs/architecture.md).
    It is stored normalized as msgpack carries it: numpy scalars become Python numbers and
    tuples become lists.
    """

    type_name: ClassVar[str] = "welcome"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    config: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.config, dict):
            raise _fail(type(self), f"config must be a dict, got {type(self.config).__name__}")
        object.__setattr__(self, "config", _normalize_config(type(self), self.config, "config"))


def _arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


@dataclass(frozen=True, eq=False)
class RoundStart:
    """Server -> client: start round ``round_index`` from ``params``.

    Attributes
    ----------
    round_index : int
        0 .. 2**63-1.
    params : np.ndarray
        (d,) float32, the current model parameters (a tensor on the wire).
    attack : str or None
        The attack this worker applies this round (None = honest).
    attack_seed : int
        0 .. 2**64-1; seeds ``np.random.default_rng`` for the attack.
    attempt : int
        0 .. 2**32-1: which attempt of ``round_index`` this is (0 = first; a failed round is
        run again with the same index and parameters under the next attempt number).
    digest_key : bytes
        Empty: answer with a ``Gradient`` (full payload). 16..64 bytes: digest-first vote,
        answer with a ``Digest`` keyed with it (fresh and random for every attempt).
    """

    type_name: ClassVar[str] = "round_start"
    tensor_fields: ClassVar[tuple[str, ...]] = ("params",)

    round_index: int
    params: np.ndarray
    attack: str | None
    attack_seed: int
    attempt: int = 0
    digest_key: bytes = b""

    def __post_init__(self) -> None:
        _check_int(self, "round_index", 0, _MAX_ROUND)
        _check_vector(self, "params", (np.dtype(np.float32),))
        if self.attack is not None:
            _check_text(self, "attack", ident=True)
        _check_int(self, "attack_seed", 0, _MAX_SEED)
        _check_int(self, "attempt", 0, MAX_ATTEMPT)
        _check_bytes_range(self, "digest_key", MIN_DIGEST_BYTES, MAX_DIGEST_BYTES, empty=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoundStart):
            return NotImplemented
        return (
            self.round_index == other.round_index
            and self.attempt == other.attempt
            and self.attack == other.attack
            and self.attack_seed == other.attack_seed
            and self.digest_key == other.digest_key
            and _arrays_equal(self.params, other.params)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Gradient:
    """Client -> server: this worker's encoded payload for round ``round_index``.

    Attributes
    ----------
    round_index : int
        The round this answers.
    payload : np.ndarray
        (d,) float32, complex64 or complex128 (the code's payload dtype).
    compute_seconds : float
        Time the worker spent computing, seconds (finite, >= 0).
    attempt : int
        The attempt of ``round_index`` this answers (``RoundStart.attempt``, echoed).
    """

    type_name: ClassVar[str] = "gradient"
    tensor_fields: ClassVar[tuple[str, ...]] = ("payload",)

    round_index: int
    payload: np.ndarray
    compute_seconds: float
    attempt: int = 0

    def __post_init__(self) -> None:
        _check_int(self, "round_index", 0, _MAX_ROUND)
        _check_int(self, "attempt", 0, MAX_ATTEMPT)
        _check_vector(self, "payload", PAYLOAD_DTYPES)
        _check_compute_seconds(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Gradient):
            return NotImplemented
        return (
            self.round_index == other.round_index
            and self.attempt == other.attempt
            and self.compute_seconds == other.compute_seconds
            and _arrays_equal(self.payload, other.payload)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Digest:
    """Client -> server (digest-first vote): the keyed digest of this worker's payload.

    Attributes
    ----------
    round_index, attempt : int
        The ``RoundStart`` this answers (echoed).
    digest : bytes
        ``BLAKE2b(payload bytes, key=RoundStart.digest_key, digest_size=D)``, 16..64 bytes
        (D = ``Welcome.config["digest_bytes"]``; see ``draco.core.digests``).
    compute_seconds : float
        Time the worker spent computing, seconds (finite, >= 0).
    """

    type_name: ClassVar[str] = "digest"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    round_index: int
    attempt: int
    digest: bytes
    compute_seconds: float

    def __post_init__(self) -> None:
        _check_int(self, "round_index", 0, _MAX_ROUND)
        _check_int(self, "attempt", 0, MAX_ATTEMPT)
        _check_bytes_range(self, "digest", MIN_DIGEST_BYTES, MAX_DIGEST_BYTES)
        _check_compute_seconds(self)


@dataclass(frozen=True)
class PayloadRequest:
    """Server -> client (digest-first vote): send the full payload you digested for
    (``round_index``, ``attempt``)."""

    type_name: ClassVar[str] = "payload_request"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    round_index: int
    attempt: int

    def __post_init__(self) -> None:
        _check_int(self, "round_index", 0, _MAX_ROUND)
        _check_int(self, "attempt", 0, MAX_ATTEMPT)


@dataclass(frozen=True, eq=False)
class Payload:
    """Client -> server (digest-first vote): the full payload a ``PayloadRequest`` asked for.

    Attributes
    ----------
    round_index, attempt : int
        The request this answers (echoed).
    payload : np.ndarray
        (d,) float32 (the repetition code's payload); the PS checks its digest.
    """

    type_name: ClassVar[str] = "payload"
    tensor_fields: ClassVar[tuple[str, ...]] = ("payload",)

    round_index: int
    attempt: int
    payload: np.ndarray

    def __post_init__(self) -> None:
        _check_int(self, "round_index", 0, _MAX_ROUND)
        _check_int(self, "attempt", 0, MAX_ATTEMPT)
        _check_vector(self, "payload", PAYLOAD_DTYPES)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Payload):
            return NotImplemented
        return (
            self.round_index == other.round_index
            and self.attempt == other.attempt
            and _arrays_equal(self.payload, other.payload)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Bye:
    """Either side, last message: an orderly end (e.g. ``"run complete"``)."""

    type_name: ClassVar[str] = "bye"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    reason: str

    def __post_init__(self) -> None:
        _check_text(self, "reason")


@dataclass(frozen=True)
class Error:
    """Either side, last message: why the connection is being closed.

    ``code`` is a snake_case identifier (the package sends the :class:`ErrorCode` values),
    ``message`` a sentence for a person.
    """

    type_name: ClassVar[str] = "error"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    code: str
    message: str

    def __post_init__(self) -> None:
        _check_text(self, "code", ident=True, max_len=64)
        _check_text(self, "message")
        if isinstance(self.code, ErrorCode):  # the wire carries the plain string
            object.__setattr__(self, "code", self.code.value)


Message: TypeAlias = (
    Hello
    | Challenge
    | Auth
    | Welcome
    | RoundStart
    | Gradient
    | Digest
    | PayloadRequest
    | Payload
    | Bye
    | Error
)

#: Wire type name -> message class.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type_name: cls
    for cls in (
        Hello,
        Challenge,
        Auth,
        Welcome,
        RoundStart,
        Gradient,
        Digest,
        PayloadRequest,
        Payload,
        Bye,
        Error,
    )
}

# Per message type, the header keys its frame carries besides "type": built once, as
# dataclasses.fields() builds a tuple on every call and from_wire runs once per frame.
_HEADER_KEYS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls)) - frozenset(cls.tensor_fields)
    for cls in MESSAGE_TYPES.values()
}


def to_wire(msg: Message) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
    """Split a message into its msgpack header map and its tensors (in wire order).

    Raises
    ------
    LocalProtocolError
        ``msg`` is not a message.
    """
    if type(msg) not in MESSAGE_TYPES.values():
        raise LocalProtocolError(f"not a protocol message: {type(msg).__name__}")
    header: dict[str, Any] = {"type": msg.type_name}
    for f in fields(msg):
        if f.name not in msg.tensor_fields:
            header[f.name] = getattr(msg, f.name)
    tensors = tuple(getattr(msg, name) for name in msg.tensor_fields)
    return header, tensors


def from_wire(header: Mapping[str, Any], tensors: Sequence[np.ndarray]) -> Message:
    """Build the message a received frame carries.

    Parameters
    ----------
    header : Mapping[str, Any]
        The frame header without its ``"tensors"`` key.
    tensors : Sequence[np.ndarray]
        The frame's tensors in wire order.

    Raises
    ------
    RemoteProtocolError
        Unknown type, missing or extra keys, wrong number of tensors, or a field that fails
        the message's validation.
    """
    if not isinstance(header, Mapping):
        raise RemoteProtocolError(f"frame header must be a map, got {type(header).__name__}")
    type_name = header.get("type")
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        known = ", ".join(sorted(MESSAGE_TYPES))
        raise RemoteProtocolError(f"unknown message type {type_name!r} (known: {known})")
    scalar_names = _HEADER_KEYS[cls]
    keys = header.keys() - {"type"}
    if keys != scalar_names:
        missing = sorted(scalar_names - keys)
        extra = sorted(str(k) for k in keys - scalar_names)
        raise RemoteProtocolError(
            f"{type_name!r} message has missing keys {missing} / unexpected keys {extra}"
        )
    if len(tensors) != len(cls.tensor_fields):
        raise RemoteProtocolError(
            f"{type_name!r} message carries {len(tensors)} tensors, "
            f"expected {len(cls.tensor_fields)}"
        )
    kwargs = {name: header[name] for name in scalar_names}
    kwargs.update(zip(cls.tensor_fields, tensors, strict=True))
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"invalid {type_name!r} message from peer: {exc}") from exc
    except (TypeError, ValueError) as exc:  # defensive: validation should have caught these
        raise RemoteProtocolError(f"invalid {type_name!r} message from peer: {exc}") from exc
