"""make_code: names, options, validation, rebuilding a code from its options."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from draco.core.codes import CODES, Code, CyclicCode, RepetitionCode, make_code
from draco.errors import ConfigError


@pytest.mark.parametrize("name,cls", [("repetition", RepetitionCode), ("cyclic", CyclicCode)])
def test_builds_and_rebuilds_from_options(name: str, cls: type) -> None:
    code = make_code(name, 11, 2)
    assert isinstance(code, cls) and isinstance(code, Code)
    assert code.name == name and code.n_workers == 11 and code.n_adversaries == 2
    assert code.n_partitions == 11 and code.assignment.shape == (11, 11)
    packed = msgpack.unpackb(msgpack.packb(code.options))  # options travel to the workers
    again = make_code(name, 11, 2, **packed)
    assert again.options == code.options and again.payload_dtype == code.payload_dtype
    assert np.array_equal(again.assignment, code.assignment)


def test_none_is_the_uncoded_baseline() -> None:
    code = make_code("none", 5, 1, aggregator="median")
    assert code.name == "none" and code.redundancy == 1
    assert make_code("none", 5, 1, **code.options).options == code.options


@pytest.mark.parametrize(
    "args,match",
    [
        (("bogus", 5, 1), "unknown code"),
        (("repetition", 4, 2), "2s\\+1"),
        (("cyclic", 6, 3), "2s\\+1"),
        (("cyclic", 5, -1), ">= 0"),
        (("repetition", 5.0, 1), "integer"),
        (("cyclic", 5, True), "integer"),
    ],
)
def test_bad_parameters(args: tuple, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_code(*args)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("repetition", {"colour": 1}, "no option"),
        ("repetition", {"rtol": 0.0}, "rtol"),
        ("repetition", {"rtol": "x"}, "rtol"),
        ("cyclic", {"stride": 5}, "coprime"),
        ("cyclic", {"payload_dtype": "float32"}, "payload_dtype"),
        ("cyclic", {"rtol": 1e-3}, "no option"),
    ],
)
def test_bad_options(name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_code(name, 10, 2, **options)


def test_codes_tuple() -> None:
    assert CODES == ("repetition", "cyclic", "none")
