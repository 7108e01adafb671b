"""``draco-run``: a whole DRACO run on this machine — one ``draco-ps``, N ``draco-worker``.

With no arguments it runs the demonstration (its measured time: README.md, Quick start)::

    draco-run
    # = draco-run --workers 15 --adversaries 2 --code repetition --attack constant \\
    #             --model fc --dataset synthetic --rounds 150 --worker-procs 2

15 workers, s = 2 of them lying every round with a constant gradient, the repetition code
locating them; the PS prints a progress line per round and the summary at the end. Every flag
of ``draco-ps`` is accepted and passed on (see ``draco-ps --help``); a flag given here
overrides the demonstration default. ``--attack none`` gives a clean run.

What it does:

1. creates the run directory (``--run-dir``, default ``runs/<timestamp>``), a fresh cluster
   secret and one token per worker in it (mode 0600);
2. starts ``python -m draco.cli.ps --port 0 --ready-file ...`` and waits for the ready file;
3. starts ``--worker-procs`` worker processes that share the logical workers;
4. waits for the PS, returns its exit status.

Ctrl-C or SIGTERM stops every child (each in its own process group: SIGTERM, then SIGKILL
after a grace period); on Linux the children also get SIGTERM if this launcher dies.
``draco-run --resume RUN_DIR`` continues a run from its last checkpoint with its own secret.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from draco.errors import ConfigError, DracoError

PROG = "draco-run"

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
SECRET_NAME = "secret"
TOKENS_NAME = "tokens"
READY_NAME = "ps-ready.json"
READY_TIMEOUT = float(os.environ.get("DRACO_READY_TIMEOUT", "120"))
# Seconds the PS gets to shut down after SIGTERM, and the workers after the PS has gone.
PS_GRACE = 15.0
WORKER_GRACE = 10.0


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a parameter server and its workers on this machine. Every "
        "draco-ps flag is accepted and passed on (see draco-ps --help).",
        epilog="Without arguments: "
        + " ".join(f"{k} {v}" for k, v in DEMO_FLAGS)
        + ". Flags shared with draco-ps: --workers, --adversaries, --code, --aggregator, "
        "--aggregator-option, --attack, --attack-option, --adversary-schedule, --rounds, "
        "--seed, --run-dir, --checkpoint-every, --link-gbps, --target-accuracy, "
        "--round-timeout, --vote and the task flags (--model or --task with --task-option / "
        "--task-file, --dataset, --data-dir, --batch-size, --lr, --momentum, --weight-decay, "
        "--eval-every); a --task is allowed on the workers this launcher starts. Example: "
        "draco-run --workers 45 --adversaries 5 --code cyclic --attack reverse --dataset mnist "
        "--rounds 500",
        allow_abbrev=False,
    )
    p.add_argument("--worker-procs", type=int, default=2, metavar="N", help="worker processes (2)")
    p.add_argument(
        "--run-dir", type=Path, default=None, help="run directory (default: runs/<timestamp>)"
    )
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue a run")
    p.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default=None, help="event loop (uvloop)"
    )
    return p


def _shared_parser() -> argparse.ArgumentParser:
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


def make_credentials(run_dir: Path, n_workers: int) -> tuple[Path, Path]:
    """A fresh cluster secret and the tokens of ids 0..n-1 in ``run_dir`` (both 0600)."""
    from draco.net.auth import issue_tokens, write_secret, write_token_file

    secret_path = run_dir / SECRET_NAME
    tokens_path = run_dir / TOKENS_NAME
    secret = write_secret(secret_path, overwrite=True)
    write_token_file(tokens_path, issue_tokens(secret, range(n_workers)), overwrite=True)
    return secret_path, tokens_path


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Own process group: the terminal's Ctrl-C reaches only the launcher, which then stops
    # the children in order (PS first, so it can say Bye). PDEATHSIG: no orphans even if the
    # launcher is SIGKILLed.
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen(argv, preexec_fn=_child_setup, env=env)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def stop_children(
    children: Sequence[subprocess.Popen[bytes]], grace: float, sig: int = signal.SIGTERM
) -> None:
    """``sig`` to each child's process group, wait up to ``grace`` s, then SIGKILL."""
    for proc in children:
        _signal_group(proc, sig)
    deadline = time.monotonic() + grace
    for proc in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in children:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def wait_ready(ready: Path, ps: subprocess.Popen[bytes], timeout: float) -> tuple[str, int]:
    """Wait for the PS's ready file; (host, port). DracoError if the PS died or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            try:
                info = json.loads(ready.read_text())
                return str(info["host"]), int(info["port"])
            except (ValueError, KeyError, TypeError, OSError):
                pass  # written atomically, but be tolerant of a foreign partial file
        status = ps.poll()
        if status is not None:
            raise DracoError(
                f"the parameter server exited with status {status} before it was ready "
                "(its messages are above)"
            )
        time.sleep(0.05)
    raise DracoError(f"the parameter server was not ready after {timeout:g} s ({ready} missing)")


def _plugin_allow(shared: argparse.Namespace) -> list[str]:
    """``--allow-task NAME`` for the workers when the run names a plug-in task."""
    name = shared.task
    if name is None and shared.task_file is not None:
        from draco.tasks.registry import read_task_file

        name = read_task_file(shared.task_file)[0]
    return [] if name is None else ["--allow-task", str(name)]


def _saved_allow(run_dir: Path) -> list[str]:
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


@dataclass(frozen=True)
class _Plan:
    """What ``launch`` starts: the run directory, its credentials and the PS's own flags."""

    run_dir: Path
    n_workers: int
    secret_path: Path
    tokens_path: Path
    ps_flags: list[str]  # before the user's flags: --resume, or the demo's defaults + --run-dir
    shared: argparse.Namespace  # the pass-through flags this launcher reads (_shared_parser)


def _resume_plan(args: argparse.Namespace, passthrough: list[str]) -> _Plan:
    """``--resume RUN_DIR``: the saved run's worker count and the credentials it holds."""
    if args.run_dir is not None and args.run_dir != args.resume:
        raise ConfigError("give either --resume RUN_DIR or --run-dir, not both")
    run_dir = args.resume
    n_workers = _n_workers_of(run_dir)
    secret_path, tokens_path = run_dir / SECRET_NAME, run_dir / TOKENS_NAME
    if not secret_path.exists() or not tokens_path.exists():
        raise ConfigError(
            f"cannot resume {run_dir}: its {SECRET_NAME} / {TOKENS_NAME} files are missing "
            "(it was not started by draco-run)"
        )
    shared, _ = _shared_parser().parse_known_args(passthrough)
    return _Plan(run_dir, n_workers, secret_path, tokens_path, ["--resume", str(run_dir)], shared)


def _new_plan(args: argparse.Namespace, passthrough: list[str]) -> _Plan:
    """A new run: the demonstration's defaults under the user's flags, fresh credentials."""
    run_dir = args.run_dir or _default_run_dir()
    if (run_dir / "config.json").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
            "or pick another --run-dir"
        )
    # A plug-in task replaces the demonstration's --model.
    user, _ = _shared_parser().parse_known_args(passthrough)
    plugin = user.task is not None or user.task_file is not None
    defaults = [x for k, v in DEMO_FLAGS if not (plugin and k == "--model") for x in (k, v)]
    shared, _ = _shared_parser().parse_known_args(defaults + passthrough)
    if shared.adversaries == 0 and user.attack is None:
        defaults += ["--attack", "none"]  # no liars asked for: the default attack goes too
    n_workers = int(shared.workers)
    if n_workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {n_workers}")
    run_dir.mkdir(parents=True, exist_ok=True)
    secret_path, tokens_path = make_credentials(run_dir, n_workers)
    ps_flags = [*defaults, "--run-dir", str(run_dir)]
    return _Plan(run_dir, n_workers, secret_path, tokens_path, ps_flags, shared)


def _worker_argvs(plan: _Plan, address: str, procs: int, extra: list[str]) -> list[list[str]]:
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


def _ps_address(ready: Path, ps: subprocess.Popen[bytes]) -> str:
    """``HOST:PORT`` the workers dial, once the PS is ready (a wildcard becomes loopback)."""
    host, port = wait_ready(ready, ps, READY_TIMEOUT)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _supervise(ps: subprocess.Popen[bytes], workers: list[subprocess.Popen[bytes]]) -> int:
    """Wait for the PS, reporting failed worker processes; the PS's exit status.

    DracoError when every worker process has failed (the PS is stopped: nobody is left to
    compute, so it would only wait for its join timeout). After the PS's Bye the workers
    get ``WORKER_GRACE`` seconds to leave on their own, then are stopped.
    """
    reported: set[int] = set()
    while ps.poll() is None:
        for w in workers:
            status = w.poll()
            if status not in (None, 0) and w.pid not in reported:
                reported.add(w.pid)
                print(
                    f"{PROG}: a worker process (pid {w.pid}) exited with status {status}",
                    file=sys.stderr,
                    flush=True,
                )
        if len(reported) == len(workers):
            with _signals_ignored():
                stop_children([ps], grace=PS_GRACE)
            raise DracoError("every worker process failed (see their errors above)")
        time.sleep(0.1)
    deadline = time.monotonic() + WORKER_GRACE
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.wait(timeout=max(0.0, deadline - time.monotonic()))
    stop_children(workers, grace=2.0)
    return int(ps.returncode)


def launch(args: argparse.Namespace, passthrough: list[str]) -> int:
    """Start the PS and the workers, wait for the PS; its exit status.

    1. Check the flags; plan a resumed run (``_resume_plan``) or a new one (``_new_plan``:
       the run directory, the demo's defaults, fresh credentials).
    2. Start the PS with ``--port 0 --ready-file``; wait for its address.
    3. Start the worker processes (TLS CA and plug-in allowance passed on).
    4. Supervise until the PS exits; on a signal stop the PS first, then the workers.
    """
    if args.worker_procs < 1:
        raise ConfigError(f"--worker-procs must be >= 1, got {args.worker_procs}")
    given, _ = _shared_parser().parse_known_args(passthrough)
    for flag in ("port", "ready_file", "secret_file"):
        if getattr(given, flag) is not None:
            raise ConfigError(
                f"draco-run chooses --{flag.replace('_', '-')} itself; do not pass it"
            )
    if args.resume is not None:
        plan = _resume_plan(args, passthrough)
    else:
        plan = _new_plan(args, passthrough)
    ready = plan.run_dir / READY_NAME
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    loop_flags = ["--loop", args.loop] if args.loop else []
    ps_argv = [
        *(sys.executable, "-m", "draco.cli.ps", *plan.ps_flags, *passthrough, *loop_flags),
        *("--port", "0", "--ready-file", str(ready), "--secret-file", str(plan.secret_path)),
    ]
    print(f"{PROG}: run directory {plan.run_dir}", flush=True)
    ps = _spawn(ps_argv)
    children: list[subprocess.Popen[bytes]] = [ps]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        address = _ps_address(ready, ps)
        shared = plan.shared
        tls = []
        if shared.tls_ca or shared.tls_cert:
            tls = ["--tls-ca", str(shared.tls_ca or shared.tls_cert)]
        # The one operator of this machine named the task: its workers may run it.
        allow = _saved_allow(plan.run_dir) if args.resume is not None else _plugin_allow(shared)
        for argv in _worker_argvs(plan, address, args.worker_procs, [*loop_flags, *tls, *allow]):
            workers.append(_spawn(argv))
        children.extend(workers)
        status = _supervise(ps, workers)
        print(f"{PROG}: run directory {plan.run_dir}", flush=True)
        return status
    except (_Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT
        print(f"{PROG}: stopping (signal {signum})", file=sys.stderr, flush=True)
        with _signals_ignored():
            stop_children([ps], grace=PS_GRACE)
            stop_children(workers, grace=WORKER_GRACE)
        return 128 + int(signum)
    finally:
        with _signals_ignored():
            stop_children(children, grace=2.0)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    # A second Ctrl-C during the orderly shutdown must not leave children behind.
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return launch(args, passthrough)
    except _Interrupted as exc:
        return 128 + exc.signum
    except DracoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
