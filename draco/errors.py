"""The project's small, flat exception vocabulary (after httpcore's ``_exceptions.py``).

Every error a user can cause is one of these, carrying a message a person can act on; the
command-line entry points print it and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations


class DracoError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DracoError, ValueError):
    """A configuration value is invalid (bad flag, impossible combination, missing file)."""


class DecodeError(DracoError):
    """The received payloads exceed the code's budget: no exact sum can be guaranteed.

    Raised instead of returning a possibly wrong gradient.
    """


class DataError(DracoError):
    """A dataset is missing, truncated or fails its checks."""


class ProtocolError(DracoError):
    """Base class of wire-protocol violations."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, oversized or out of order."""


class AuthError(DracoError):
    """A credential was refused, or a handshake did not complete in time."""


class SeatTakenError(AuthError):
    """The credential is good, but another live connection holds this worker id's seat."""


class VersionMismatchError(RemoteProtocolError):
    """The peer speaks another protocol version."""
