"""The digest-first vote's settings: ``--vote`` choices, ``DigestVoteConfig``, ``check_vote``.

The vote itself is ``draco.core.digests``; the collector (``draco.ps.collector``) runs its
two phases (digests, then one fetched payload per group) and the engine decodes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from draco.core.digests import DEFAULT_DIGEST_BYTES, check_digest_bytes
from draco.errors import ConfigError
from draco.ps.interfaces import CodeLike, GroupedCode

#: The votes ``--vote`` offers: ``full`` (every worker sends its payload) and ``digest``
#: (digest-first: every worker sends a keyed digest, the PS fetches one payload per group).
VOTES = ("full", "digest")


@dataclass(frozen=True)
class DigestVoteConfig:
    """Limits of the digest-first vote (``draco-ps --vote digest``).

    Attributes
    ----------
    digest_bytes : int
        BLAKE2b output length, 16..64 bytes (default 32).
    max_payload_requests : int or None
        Payload requests per group and attempt before the group is given up (the attempt
        then fails and is retried). None: s+1, enough to reach an honest member of any
        majority (a majority of >= s+1 holds at most s liars) when every asked member
        answers.
    payload_timeout : float
        Seconds a member asked for its payload has before the PS asks the next one.
    """

    digest_bytes: int = DEFAULT_DIGEST_BYTES
    max_payload_requests: int | None = None
    payload_timeout: float = 10.0

    def __post_init__(self) -> None:
        check_digest_bytes(self.digest_bytes)
        if self.max_payload_requests is not None and (
            isinstance(self.max_payload_requests, bool)
            or not isinstance(self.max_payload_requests, int)
            or self.max_payload_requests < 1
        ):
            raise ConfigError(
                f"--max-payload-requests must be an integer >= 1, got {self.max_payload_requests!r}"
            )
        t = self.payload_timeout
        if (
            isinstance(t, bool)
            or not isinstance(t, int | float)
            or not (math.isfinite(t) and t > 0)
        ):
            raise ConfigError(f"--payload-timeout must be a positive number of seconds, got {t!r}")

    def requests_per_group(self, s: int) -> int:
        return self.max_payload_requests if self.max_payload_requests is not None else s + 1


def check_vote(vote: str, code: CodeLike) -> None:
    """ConfigError unless ``vote`` is one of VOTES and fits ``code``.

    The digest vote needs bit-identical honest payloads: the repetition code with the exact
    vote. The tolerance vote (``rtol``) compares values, so it keeps full payloads; the
    cyclic code and the baselines need every payload.
    """
    if vote not in VOTES:
        raise ConfigError(f"--vote must be one of {', '.join(VOTES)}, got {vote!r}")
    if vote == "digest":
        name = code.name
        if name != "repetition" or not isinstance(code, GroupedCode):
            raise ConfigError(
                f"--vote digest works with --code repetition only (the {name!r} code needs "
                "every full payload): use --vote full"
            )
        if getattr(code, "rtol", None) is not None:
            raise ConfigError(
                "--vote digest needs bit-identical payloads; the tolerance vote (rtol) compares "
                "values and keeps full payloads: use --vote full"
            )


def code_groups(code: CodeLike) -> tuple[tuple[int, ...], ...]:
    """The repetition code's groups (``check_vote`` made sure the code has them)."""
    if not isinstance(code, GroupedCode):
        raise TypeError(f"the {code.name!r} code has no groups (the digest vote needs them)")
    return tuple(tuple(int(j) for j in g) for g in code.groups)
