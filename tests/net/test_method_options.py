"""Aggregator and attack options from the command line; stateful aggregation in checkpoints."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from draco.core.codes import make_code
from draco.errors import ConfigError
from draco.options import parse_options
from draco.ps.config import PSConfig
from draco.ps.engine import RoundEngine
from draco.ps.optim import SGD, SGDConfig
from draco.tasks.lstsq import LeastSquaresTask


def test_parse_options() -> None:
    assert parse_options(["tau=10", "iters=2", "center=mean", "x=1.5", "b=true", "n=none"]) == {
        "tau": 10,
        "iters": 2,
        "center": "mean",
        "x": 1.5,
        "b": True,
        "n": None,
    }
    for bad in (["tau"], ["=3"], ["a b=1"]):
        with pytest.raises(ConfigError):
            parse_options(bad)


def test_aggregator_with_a_draco_code_is_refused() -> None:
    with pytest.raises(ConfigError, match="only to --code none"):
        PSConfig(code="cyclic", n_workers=7, n_adversaries=1, aggregator="median")
    with pytest.raises(ConfigError, match="only to --code none"):
        PSConfig(code="repetition", aggregator_options={"tau": 1.0})
    with pytest.raises(ConfigError, match="needs an --attack"):
        PSConfig(attack_options={"value": 1.0})
    # run directories written before the refusal (aggregator "mean" with a DRACO code) resume
    old = PSConfig().to_dict() | {"aggregator": "mean"}
    assert PSConfig.from_dict(old).aggregator is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--code", "cyclic", "--aggregator", "median"], "only to --code none"),
        (["--code", "none", "--aggregator", "krum", "--aggregator-option", "m=3"], "no option"),
        (["--attack", "constant", "--attack-option", "scale=2"], "no parameter"),
        (["--aggregator-option", "tau"], "KEY=VALUE"),
    ],
)
def test_draco_ps_refuses_bad_method_flags(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from draco.cli import ps

    base = ["--workers", "7", "--adversaries", "1", "--model", "lstsq"]
    assert ps.main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("draco-ps: error:") and message in err, err


def test_options_reach_the_code_and_the_attack() -> None:
    import argparse

    from draco.cli import ps

    args = ps.build_parser().parse_args(
        [
            "--workers",
            "7",
            "--adversaries",
            "1",
            "--model",
            "lstsq",
            "--code",
            "none",
            "--aggregator",
            "centered_clipping",
            "--aggregator-option",
            "tau=0.5",
            "--aggregator-option",
            "momentum=0.5",
            "--attack",
            "constant",
            "--attack-option",
            "value=-7",
        ]
    )
    assert isinstance(args, argparse.Namespace)
    config = ps.config_from_args(args)
    assert config.code_options() == {"aggregator": "centered_clipping", "tau": 0.5, "momentum": 0.5}
    assert config.attack_options == {"value": -7}
    assert PSConfig.from_dict(config.to_dict()) == config


def _cc_engine(task: LeastSquaresTask) -> RoundEngine:
    code = make_code("none", 7, 1, aggregator="centered_clipping", tau=0.05)
    return RoundEngine(
        code,
        task.initial_params(),
        SGD(SGDConfig(lr=0.05, momentum=0.0), task.dim),
        rounds=6,
        decode_rng=lambda: np.random.default_rng(0),
    )


def _rounds(engine: RoundEngine, task: LeastSquaresTask, k: int) -> None:
    for _ in range(k):
        rnd = engine.start_round()
        for j in range(7):
            g = task.partition_gradients(engine.params, rnd.index, (j,))
            rnd.offer(j, rnd.index, engine.code.encode(j, g), 0.0, 0)
        assert engine.finish(rnd).ok


def test_centered_clipping_state_is_checkpointed_by_the_engine() -> None:
    task = LeastSquaresTask(8, 7, 4, seed=3)
    whole = _cc_engine(task)
    _rounds(whole, task, 6)
    first = _cc_engine(task)
    _rounds(first, task, 3)
    params, arrays, extra = first.state()
    assert {"code_cc_center", "code_cc_momenta", "code_cc_momentum_ids"} <= set(arrays)
    resumed = _cc_engine(task)
    resumed.restore(params, arrays, extra)
    _rounds(resumed, task, 3)
    np.testing.assert_array_equal(resumed.params, whole.params)
    # without the aggregation state the resumed run would differ
    lost = _cc_engine(task)
    stripped: dict[str, Any] = {k: v for k, v in arrays.items() if not k.startswith("code_")}
    lost.restore(params, stripped, extra)
    _rounds(lost, task, 3)
    assert not np.array_equal(lost.params, whole.params)
