"""Credentials: per-id tokens, handshake MACs, secret/token files, TLS contexts."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from draco.errors import ConfigError
from draco.net.auth import (
    client_ssl_context,
    derive_token,
    generate_secret,
    handshake_mac,
    issue_tokens,
    load_secret,
    new_nonce,
    read_token_file,
    server_ssl_context,
    verify_handshake,
    write_secret,
    write_token_file,
)

SECRET = bytes(range(32))


def test_token_matches_the_documented_construction() -> None:
    want = hmac.new(SECRET, b"draco-worker-token-v1" + (3).to_bytes(8, "big"), hashlib.sha256)
    assert derive_token(SECRET, 3) == want.digest()
    nonce = b"\x01" * 32
    mac = hmac.new(want.digest(), b"draco-auth-v1" + nonce + (3).to_bytes(8, "big"), "sha256")
    assert handshake_mac(derive_token(SECRET, 3), nonce, 3) == mac.digest()


def test_handshake_verifies_for_the_right_id_only() -> None:
    nonce = new_nonce()
    token3 = derive_token(SECRET, 3)
    assert verify_handshake(SECRET, 3, nonce, handshake_mac(token3, nonce, 3))
    # Worker 3's token cannot claim seat 4, whichever id it puts in the MAC.
    assert not verify_handshake(SECRET, 4, nonce, handshake_mac(token3, nonce, 4))
    assert not verify_handshake(SECRET, 4, nonce, handshake_mac(token3, nonce, 3))


def test_tampered_nonce_or_secret_fails() -> None:
    nonce = new_nonce()
    mac = handshake_mac(derive_token(SECRET, 3), nonce, 3)
    tampered = bytes([nonce[0] ^ 1]) + nonce[1:]
    assert not verify_handshake(SECRET, 3, tampered, mac)
    assert not verify_handshake(generate_secret(), 3, nonce, mac)


def test_malformed_inputs_verify_false() -> None:
    nonce = new_nonce()
    mac = handshake_mac(derive_token(SECRET, 3), nonce, 3)
    assert not verify_handshake(SECRET, 3, nonce, mac[:-1])
    assert not verify_handshake(SECRET, 3, nonce[:-1], mac)
    assert not verify_handshake(SECRET, -1, nonce, mac)


def test_nonces_and_secrets_are_fresh() -> None:
    assert len(new_nonce()) == 32 and new_nonce() != new_nonce()
    assert len(generate_secret()) == 32 and generate_secret() != generate_secret()


def test_bad_worker_id_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        derive_token(SECRET, -1)
    with pytest.raises(ConfigError):
        derive_token(SECRET, True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    secret = write_secret(path)
    assert mode(path) == 0o600
    assert load_secret(path) == secret
    with pytest.raises(ConfigError, match="exists"):
        write_secret(path)
    assert write_secret(path, SECRET, overwrite=True) == SECRET
    assert load_secret(path) == SECRET


@pytest.mark.parametrize(
    ("text", "match"),
    [("zz\n", "hex"), ("abcd\n", "at least"), ("", "one line"), ("aa\nbb\n", "one line")],
)
def test_bad_secret_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=match):
        load_secret(path)


def test_missing_secret_and_readable_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_secret(tmp_path / "nope")
    path = tmp_path / "secret"
    path.write_text(SECRET.hex())
    path.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        assert load_secret(path) == SECRET


def test_token_file_round_trip(tmp_path: Path) -> None:
    tokens = issue_tokens(SECRET, range(5))
    path = tmp_path / "tokens"
    write_token_file(path, tokens)
    assert mode(path) == 0o600
    assert read_token_file(path) == tokens
    assert tokens[3] == derive_token(SECRET, 3)


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("1\n", 1, "expected"),
        ("# ok\n\nx " + "00" * 32 + "\n", 3, "not a non-negative integer"),
        ("-1 " + "00" * 32, 1, "not a non-negative integer"),
        ("1 " + "zz" * 32, 1, "hex"),
        ("1 " + "00" * 31, 1, "31 bytes"),
        ("1 " + "00" * 32 + "\n1 " + "11" * 32, 2, "twice"),
        ("1 " + "00" * 32 + " extra", 1, "expected"),
        # The wire's worker ids are uint32: a larger id in a token file could never be used.
        (f"{2**32} " + "00" * 32, 1, "too large"),
    ],
)
def test_malformed_token_files_name_file_and_line(
    tmp_path: Path, text: str, line: int, match: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=match) as info:
        read_token_file(path)
    assert f"{path}:{line}" in str(info.value)


def test_token_file_comments_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# header\n7 " + "ab" * 32 + "  # worker seven\n\n")
    path.chmod(0o600)
    assert read_token_file(path) == {7: b"\xab" * 32}
    with pytest.raises(ConfigError, match="does not exist"):
        read_token_file(tmp_path / "nope")
    with pytest.raises(ConfigError, match="32 bytes"):
        write_token_file(tmp_path / "t2", {1: b"short"})


# -- TLS -----------------------------------------------------------------------------------


def test_tls_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        server_ssl_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises(ConfigError, match="does not exist"):
        client_ssl_context(ca=tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match="without"):
        client_ssl_context(key=tmp_path / "key.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load"):
        server_ssl_context(garbage, garbage)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_contexts_from_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = server_ssl_context(cert, key, ca=cert)
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server_ssl_context(cert, key).verify_mode == ssl.CERT_NONE
    client = client_ssl_context(ca=cert, cert=cert, key=key)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_worker_ids_beyond_the_wire_range_get_no_token() -> None:
    # One bound for the wire and the credentials (draco.net.messages.MAX_WORKER_ID).
    assert derive_token(SECRET, 2**32 - 1) != derive_token(SECRET, 0)
    with pytest.raises(ConfigError, match="worker id"):
        derive_token(SECRET, 2**32)
