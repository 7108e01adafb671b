"""``run_local``: a whole run on this machine, one ``draco-ps`` and its ``draco-worker``s.

1. Check the flags; plan a resumed run (``resume_plan``) or a new one (``new_plan``: the run
   directory, the demo's defaults, fresh credentials).
2. Start the PS with ``--port 0 --ready-file``; wait for its address (``READY_TIMEOUT`` s).
3. Start the worker processes (TLS CA and plug-in allowance passed on).
4. Supervise until the PS exits; on a signal stop the PS first (``PS_GRACE`` s), then the
   workers (``WORKER_GRACE`` s). Returns the PS's exit status, or 128 + the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from draco.errors import ConfigError, DracoError
from draco.launch.plan import (
    LaunchOptions,
    Plan,
    new_plan,
    plugin_allow,
    resume_plan,
    saved_allow,
    shared_parser,
    worker_argvs,
)
from draco.launch.processes import (
    Interrupted,
    signals_ignored,
    spawn,
    stop_children,
    wait_ready,
)

PROG = "draco-run"
READY_NAME = "ps-ready.json"
READY_TIMEOUT = float(os.environ.get("DRACO_READY_TIMEOUT", "120"))
# Seconds the PS gets to shut down after SIGTERM, and the workers after the PS has gone.
PS_GRACE = 15.0
WORKER_GRACE = 10.0


def _ps_address(ready: Path, ps: subprocess.Popen[bytes]) -> str:
    """``HOST:PORT`` the workers dial, once the PS is ready (a wildcard becomes loopback)."""
    host, port = wait_ready(ready, ps, READY_TIMEOUT)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def supervise(ps: subprocess.Popen[bytes], workers: list[subprocess.Popen[bytes]]) -> int:
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
            with signals_ignored():
                stop_children([ps], grace=PS_GRACE)
            raise DracoError("every worker process failed (see their errors above)")
        time.sleep(0.1)
    deadline = time.monotonic() + WORKER_GRACE
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.wait(timeout=max(0.0, deadline - time.monotonic()))
    stop_children(workers, grace=2.0)
    return int(ps.returncode)


def _plan(options: LaunchOptions, passthrough: list[str]) -> Plan:
    """Check the launcher's flags, then plan a resumed or a new run."""
    if options.worker_procs < 1:
        raise ConfigError(f"--worker-procs must be >= 1, got {options.worker_procs}")
    given, _ = shared_parser().parse_known_args(passthrough)
    for flag in ("port", "ready_file", "secret_file"):
        if getattr(given, flag) is not None:
            raise ConfigError(
                f"draco-run chooses --{flag.replace('_', '-')} itself; do not pass it"
            )
    if options.resume is not None:
        return resume_plan(options, passthrough)
    return new_plan(options, passthrough)


def run_local(options: LaunchOptions, passthrough: list[str]) -> int:
    """Start the PS and the workers, wait for the PS; its exit status (steps: module doc).

    ``passthrough``: the ``draco-ps`` flags, after the plan's own. Raises DracoError for a
    usage error or a run that cannot start; a signal while it runs is handled here (the
    children stopped, 128 + the signal returned) when it arrives as ``Interrupted`` or
    ``KeyboardInterrupt``.
    """
    plan = _plan(options, passthrough)
    ready = plan.run_dir / READY_NAME
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    loop_flags = ["--loop", options.loop] if options.loop else []
    ps_argv = [
        *(sys.executable, "-m", "draco.cli.ps", *plan.ps_flags, *passthrough, *loop_flags),
        *("--port", "0", "--ready-file", str(ready), "--secret-file", str(plan.secret_path)),
    ]
    print(f"{PROG}: run directory {plan.run_dir}", flush=True)
    ps = spawn(ps_argv)
    children: list[subprocess.Popen[bytes]] = [ps]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        address = _ps_address(ready, ps)
        shared = plan.shared
        tls = []
        if shared.tls_ca or shared.tls_cert:
            tls = ["--tls-ca", str(shared.tls_ca or shared.tls_cert)]
        # The one operator of this machine named the task: its workers may run it.
        allow = saved_allow(plan.run_dir) if options.resume is not None else plugin_allow(shared)
        extra = [*loop_flags, *tls, *allow]
        for argv in worker_argvs(plan, address, options.worker_procs, extra):
            workers.append(spawn(argv))
        children.extend(workers)
        status = supervise(ps, workers)
        print(f"{PROG}: run directory {plan.run_dir}", flush=True)
        return status
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"{PROG}: stopping (signal {signum})", file=sys.stderr, flush=True)
        with signals_ignored():
            stop_children([ps], grace=PS_GRACE)
            stop_children(workers, grace=WORKER_GRACE)
        return 128 + int(signum)
    finally:
        with signals_ignored():
            stop_children(children, grace=2.0)
