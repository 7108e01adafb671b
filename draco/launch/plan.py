"""What ``draco-run`` starts: the run directory, its credentials, the PS's and workers' flags.

A new run (``new_plan``) takes the demonstration's flags (``DEMO_FLAGS``) under the user's
own, makes the run directory and a fresh cluster secret with one token per worker (mode
0600); a resumed run (``resume_plan``) reads its worker count from ``config.json`` and uses
the credentials it already holds. ``worker_argvs`` splits the logical workers over the
worker processes (``split_workers``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from draco.errors import ConfigError
from draco.launch.credentials import SECRET_NAME, TOKENS_NAME, make_credentials

# The demonstration: flags given to draco-ps unless the user gives them (last flag wins in
# argparse, so the user's own flags simply follow these). 150 rounds of fc on the synthetic
# task reach 96.6 % test accuracy (90 % near round 100); README.md gives the measured time.
DEMO_FLAGS: tuple[tuple[str, str], ...] = (
    ("--workers", "15"),
    ("--adversaries", "2"),
    ("--code", "repetition"),
    ("--attack", "constant"),
    ("--model", "fc"),
    ("--dataset", "synthetic"),
    ("--rounds", "150"),
)


@dataclass(frozen=True)
class LaunchOptions:
    """The launcher's own flags (every other flag is passed on to ``draco-ps``)."""

    worker_procs: int = 2  # worker processes sharing the logical workers
    run_dir: Path | None = None  # None: runs/<timestamp>
    resume: Path | None = None  # a run directory to continue
    loop: str | None = None  # event loop of every child; None: their default (uvloop)


@dataclass(frozen=True)
class Plan:
    """What ``run_local`` starts: the run directory, its credentials and the PS's own flags."""

    run_dir: Path
    n_workers: int
    secret_path: Path
    tokens_path: Path
    ps_flags: list[str]  # before the user's flags: --resume, or the demo's defaults + --run-dir
    shared: argparse.Namespace  # the pass-through flags this launcher reads (shared_parser)


def shared_parser() -> argparse.ArgumentParser:
    """The pass-through flags this launcher itself needs to read (tolerant of the rest)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--adversaries", type=int, default=None)
    p.add_argument("--attack", default=None)
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-ca", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--task", default=None)
    p.add_argument("--task-file", type=Path, default=None)
    for flag in ("--port", "--ready-file", "--secret-file"):
        p.add_argument(flag, default=None)
    return p


def split_workers(n_workers: int, procs: int) -> list[tuple[int, int]]:
    """(first id, count) per process: sizes differ by at most one, no empty process."""
    procs = max(1, min(procs, n_workers))
    base, extra = divmod(n_workers, procs)
    out, first = [], 0
    for i in range(procs):
        count = base + (1 if i < extra else 0)
        out.append((first, count))
        first += count
    return out


def plugin_allow(shared: argparse.Namespace) -> list[str]:
    """``--allow-task NAME`` for the workers when the run names a plug-in task."""
    name = shared.task
    if name is None and shared.task_file is not None:
        from draco.tasks.registry import read_task_file

        name = read_task_file(shared.task_file)[0]
    return [] if name is None else ["--allow-task", str(name)]


def saved_allow(run_dir: Path) -> list[str]:
    """``--allow-task NAME`` for a resumed run whose saved task is a plug-in."""
    from draco.ps.rundir import RunDir

    task = RunDir(run_dir, resume=True).read_config().get("task")
    name = task.get("factory") if isinstance(task, dict) else None
    return [] if name is None else ["--allow-task", str(name)]


def _default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _n_workers_of(run_dir: Path) -> int:
    """Workers of a saved run (``config.json``), for ``--resume``."""
    from draco.ps.rundir import RunDir

    config = RunDir(run_dir, resume=True).read_config()
    for key in ("workers", "n_workers"):
        for holder in (config, config.get("run", {}), config.get("ps", {})):
            if isinstance(holder, dict) and isinstance(holder.get(key), int):
                return int(holder[key])
    raise ConfigError(f"{run_dir / 'config.json'} does not say how many workers the run has")


def resume_plan(options: LaunchOptions, passthrough: list[str]) -> Plan:
    """``--resume RUN_DIR``: the saved run's worker count and the credentials it holds."""
    if options.resume is None:
        raise ConfigError("resume_plan needs --resume RUN_DIR")
    if options.run_dir is not None and options.run_dir != options.resume:
        raise ConfigError("give either --resume RUN_DIR or --run-dir, not both")
    run_dir = options.resume
    n_workers = _n_workers_of(run_dir)
    secret_path, tokens_path = run_dir / SECRET_NAME, run_dir / TOKENS_NAME
    if not secret_path.exists() or not tokens_path.exists():
        raise ConfigError(
            f"cannot resume {run_dir}: its {SECRET_NAME} / {TOKENS_NAME} files are missing "
            "(it was not started by draco-run)"
        )
    shared, _ = shared_parser().parse_known_args(passthrough)
    return Plan(run_dir, n_workers, secret_path, tokens_path, ["--resume", str(run_dir)], shared)


def new_plan(options: LaunchOptions, passthrough: list[str]) -> Plan:
    """A new run: the demonstration's defaults under the user's flags, fresh credentials."""
    run_dir = options.run_dir or _default_run_dir()
    if (run_dir / "config.json").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
            "or pick another --run-dir"
        )
    # A plug-in task replaces the demonstration's --model.
    user, _ = shared_parser().parse_known_args(passthrough)
    plugin = user.task is not None or user.task_file is not None
    defaults = [x for k, v in DEMO_FLAGS if not (plugin and k == "--model") for x in (k, v)]
    shared, _ = shared_parser().parse_known_args(defaults + passthrough)
    if shared.adversaries == 0 and user.attack is None:
        defaults += ["--attack", "none"]  # no liars asked for: the default attack goes too
    n_workers = int(shared.workers)
    if n_workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {n_workers}")
    run_dir.mkdir(parents=True, exist_ok=True)
    secret_path, tokens_path = make_credentials(run_dir, n_workers)
    ps_flags = [*defaults, "--run-dir", str(run_dir)]
    return Plan(run_dir, n_workers, secret_path, tokens_path, ps_flags, shared)


def worker_argvs(plan: Plan, address: str, procs: int, extra: list[str]) -> list[list[str]]:
    """One ``draco-worker`` command per process, the logical workers split evenly."""
    return [
        [
            sys.executable,
            "-m",
            "draco.cli.worker",
            "--ps",
            address,
            "--id",
            str(first),
            "--count",
            str(count),
            "--token-file",
            str(plan.tokens_path),
            *extra,
        ]
        for first, count in split_workers(plan.n_workers, procs)
    ]
