"""``draco-worker``: K logical DRACO workers in one process, connecting to a ``draco-ps``.

Example (the PS issued the tokens with ``draco-ps keys --secret-file S --workers 15 --out T``)::

    draco-worker --ps 10.0.0.1:7000 --id 0 --count 8 --token-file T
    draco-worker --ps 10.0.0.1:7000 --id 8 --count 7 --token-file T

Under a launcher the ids come from its environment (draco.launch.env, docs/slurm.md)::

    srun -n 15 draco-worker --ps 10.0.0.1:7000 --token-file T     # one id per task
    srun -n 3 draco-worker --ps 10.0.0.1:7000 --workers 15 --token-file T   # 5 ids each

A plug-in task runs only if this worker's operator allows its factory (docs/tasks.md)::

    draco-worker --ps 10.0.0.1:7000 --id 0 --count 8 --token-file T \
                 --allow-task my_tasks.cnn:make_task --device cuda

Exit status: 0 when the PS ends the run (Bye), 2 on an error a user can fix (wrong address,
refused credential, version mismatch, bad flags), 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from draco.errors import ConfigError, DracoError
from draco.launch.credentials import load_tokens
from draco.launch.env import resolve_ids
from draco.net.eventloop import exit_status, on_stop_signals, run_with_loop
from draco.net.protocol import (
    MAX_OUTSTANDING_REQUESTS,
    MAX_OUTSTANDING_REQUESTS_CAP,
    check_outstanding_requests,
)
from draco.tasks.contract import DEVICES
from draco.tasks.plugins import TaskOptionLimits, check_factory_name

PROG = "draco-worker"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port). ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ps must be HOST:PORT (e.g. 127.0.0.1:7000), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run K logical DRACO workers (ids I..I+K-1) against a parameter server.",
    )
    _add_identity_flags(p)
    _add_retry_flags(p)
    _add_task_policy_flags(p)
    _add_connection_flags(p)
    return p


def _add_identity_flags(p: argparse.ArgumentParser) -> None:
    """Which PS, which worker ids, whose credentials, and a persistent attack."""
    p.add_argument("--ps", required=True, metavar="HOST:PORT", help="the parameter server")
    p.add_argument(
        "--id",
        type=int,
        default=None,
        metavar="I",
        help="first worker id (else from $SLURM_PROCID or $RANK; see docs/slurm.md)",
    )
    p.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="K",
        help="logical workers in this process (1); under a launcher rank r runs r*K..r*K+K-1",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="under a launcher: split the run's N worker ids evenly over its tasks",
    )
    p.add_argument(
        "--token-file",
        required=True,
        type=Path,
        metavar="F",
        help="tokens file from `draco-ps keys` (holds the credentials of ids I..I+K-1)",
    )
    p.add_argument(
        "--attack",
        default=None,
        metavar="NAME",
        help="persistently malicious: apply this attack every round (experiments only)",
    )


def _add_retry_flags(p: argparse.ArgumentParser) -> None:
    """How long to keep reaching the PS, and to keep being turned away before a Welcome."""
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="SEC",
        help="keep retrying to reach the PS this long, at start and after a drop (30)",
    )
    p.add_argument(
        "--join-timeout",
        type=float,
        default=120.0,
        metavar="SEC",
        help="keep retrying, with backoff, connections the PS closes before welcoming us "
        "(its handshake slots are full, a handshake timed out) this long (120)",
    )


def _add_task_policy_flags(p: argparse.ArgumentParser) -> None:
    """What this operator lets the PS make the worker run: plug-ins, device, option sizes."""
    p.add_argument(
        "--allow-task",
        action="append",
        default=[],
        metavar="PACKAGE.MODULE:FACTORY",
        help="a plug-in task factory this worker may import and run when the PS names it "
        "(repeatable; the built-in tasks need none). Nothing else is ever imported",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where gradients are computed (cpu); cuda/mps need the PS's --vote tolerance "
        "with the repetition code",
    )
    lim = TaskOptionLimits()
    for what, metavar, default, help_ in (
        ("depth", "D", lim.max_depth, "nest deeper than this"),
        ("items", "N", lim.max_items, "hold more values than this"),
        ("text", "CHARS", lim.max_text, "hold a longer string than this"),
    ):
        p.add_argument(
            f"--max-task-option-{what}",
            type=int,
            default=default,
            metavar=metavar,
            help=f"refuse a task whose options (from the PS) {help_} ({default})",
        )


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    """The connection itself: request bound, event loop, TLS, log level."""
    p.add_argument(
        "--max-outstanding-requests",
        type=int,
        default=MAX_OUTSTANDING_REQUESTS,
        metavar="K",
        help="digest vote: unanswered payload requests from the PS remembered per connection, "
        f"1..{MAX_OUTSTANDING_REQUESTS_CAP} (beyond it the oldest is forgotten and never "
        f"answered; an honest PS has at most one) ({MAX_OUTSTANDING_REQUESTS})",
    )
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--tls-ca", type=Path, default=None, help="CA file to verify the PS with")
    p.add_argument("--tls-cert", type=Path, default=None, help="client certificate (mTLS)")
    p.add_argument("--tls-key", type=Path, default=None, help="client private key (mTLS)")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def run_coroutine(
    make: Callable[[], Coroutine[Any, Any, None]], loop_name: str
) -> tuple[int, BaseException | None]:
    """Run ``make()`` on the chosen loop; SIGINT/SIGTERM cancel it (exit 130 / 143)."""
    got: list[int] = []

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None

        def stop(sig: int) -> None:
            got.append(sig)
            task.cancel()

        on_stop_signals(stop)
        await make()

    try:
        run_with_loop(main, loop_name)
    except asyncio.CancelledError:
        return exit_status(got[0] if got else signal.SIGINT), None
    except KeyboardInterrupt:
        return exit_status(signal.SIGINT), None
    except DracoError as exc:
        return 2, exc
    return 0, None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=f"{PROG}: %(message)s")
    # One compute thread per process: keep BLAS / OpenMP from oversubscribing the cores that
    # the other worker processes and the PS share (set before torch is first imported).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from draco.net.worker import WorkerOptions, run_workers

        ids = resolve_ids(args.id, args.count, args.workers, os.environ)
        logging.getLogger("draco.worker").info(
            "worker ids %d..%d (from %s)", ids.first, ids.first + ids.count - 1, ids.source
        )
        for name in args.allow_task:
            check_factory_name(name)
        option_limits = TaskOptionLimits(
            max_depth=args.max_task_option_depth,
            max_items=args.max_task_option_items,
            max_text=args.max_task_option_text,
        )
        if args.device != "cpu":
            # Fail before connecting: a worker that cannot compute must not take a seat.
            from draco.tasks.torch.device import check_device

            check_device(args.device)
        max_requests = check_outstanding_requests(args.max_outstanding_requests)
        if args.connect_timeout <= 0:
            raise ConfigError(f"--connect-timeout must be > 0, got {args.connect_timeout}")
        if not args.join_timeout > 0:
            raise ConfigError(f"--join-timeout must be > 0, got {args.join_timeout}")
        host, port = parse_address(args.ps)
        tokens = load_tokens(args.token_file, ids.first, ids.count)
        ssl_context = None
        if args.tls_ca or args.tls_cert or args.tls_key:
            from draco.net.auth import client_ssl_context

            ssl_context = client_ssl_context(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
        options = WorkerOptions(
            host=host,
            port=port,
            tokens=tokens,
            attack=args.attack,
            connect_timeout=args.connect_timeout,
            join_timeout=args.join_timeout,
            ssl_context=ssl_context,
            allowed_tasks=frozenset(args.allow_task),
            device=args.device,
            task_option_limits=option_limits,
            max_outstanding_requests=max_requests,
        )
    except DracoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    status, failure = run_coroutine(lambda: run_workers(options), args.loop)
    if failure is not None:
        print(f"{PROG}: error: {failure}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
