"""The digest vote against the full-payload vote it replaces (same winners, same liars)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.core.codes import RepetitionCode
from draco.core.decoding import decode_repetition
from draco.core.digests import (
    check_digest_bytes,
    decode_repetition_digests,
    payload_digest,
    vote_digests,
)
from draco.errors import ConfigError, DecodeError

KEY = bytes(range(32))


def test_payload_digest_is_keyed_blake2b_of_the_raw_bytes() -> None:
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    want = hashlib.blake2b(x.tobytes(), key=KEY, digest_size=32).digest()
    assert payload_digest(x, KEY, 32) == want
    assert (
        payload_digest(x[::2], KEY, 32)
        == hashlib.blake2b(x[::2].tobytes(), key=KEY, digest_size=32).digest()
    )  # non-contiguous input: its values, not its memory
    assert payload_digest(x, KEY[::-1], 32) != want  # another round's key
    y = x.copy()
    y.view(np.uint32)[500] ^= 1  # one flipped bit
    assert payload_digest(y, KEY, 32) != want
    assert len(payload_digest(x, KEY, 16)) == 16


@pytest.mark.parametrize("bad", [15, 65, 0, "32", True, 32.0])
def test_digest_length_out_of_range_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="digest"):
        check_digest_bytes(bad)


def _scenario(
    data: st.DataObject, n: int, s: int
) -> tuple[RepetitionCode, dict[int, np.ndarray], np.ndarray]:
    """Payloads of one round: honest values per group, then per group up to s liars (some
    colluding on one wrong value) and some missing members."""
    code = RepetitionCode(n, s)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    honest = rng.standard_normal((len(code.groups), 16)).astype(np.float32)
    received: dict[int, np.ndarray] = {}
    for g, members in enumerate(code.groups):
        liars = data.draw(st.sets(st.sampled_from(members), max_size=s))
        missing = data.draw(st.sets(st.sampled_from(members), max_size=len(members)))
        collude = data.draw(st.booleans())
        wrong = honest[g] + np.float32(1.0)
        for j in members:
            if j in missing:
                continue
            if j in liars:
                received[j] = wrong if collude else rng.standard_normal(16).astype(np.float32)
            else:
                received[j] = honest[g]
    return code, received, honest


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(3, 23), s=st.integers(0, 3))
def test_digest_decode_equals_the_full_decode(data: st.DataObject, n: int, s: int) -> None:
    """Whatever the liars and erasures, decoding from digests plus one verified payload per
    group gives the full vote's sum bit for bit, the same located liars and erasures, or
    fails exactly when it fails."""
    if n < 2 * s + 1:
        return
    code, received, _ = _scenario(data, n, s)
    digests = {j: payload_digest(p, KEY, 32) for j, p in received.items()}
    votes = vote_digests(code.groups, digests, s)
    verified = {g: received[v.backers[0]] for g, v in enumerate(votes) if v.digest is not None}
    try:
        full = decode_repetition(code.groups, received, s)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_repetition_digests(code.groups, digests, verified, s)
        return
    got = decode_repetition_digests(code.groups, digests, verified, s)
    assert got.gradient.tobytes() == full.gradient.tobytes()
    assert got.adversaries == full.adversaries
    assert got.erasures == full.erasures


def test_vote_takes_the_first_class_with_s_plus_one_members() -> None:
    groups = [(0, 1, 2, 3, 4, 5)]
    a, b = b"a" * 32, b"b" * 32
    # Two classes of s+1 = 3 (only possible with more than s liars): the first candidate's.
    (v,) = vote_digests(groups, {0: b, 1: a, 2: a, 3: b, 4: a, 5: b}, 2)
    assert v.digest == b and v.backers == (0, 3, 5) and v.others == {1, 2, 4}
    (v,) = vote_digests(groups, {0: a, 1: b, 2: a}, 1)
    assert v.digest == a and v.backers == (0, 2) and v.missing == {3, 4, 5}
    (v,) = vote_digests(groups, {0: a, 1: b, 2: b"c" * 32}, 1)
    assert v.digest is None and v.backers == () and v.others == frozenset()


def test_located_liars_and_missing_verified_payloads() -> None:
    groups = [(0, 1, 2), (3, 4, 5)]
    x, y = np.ones(4, np.float32), np.full(4, 2, np.float32)
    dx, dy = payload_digest(x, KEY, 32), payload_digest(y, KEY, 32)
    digests = {0: dx, 1: dx, 2: dy, 3: dy, 4: dy}
    r = decode_repetition_digests(groups, digests, {0: x, 1: y}, 1, liars=frozenset({1}))
    assert r.gradient.tolist() == [3.0] * 4
    assert r.adversaries == {1, 2} and r.erasures == {5}
    with pytest.raises(DecodeError, match="no member of its majority"):
        decode_repetition_digests(groups, digests, {0: x}, 1)
