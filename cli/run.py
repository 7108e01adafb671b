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
4. waits for the PS, returns its exit status (0 completed, 1 failed, 3 the model diverged:
   ``draco-ps --help``).

Ctrl-C or SIGTERM stops every child (each in its own process group: SIGTERM, then SIGKILL
after a grace period); on Linux the children also get SIGTERM if this launcher dies.
``draco-run --resume RUN_DIR`` continues a run from its last checkpoint with its own secret.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from draco.errors import DracoError
from draco.launch.local import PROG, run_local
from draco.launch.plan import DEMO_FLAGS, LaunchOptions
from draco.launch.processes import Interrupted


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


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    """The launcher's own flags as ``LaunchOptions`` (the rest go to ``draco-ps``)."""
    return LaunchOptions(
        worker_procs=args.worker_procs, run_dir=args.run_dir, resume=args.resume, loop=args.loop
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run_local(options_from_args(args), passthrough)
    except Interrupted as exc:
        return 128 + exc.signum
    except DracoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
