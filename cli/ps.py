"""``draco-ps``: the DRACO parameter server.

Credentials first (once per cluster; hand each worker host the tokens file, keep the secret)::

    draco-ps keys --secret-file ps.secret --workers 15 --out tokens.txt --create-secret

Then a run (15 workers, 2 liars per round at the repetition code's limit, a numpy task)::

    draco-ps --workers 15 --adversaries 2 --code repetition --attack constant \\
             --model lstsq --rounds 200 --secret-file ps.secret --run-dir runs/demo
    draco-worker --ps 127.0.0.1:7000 --id 0 --count 15 --token-file tokens.txt

Continue an interrupted run from its newest checkpoint (same final model)::

    draco-ps --resume runs/demo --secret-file ps.secret

stdout: one progress line per round, then the summary as JSON. Exit status: 0 for a
completed run, 1 when the run failed (too many failed rounds, no worker joined), 2 for a
usage error, 3 when the model diverged (NaN/Inf; summary.json says so: ``"status":
"diverged"``, and the run cannot be resumed), 130 / 143 when stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from draco.errors import DracoError
from draco.launch.credentials import issue_keys
from draco.ps.config import (
    CODES,
    DEFAULT_VOTE_RTOL,
    LOOPS,
    SCHEDULES,
    VOTE_CHOICES,
    PSConfig,
    ServerLimits,
)
from draco.tasks.registry import add_task_arguments, task_spec_from_args

PROG = "draco-ps"
EXIT_USAGE = 2

# ----------------------------------------------------------------------------- flags


def build_parser() -> argparse.ArgumentParser:
    d = PSConfig()
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run the DRACO parameter server (see also: draco-ps keys --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_network_flags(p, d)
    _add_limit_flags(p, ServerLimits())
    _add_run_flags(p, d)
    _add_vote_flags(p, d)
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_task_arguments(p)
    return p


def _add_network_flags(p: argparse.ArgumentParser, d: PSConfig) -> None:
    """Address, TLS, timeouts of the handshake and shutdown."""
    net = p.add_argument_group("network")
    net.add_argument("--host", default=d.host, help="address to listen on")
    net.add_argument("--port", type=int, default=d.port, help="port; 0 = any free port")
    net.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help='written atomically once listening: JSON {"host", "port", "pid"}',
    )
    net.add_argument("--secret-file", type=Path, default=None, help="cluster secret (required)")
    net.add_argument("--loop", choices=LOOPS, default=d.loop, help="event loop")
    net.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM)")
    net.add_argument("--tls-key", type=Path, default=None, help="server private key (PEM)")
    net.add_argument(
        "--tls-ca", type=Path, default=None, help="CA that worker certificates must chain to"
    )
    net.add_argument(
        "--round-timeout",
        type=float,
        default=d.round_timeout,
        metavar="SEC",
        help="close a round attempt after this long; missing workers are erasures (answers "
        "that arrive later are measured and reported if the run gives up)",
    )
    net.add_argument(
        "--handshake-timeout",
        type=float,
        default=d.handshake_timeout,
        metavar="SEC",
        help="a connection must authenticate within this time (TLS handshake included)",
    )
    net.add_argument(
        "--join-timeout",
        type=float,
        default=d.join_timeout,
        metavar="SEC",
        help="wait this long for all workers before round 0 (then start with those present)",
    )
    net.add_argument(
        "--rejoin-timeout",
        type=float,
        default=d.rejoin_timeout,
        metavar="SEC",
        help="a round that cannot decode because workers are not connected (or have not "
        "answered it at all yet) is retried with backoff this long, then the run stops",
    )
    net.add_argument(
        "--shutdown-grace",
        type=float,
        default=d.shutdown_grace,
        metavar="SEC",
        help="on shutdown, wait this long for workers to leave before cancelling",
    )


def _add_limit_flags(p: argparse.ArgumentParser, lim: ServerLimits) -> None:
    """Per-connection frame limits and admission limits (docs/protocol.md 4.1)."""
    lg = p.add_argument_group("limits (per connection; checked before allocating)")
    lg.add_argument(
        "--max-header-bytes",
        type=int,
        default=lim.max_header_bytes,
        help="largest msgpack header of an authenticated peer",
    )
    lg.add_argument(
        "--max-handshake-header-bytes",
        type=int,
        default=lim.max_handshake_header_bytes,
        help="largest header before authentication (no tensor bytes are accepted then)",
    )
    lg.add_argument(
        "--max-messages-per-round",
        type=int,
        default=lim.max_messages_per_round,
        help="messages one worker may send per round before it is disconnected",
    )
    lg.add_argument(
        "--max-pending-handshakes",
        type=int,
        default=lim.max_pending_handshakes,
        help="pre-authentication connections (TLS handshakes included) held at once, all "
        "sources; when full the oldest idle one is evicted for a newcomer",
    )
    lg.add_argument(
        "--max-pending-per-source",
        type=int,
        default=lim.max_pending_per_source,
        help="the same per source IP address (a flood from one host evicts its own oldest)",
    )
    lg.add_argument(
        "--auth-failure-burst",
        type=int,
        default=lim.auth_failure_burst,
        help="authentication failures one source may have at once before it is throttled",
    )
    lg.add_argument(
        "--auth-failure-rate",
        type=float,
        default=lim.auth_failure_rate,
        metavar="PER_SEC",
        help="after the burst, a source's authentication attempts are answered at this rate",
    )
    lg.add_argument(
        "--max-outstanding-requests",
        type=int,
        default=lim.max_outstanding_requests,
        metavar="K",
        help="digest vote: unanswered payload requests remembered per worker, 1..4096 (the "
        "oldest is forgotten beyond it; an answer to a forgotten one is a violation)",
    )


def _add_run_flags(p: argparse.ArgumentParser, d: PSConfig) -> None:
    """Workers, code, attack, rounds, run directory, failure and checkpoint policy."""
    run = p.add_argument_group("run")
    run.add_argument(
        "--workers", type=int, default=d.n_workers, metavar="N", help="worker seats (ids 0..N-1)"
    )
    run.add_argument(
        "--adversaries", type=int, default=d.n_adversaries, metavar="S", help="liars tolerated"
    )
    run.add_argument(
        "--code",
        choices=CODES,
        default=d.code,
        help="repetition / cyclic (DRACO) or none (one partition per worker + --aggregator)",
    )
    run.add_argument(
        "--aggregator",
        default=None,
        help="robust aggregator, only with --code none (default there: mean); refused with a "
        "DRACO code",
    )
    run.add_argument(
        "--aggregator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the aggregator (repeatable), e.g. tau=10 for centered_clipping",
    )
    run.add_argument(
        "--attack",
        default=None,
        help="experiment mode: s liars per round apply this attack (one of draco.core.attacks)",
    )
    run.add_argument(
        "--attack-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the attack (repeatable), e.g. value=-100 for constant",
    )
    run.add_argument(
        "--link-gbps",
        type=float,
        default=d.link_gbps,
        help="link speed of the modelled cluster behind cluster_seconds (docs/cluster_time.md)",
    )
    run.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        metavar="FRACTION",
        help="summary.json gets the rounds and cluster seconds to this test accuracy (e.g. 0.88)",
    )
    run.add_argument(
        "--adversary-schedule",
        choices=SCHEDULES,
        default=d.adversary_schedule,
        help="random: new seeded liars every round; fixed: the same ones",
    )
    run.add_argument("--rounds", type=int, default=d.rounds, help="rounds to train")
    run.add_argument("--seed", type=int, default=d.seed, help="seed of data order, init and liars")
    run.add_argument("--run-dir", type=Path, default=None, help="where the run is written")
    run.add_argument(
        "--resume", type=Path, default=None, metavar="RUN_DIR", help="continue this run"
    )
    run.add_argument(
        "--max-failed-rounds",
        type=int,
        default=d.max_failed_rounds,
        metavar="K",
        help="stop after K failed attempts of a round in a row with every worker connected "
        "and answering (retries wait with backoff; attempts with workers missing or silent "
        "count against --rejoin-timeout instead)",
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, metavar="K", help="0 = never"
    )


def _add_vote_flags(p: argparse.ArgumentParser, d: PSConfig) -> None:
    """The repetition code's vote: full, digest-first or tolerance."""
    vg = p.add_argument_group("vote (docs/protocol.md section 6)")
    vg.add_argument(
        "--vote",
        choices=VOTE_CHOICES,
        default=d.vote,
        help="full: every worker sends its payload; digest: (repetition code, exact vote) "
        "every worker sends a keyed BLAKE2b digest and the PS fetches one payload per group; "
        "auto: digest where it applies, else full; tolerance: (repetition code) full "
        "payloads that agree within --vote-rtol count as equal, for workers whose devices "
        "cannot give bit-identical gradients (draco-worker --device cuda/mps, mixed hosts)",
    )
    vg.add_argument(
        "--vote-rtol",
        type=float,
        default=None,
        metavar="RTOL",
        help=f"tolerance vote: payloads a, b count as equal when max|a-b| <= RTOL * "
        f"max(|a|_inf, |b|_inf) (default {DEFAULT_VOTE_RTOL:g})",
    )
    vg.add_argument(
        "--digest-bytes",
        type=int,
        default=d.digest_bytes,
        metavar="N",
        help="digest length, 16..64 bytes",
    )
    vg.add_argument(
        "--max-payload-requests",
        type=int,
        default=d.max_payload_requests,
        metavar="K",
        help="payload requests per group and attempt before the attempt fails (default s+1)",
    )
    vg.add_argument(
        "--payload-timeout",
        type=float,
        default=d.payload_timeout,
        metavar="SEC",
        help="seconds an asked worker has to send its payload before the next one is asked",
    )


def build_keys_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} keys",
        description="Issue per-worker tokens (one token authenticates exactly one worker id).",
    )
    p.add_argument("--secret-file", type=Path, required=True, help="the cluster secret")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="ids 0..N-1")
    p.add_argument("--out", type=Path, required=True, metavar="TOKENS", help="tokens file")
    p.add_argument(
        "--create-secret", action="store_true", help="create the secret file (must not exist)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing tokens file")
    return p


def run_keys(args: argparse.Namespace) -> int:
    """``draco-ps keys``: the tokens file from the parsed flags; exit status 0."""
    issue_keys(
        args.secret_file, args.workers, args.out, create_secret=args.create_secret, force=args.force
    )
    print(f"{PROG}: wrote tokens of workers 0..{args.workers - 1} to {args.out} (mode 0600)")
    return 0


# ----------------------------------------------------------------------------- recording


def config_from_args(args: argparse.Namespace) -> PSConfig:
    """PSConfig from parsed flags (the task spec needs the code's partition count)."""
    from draco.core.codes import make_code

    if args.resume is not None:
        # The run's own settings come from its config.json; these are placeholders.
        return PSConfig.from_args(args, {"model": "placeholder"})
    config = PSConfig.from_args(args, {"model": "placeholder"})  # validates the flags first
    code = make_code(args.code, args.workers, args.adversaries, **config.code_options())
    if config.attack is not None:
        from draco.core.attacks import make_attack

        make_attack(config.attack, **config.attack_options)  # unknown parameters: refused now
    spec = task_spec_from_args(args, code.n_partitions, args.seed)
    return PSConfig.from_args(args, spec)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["keys"]:
            return run_keys(build_keys_parser().parse_args(argv[1:]))
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        config = config_from_args(args)
        from draco.ps.service import run

        result = run(config)
        if result.summary is not None:
            print(json.dumps(result.summary, indent=2), flush=True)
        if not result.completed:
            print(f"{PROG}: error: {result.reason}", file=sys.stderr, flush=True)
        return result.exit_code
    except DracoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a signal before the loop installed its handlers
        return 130


if __name__ == "__main__":
    sys.exit(main())
