"""Credentials without sockets: cluster secret, per-worker tokens, handshake MACs, TLS contexts.

One token authenticates exactly one worker id, so a process holding worker 3's token cannot
take worker 4's seat (which would let one adversary hold several seats of a group and break
the s bound)::

    secret (PS only, >= 32 random bytes)
    token_j = HMAC-SHA256(secret, b"draco-worker-token-v1" || u64be(j))     # given to worker j
    nonce   = 32 fresh random bytes from the PS (Challenge)
    mac     = HMAC-SHA256(token_j, b"draco-auth-v1" || nonce || u64be(j))   # Auth
    PS: recompute token_j from the secret and j, compare macs in constant time

Files (all written with mode 0600, atomically):

- secret file: one line, the secret in hex;
- token file: ``<worker id> <hex token>`` per line, ``#`` comments and blank lines allowed.

Commands to make them: ``draco-ps keys --secret-file F --workers N --out TOKENS
--create-secret``; ``draco-run`` does it by itself in the run directory.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import stat
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from draco.errors import ConfigError
from draco.fileio import atomic_write
from draco.net.messages import MAX_WORKER_ID, NONCE_BYTES

__all__ = [
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "NOT_TLS_REASONS",
    "SECRET_BYTES",
    "TOKEN_BYTES",
    "client_ssl_context",
    "derive_token",
    "generate_secret",
    "handshake_mac",
    "issue_tokens",
    "load_secret",
    "new_nonce",
    "read_token_file",
    "server_ssl_context",
    "verify_handshake",
    "write_secret",
    "write_token_file",
]

SECRET_BYTES = 32  # size of a generated secret
MIN_SECRET_BYTES = 32  # shortest secret accepted from a file
TOKEN_BYTES = 32  # HMAC-SHA256 output
_TOKEN_LABEL = b"draco-worker-token-v1"
_AUTH_LABEL = b"draco-auth-v1"
# OpenSSL's reasons when the bytes received are not a TLS record (a plain-text peer): both
# shells tell "the peer does not speak TLS" apart from a failed handshake with them.
NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}
)


def _id_bytes(worker_id: int) -> bytes:
    if isinstance(worker_id, bool) or not isinstance(worker_id, int):
        raise ConfigError(f"worker id must be an int, got {worker_id!r}")
    if not 0 <= worker_id <= MAX_WORKER_ID:
        raise ConfigError(f"worker id must be in [0, {MAX_WORKER_ID}], got {worker_id}")
    return worker_id.to_bytes(8, "big")


# -- secret ------------------------------------------------------------------------------


def generate_secret() -> bytes:
    """A fresh cluster secret: 32 bytes from the OS CSPRNG."""
    return secrets.token_bytes(SECRET_BYTES)


def _write_private(path: Path, text: str, *, overwrite: bool) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (never readable by others)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; refusing to overwrite a credential file")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ConfigError(f"cannot write {path}: folder {directory} does not exist")
    data = text.encode("ascii")
    atomic_write(path, lambda fh: fh.write(data))  # mode 0600 (mkstemp), one rename


def _read_private(path: Path, what: str) -> str:
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not an ASCII text file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"{what} {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}",
            UserWarning,
            stacklevel=3,
        )
    return text


def write_secret(
    path: str | os.PathLike[str], secret: bytes | None = None, *, overwrite: bool = False
) -> bytes:
    """Write a cluster secret (hex, one line) to ``path`` with mode 0600 and return it.

    Parameters
    ----------
    path : path-like
        Destination; must not exist unless ``overwrite``.
    secret : bytes, optional
        The secret (>= 32 bytes); a fresh one from :func:`generate_secret` if omitted.

    Raises
    ------
    ConfigError
        The file exists, the folder is missing, or the secret is too short.
    """
    if secret is None:
        secret = generate_secret()
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"a cluster secret must be at least {MIN_SECRET_BYTES} bytes")
    _write_private(Path(path), secret.hex() + "\n", overwrite=overwrite)
    return secret


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """Read a cluster secret written by :func:`write_secret`.

    Warns (``UserWarning``) when the file is readable by group or others.

    Raises
    ------
    ConfigError
        Missing file, not hex, or shorter than 32 bytes.
    """
    text = _read_private(Path(path), "secret file")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise ConfigError(f"secret file {path} must hold exactly one line of hex")
    try:
        secret = bytes.fromhex(lines[0])
    except ValueError:
        raise ConfigError(f"secret file {path} does not hold a hex string") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"secret in {path} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed "
            "(create one with: draco-ps keys --create-secret ...)"
        )
    return secret


# -- tokens and handshake ----------------------------------------------------------------


def derive_token(secret: bytes, worker_id: int) -> bytes:
    """Worker ``worker_id``'s token: HMAC-SHA256(secret, b"draco-worker-token-v1" + u64be(id)).

    Returns
    -------
    bytes
        32 bytes.
    """
    return hmac.new(secret, _TOKEN_LABEL + _id_bytes(worker_id), hashlib.sha256).digest()


def issue_tokens(secret: bytes, worker_ids: Iterable[int]) -> dict[int, bytes]:
    """Tokens for several workers (for ``draco-ps keys``): id -> 32-byte token."""
    return {int(j): derive_token(secret, int(j)) for j in worker_ids}


def new_nonce() -> bytes:
    """A fresh 32-byte handshake nonce from the OS CSPRNG (one per connection)."""
    return secrets.token_bytes(NONCE_BYTES)


def handshake_mac(token: bytes, nonce: bytes, worker_id: int) -> bytes:
    """The Auth MAC: HMAC-SHA256(token, b"draco-auth-v1" + nonce + u64be(worker_id)), 32 bytes."""
    return hmac.new(
        token, _AUTH_LABEL + bytes(nonce) + _id_bytes(worker_id), hashlib.sha256
    ).digest()


def verify_handshake(secret: bytes, worker_id: int, nonce: bytes, mac: bytes) -> bool:
    """True iff ``mac`` proves knowledge of ``worker_id``'s token for this ``nonce``.

    Constant-time comparison; malformed inputs (wrong lengths, bad id) give False.
    """
    if not isinstance(mac, bytes) or len(mac) != TOKEN_BYTES or len(nonce) != NONCE_BYTES:
        return False
    try:
        expected = handshake_mac(derive_token(secret, worker_id), nonce, worker_id)
    except ConfigError:
        return False
    return hmac.compare_digest(expected, mac)


# -- token files -------------------------------------------------------------------------


def write_token_file(
    path: str | os.PathLike[str], tokens: Mapping[int, bytes], *, overwrite: bool = False
) -> None:
    """Write ``<id> <hex token>`` lines (sorted by id) to ``path``, mode 0600, atomically.

    Raises
    ------
    ConfigError
        The file exists (and not ``overwrite``), or a token is not 32 bytes.
    """
    lines = ["# draco worker tokens: <worker id> <hex token>. Keep private (mode 0600)."]
    for worker_id in sorted(tokens):
        token = tokens[worker_id]
        _id_bytes(worker_id)
        if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
            raise ConfigError(f"token for worker {worker_id} must be {TOKEN_BYTES} bytes")
        lines.append(f"{worker_id} {token.hex()}")
    _write_private(Path(path), "\n".join(lines) + "\n", overwrite=overwrite)


def read_token_file(path: str | os.PathLike[str]) -> dict[int, bytes]:
    """Read a token file: worker id -> 32-byte token.

    Warns (``UserWarning``) when the file is readable by group or others.

    Raises
    ------
    ConfigError
        Missing file, or a malformed line (the message names the file and line number),
        or a duplicate id.
    """
    text = _read_private(Path(path), "token file")
    tokens: dict[int, bytes] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            raise ConfigError(f"{where}: expected '<worker id> <hex token>', got {raw!r}")
        id_text, token_hex = parts
        if not id_text.isdigit():
            raise ConfigError(f"{where}: worker id {id_text!r} is not a non-negative integer")
        worker_id = int(id_text)
        if worker_id > MAX_WORKER_ID:
            raise ConfigError(f"{where}: worker id {worker_id} is too large")
        try:
            token = bytes.fromhex(token_hex)
        except ValueError:
            raise ConfigError(f"{where}: token is not a hex string") from None
        if len(token) != TOKEN_BYTES:
            raise ConfigError(
                f"{where}: token is {len(token)} bytes, expected {TOKEN_BYTES} (64 hex digits)"
            )
        if worker_id in tokens:
            raise ConfigError(f"{where}: worker id {worker_id} appears twice")
        tokens[worker_id] = token
    return tokens


# -- TLS ---------------------------------------------------------------------------------


def _existing(path: str | os.PathLike[str], what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist or is not a file")
    return str(p)


def server_ssl_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """TLS context for the parameter server (``--tls-cert/--tls-key[/--tls-ca]``).

    With ``ca``, clients must present a certificate signed by it (mutual TLS).

    Raises
    ------
    ConfigError
        A file is missing or the certificate/key cannot be loaded.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert_path, key_path = _existing(cert, "TLS certificate"), _existing(key, "TLS key")
    try:
        ctx.load_cert_chain(cert_path, key_path)
        if ca is not None:
            ctx.load_verify_locations(cafile=_existing(ca, "TLS CA file"))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot load TLS files ({cert}, {key}, {ca}): {exc}") from None
    return ctx


def client_ssl_context(
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """TLS context for a worker: verify the server against ``ca`` (or the system CAs).

    ``cert``/``key`` give a client certificate for servers that require one.

    Raises
    ------
    ConfigError
        A file is missing or cannot be loaded, or ``key`` is given without ``cert``.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    try:
        if ca is not None:
            ctx.load_verify_locations(cafile=_existing(ca, "TLS CA file"))
        if key is not None and cert is None:
            raise ConfigError("a TLS client key was given without its certificate")
        if cert is not None:
            key_path = _existing(key, "TLS key") if key is not None else None
            ctx.load_cert_chain(_existing(cert, "TLS certificate"), key_path)
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot load TLS files ({ca}, {cert}, {key}): {exc}") from None
    return ctx
