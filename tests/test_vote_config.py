"""draco-ps --vote / --vote-rtol: the repetition code's tolerance vote, validated."""

from __future__ import annotations

import pytest

from draco.cli.ps import build_parser, config_from_args
from draco.core.codes import make_code
from draco.errors import ConfigError
from draco.ps.config import DEFAULT_VOTE_RTOL, PSConfig

BASE = ["--model", "lstsq", "--workers", "5", "--adversaries", "1"]


def config(*argv: str) -> PSConfig:
    return config_from_args(build_parser().parse_args([*BASE, *argv]))


def test_exact_is_the_default() -> None:
    c = config()
    assert c.vote_rtol is None and c.code_options() == {}
    assert make_code(c.code, 5, 1, **c.code_options()).rtol is None


def test_tolerance_reaches_the_code() -> None:
    c = config("--vote", "tolerance")
    assert c.vote_rtol == DEFAULT_VOTE_RTOL
    code = make_code(c.code, 5, 1, **c.code_options())
    assert code.rtol == DEFAULT_VOTE_RTOL and code.options == {"rtol": DEFAULT_VOTE_RTOL}
    assert config("--vote", "tolerance", "--vote-rtol", "1e-3").code_options() == {"rtol": 1e-3}
    assert PSConfig.from_dict(c.to_dict()) == c  # saved with the run, for --resume


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--vote-rtol", "1e-3"], "--vote-rtol needs --vote tolerance"),
        (["--vote", "tolerance", "--vote-rtol", "0"], r"must be a number in \(0, 1\)"),
        (["--vote", "tolerance", "--vote-rtol", "1.5"], r"must be a number in \(0, 1\)"),
        (["--vote", "tolerance", "--code", "cyclic"], "applies to the repetition code"),
    ],
)
def test_bad_vote_flags(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config(*argv)


def test_tolerance_travels_as_full_payloads_and_never_as_digests() -> None:
    """One --vote flag: auto | full | digest choose how payloads travel (exact vote);
    tolerance compares full payloads, so it never resolves to the digest vote."""
    c = config("--vote", "tolerance", "--host", "10.0.0.1")
    assert c.vote == "full" and c.resolved_vote(exact=False) == "full"
    assert config("--vote", "auto", "--host", "10.0.0.1").resolved_vote() == "digest"
    with pytest.raises(ConfigError, match="--vote digest is an exact vote"):
        PSConfig.from_dict({**config("--vote", "digest").to_dict(), "vote_rtol": 1e-4})
