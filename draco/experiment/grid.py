"""``draco-experiment``'s file: the TOML grid read into the runs it names (``load_experiment``).

The file's format and the run names: ``cli/experiment.py`` (``draco.cli.experiment``). A method
named like a DRACO code (repetition, cyclic) runs ``--code NAME``; one named like an
aggregator runs ``--code none --aggregator NAME``; a ``[methods.NAME]`` table overrides both.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from draco.errors import ConfigError

DRACO_CODES = ("repetition", "cyclic")
GRID_KEYS = ("method", "attack", "adversaries", "seed")
# Flags draco-experiment sets itself for every run.
OWN_FLAGS = ("run_dir", "resume", "worker_procs", "target_accuracy", "adversaries", "seed")


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    method: str
    attack: str
    s: int
    seed: int
    flags: tuple[str, ...]  # draco-run flags, --run-dir excluded

    @property
    def name(self) -> str:
        return f"{self.method}-{self.attack}-s{self.s}-seed{self.seed}"


@dataclass
class Experiment:
    name: str
    results: Path
    runs: list[RunSpec]
    target_accuracy: float | None
    reference: str | None
    worker_procs: int
    source: Path
    meta: dict[str, Any] = field(default_factory=dict)


def _flag_args(flags: dict[str, Any], where: str) -> list[str]:
    """``{"lr": 0.1, "aggregator_options": {"tau": 1}}`` -> ``--lr 0.1 --aggregator-option tau=1``.

    Keys may use ``_`` or ``-``; ``true`` gives the bare flag, a list repeats it.
    """
    out: list[str] = []
    for key, value in flags.items():
        name = str(key).replace("_", "-")
        if key in ("aggregator_options", "attack_options"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a table, e.g. {key} = {{ tau = 10 }}")
            single = "--" + name[: -len("s")]
            for k, v in value.items():
                out += [single, f"{k}={_scalar(v, where)}"]
        elif isinstance(value, bool):
            if value:
                out.append("--" + name)
        elif isinstance(value, list):
            for v in value:
                out += ["--" + name, _scalar(v, where)]
        else:
            out += ["--" + name, _scalar(value, where)]
    return out


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ConfigError(f"{where}: flag values are numbers, strings or booleans, got {value!r}")


def _method_flags(method: str, table: dict[str, Any]) -> dict[str, Any]:
    from draco.core.aggregators import AGGREGATORS

    own = dict(table.get("methods", {}).get(method, {}))
    if "code" in own or "aggregator" in own:
        return own
    if method in DRACO_CODES:
        return {"code": method, **own}
    if method in AGGREGATORS:
        return {"code": "none", "aggregator": method, **own}
    raise ConfigError(
        f"method {method!r} is neither a DRACO code ({', '.join(DRACO_CODES)}) nor an "
        f"aggregator ({', '.join(AGGREGATORS)}); define it in a [methods.{method}] table"
    )


def load_experiment(path: Path, out: Path | None = None) -> Experiment:
    """Parse and check an experiment file; ConfigError names what is wrong."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc}") from exc
    unknown = set(table) - {"experiment", "flags", "grid", "methods", "attacks"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}")
    meta = dict(table.get("experiment", {}))
    flags = dict(table.get("flags", {}))
    grid = dict(table.get("grid", {}))
    bad = set(grid) - set(GRID_KEYS)
    if bad or "method" not in grid:
        raise ConfigError(f"{path}: [grid] takes {', '.join(GRID_KEYS)} (method required)")
    for key in OWN_FLAGS:
        if key in flags:
            raise ConfigError(f"{path}: [flags] must not set {key} (the experiment sets it)")
    target = meta.get("target_accuracy")
    if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ConfigError(f"{path}: target_accuracy must be a fraction in (0, 1], got {target!r}")
    name = str(meta.get("name", path.stem))
    results = out or Path(os.path.normpath(path.parent / str(meta.get("results", name))))
    methods = [str(x) for x in _as_list(grid["method"])]
    attacks = [str(x) for x in _as_list(grid.get("attack", ["none"]))]
    sizes = [int(x) for x in _as_list(grid.get("adversaries", [1]))]
    seeds = [int(x) for x in _as_list(grid.get("seed", [0]))]
    runs = []
    for method, attack, s, seed in itertools.product(methods, attacks, sizes, seeds):
        run_flags = dict(flags)
        run_flags.update(_method_flags(method, table))
        attack_table = dict(table.get("attacks", {}).get(attack, {}))
        if attack == "none":
            run_flags["attack"] = "none"
        else:
            run_flags["attack"] = attack_table.pop("attack", attack)
        run_flags.update(attack_table)
        args = _flag_args(run_flags, f"{path} run {method}/{attack}")
        args += ["--adversaries", str(s), "--seed", str(seed)]
        if target is not None:
            args += ["--target-accuracy", str(target)]
        runs.append(RunSpec(method, attack, s, seed, tuple(args)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: the grid repeats runs")
    return Experiment(
        name=name,
        results=Path(results),
        runs=runs,
        target_accuracy=None if target is None else float(target),
        reference=meta.get("reference"),
        worker_procs=int(meta.get("worker_procs", 2)),
        source=path,
        meta=meta,
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def matches(spec: RunSpec, only: list[str]) -> bool:
    """Whether ``spec`` is in every ``--only KEY=V[,V]`` slice (keys method, attack, s, seed)."""
    values = {"method": spec.method, "attack": spec.attack, "s": str(spec.s)}
    values["seed"] = str(spec.seed)
    for cond in only:
        key, _, want = cond.partition("=")
        if values.get(key.strip()) not in want.split(","):
            return False
    return True
