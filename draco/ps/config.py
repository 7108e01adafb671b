"""The parameter server's configuration: frozen, validated dataclasses (after nanoGPT's config).

``PSConfig`` holds everything ``draco-ps`` was asked to do; ``cli/ps.py`` builds it from the
command line (``PSConfig.from_args``) and writes ``PSConfig.to_dict()`` to the run directory's
``config.json``; ``draco-ps --resume RUN_DIR`` rebuilds it with ``PSConfig.from_dict``. Every
invalid value raises ``ConfigError`` naming the flag and what would be accepted.

Security-relevant bounds live in ``ServerLimits``, each with its own flag, so an operator can
see and tighten them. The tensor bounds after authentication are not flags: the server sizes
them to exactly one payload of the run's code (``dim`` x payload itemsize).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from draco.core.codes import CODES
from draco.errors import ConfigError
from draco.net.protocol import MAX_OUTSTANDING_REQUESTS, check_outstanding_requests
from draco.options import parse_options
from draco.ps.optim import SGDConfig

SCHEDULES = ("random", "fixed")
LOOPS = ("uvloop", "asyncio")
#: ``PSConfig.vote``: full payloads, digest-first (draco.ps.digest_vote.VOTES), or auto (see
#: resolved_vote).
VOTES = ("full", "digest", "auto")
#: ``draco-ps --vote``: the above, or the repetition code's tolerance vote (full payloads
#: that agree within ``--vote-rtol`` count as equal: ``PSConfig.vote_rtol``).
VOTE_CHOICES = (*VOTES, "tolerance")
# The tolerance vote's default: float32 gradients computed on different devices differ in
# the last few bits of each term; their sums stay well within 1e-4 of the largest entry.
DEFAULT_VOTE_RTOL = 1e-4


def _is_loopback(host: str) -> bool:
    """True for a loopback listen address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume other hosts can reach it


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be {bound}, got {value}")


def _check_seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value}")


@dataclass(frozen=True)
class ServerLimits:
    """What one peer may make the server hold or do; all checked before allocating.

    Parameters
    ----------
    max_header_bytes : int
        Largest msgpack header of a frame from an authenticated worker, bytes.
    max_handshake_header_bytes : int
        Largest header before authentication, bytes (no tensor bytes are allowed then).
    max_messages_per_round : int
        Messages one connection may send per round; more is a protocol violation.
    max_pending_handshakes : int
        Pre-authentication connections (TCP accepted, TLS or DRACO handshake in progress) held
        at once, all source addresses together. When full, the oldest idle one is evicted.
    max_pending_per_source : int
        The same, per source IP address (a flood from one host only evicts its own oldest).
    auth_failure_burst : int
        Authentication failures one source address may have in a burst before throttling.
    auth_failure_rate : float
        Authentication failures per second one source address is answered at after its
        burst; further Auths from it are verified only after a delay.
    max_outstanding_requests : int
        Digest vote: PayloadRequests sent to one worker and not yet answered that the
        connection remembers (1 .. 4096); beyond it the oldest is forgotten, and a late
        answer to a forgotten request is a protocol violation. An honest worker never has
        more than one.
    """

    max_header_bytes: int = 64 * 1024  # a Gradient header is ~100 bytes
    max_handshake_header_bytes: int = 4 * 1024  # Hello / Auth are ~60 bytes
    max_messages_per_round: int = 4  # one Gradient (+ a late one, + Bye) is all that is needed
    max_pending_handshakes: int = 256  # each: 1 fd and memory (TLS: ~120 KB)
    max_pending_per_source: int = 16  # a worker host needs 1 per logical worker joining at once
    auth_failure_burst: int = 20
    auth_failure_rate: float = 5.0  # per second
    max_outstanding_requests: int = MAX_OUTSTANDING_REQUESTS

    def __post_init__(self) -> None:
        check_outstanding_requests(self.max_outstanding_requests)
        _check_int("--max-header-bytes", self.max_header_bytes, 256, 2**32 - 1)
        _check_int("--max-handshake-header-bytes", self.max_handshake_header_bytes, 128, 2**20)
        _check_int("--max-messages-per-round", self.max_messages_per_round, 1, 10_000)
        _check_int("--max-pending-handshakes", self.max_pending_handshakes, 1, 100_000)
        _check_int("--max-pending-per-source", self.max_pending_per_source, 1, 100_000)
        _check_int("--auth-failure-burst", self.auth_failure_burst, 1, 1_000_000)
        rate = self.auth_failure_rate
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not (math.isfinite(rate) and rate > 0)
        ):
            raise ConfigError(f"--auth-failure-rate must be a positive number, got {rate!r}")


@dataclass(frozen=True)
class PSConfig:
    """Everything the parameter server needs (see the command-line contract).

    The fields in ``RUN_FIELDS`` define the run (a resumed run takes them from the saved
    ``config.json``); the others say where and how this process serves it.
    """

    # -- the run
    n_workers: int = 15
    n_adversaries: int = 2  # s: liars the code tolerates (f of the aggregator with code none)
    code: str = "repetition"
    aggregator: str | None = None  # only with code "none" (None there = "mean")
    aggregator_options: dict[str, Any] = field(default_factory=dict)  # only with code "none"
    attack: str | None = None  # None: nobody lies
    attack_options: dict[str, Any] = field(default_factory=dict)
    adversary_schedule: str = "random"  # which s workers lie: new each round, or fixed
    # Repetition code only. None: the exact, bitwise vote. A float in (0, 1): the tolerance
    # vote (payloads within rtol of each other count as equal) for workers whose devices
    # cannot give bit-identical gradients (GPUs, mixed hosts; draco-ps --vote tolerance).
    vote_rtol: float | None = None
    rounds: int = 100
    seed: int = 0
    task: dict[str, Any] = field(default_factory=lambda: {"model": "lstsq"})
    sgd: SGDConfig = field(default_factory=SGDConfig)
    eval_every: int = 10  # 0: only at the end
    checkpoint_every: int = 50  # 0: never (needs a run directory)
    max_failed_rounds: int = 5  # consecutive failed rounds before giving up
    link_gbps: float = 10.0  # the modelled cluster's link speed (cluster_seconds)
    target_accuracy: float | None = None  # summary: rounds / cluster seconds to reach it
    # -- this process
    host: str = "127.0.0.1"
    port: int = 7000  # 0: any free port (see ready_file)
    ready_file: Path | None = None
    run_dir: Path | None = None
    resume: bool = False
    secret_file: Path | None = None
    round_timeout: float = 60.0
    handshake_timeout: float = 5.0  # pre-authentication deadline, TLS handshake included
    join_timeout: float = 120.0
    # A round that cannot decode because workers are not connected waits this long (seconds)
    # for them to (re)join, retrying with backoff, before the run stops.
    rejoin_timeout: float = 120.0
    shutdown_grace: float = 5.0
    loop: str = "uvloop"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    # -- the vote (how payloads travel; the model does not depend on it)
    vote: str = "auto"  # "full" | "digest" (repetition, exact vote) | "auto" (resolved_vote)
    digest_bytes: int = 32  # BLAKE2b digest length, 16..64
    max_payload_requests: int | None = None  # per group and attempt; None: s+1
    payload_timeout: float = 10.0  # seconds a member asked for its payload has

    RUN_FIELDS = (
        "n_workers",
        "n_adversaries",
        "code",
        "aggregator",
        "aggregator_options",
        "attack",
        "attack_options",
        "adversary_schedule",
        "vote_rtol",
        "rounds",
        "seed",
        "task",
        "sgd",
        "eval_every",
        "checkpoint_every",
        "max_failed_rounds",
        "link_gbps",
        "target_accuracy",
    )

    def __post_init__(self) -> None:
        # In this order: a user with several wrong flags hears about the first of them.
        self._check_method()
        self._check_run()
        self._check_network()
        self._check_vote()

    def _check_method(self) -> None:
        """Workers, liars, code, aggregator, attack, cluster-time model."""
        _check_int("--workers", self.n_workers, 1, 100_000)
        _check_int("--adversaries", self.n_adversaries, 0)
        if self.n_adversaries >= self.n_workers:
            raise ConfigError(
                f"--adversaries ({self.n_adversaries}) must be smaller than --workers "
                f"({self.n_workers})"
            )
        if self.code not in CODES:
            raise ConfigError(f"--code must be one of {', '.join(CODES)}, got {self.code!r}")
        if self.code != "none" and self.aggregator is not None:
            raise ConfigError(
                f"--aggregator {self.aggregator} applies only to --code none (the baselines); "
                f"the DRACO code {self.code!r} decodes the exact gradient and uses no "
                "aggregator: drop --aggregator, or pass --code none"
            )
        if self.code != "none" and self.aggregator_options:
            raise ConfigError(
                f"--aggregator-option applies only to --code none, not to --code {self.code}"
            )
        _check_options("--aggregator-option", self.aggregator_options)
        _check_options("--attack-option", self.attack_options)
        if self.attack is None and self.attack_options:
            raise ConfigError("--attack-option needs an --attack")
        if self.vote_rtol is not None:
            if self.code != "repetition":
                raise ConfigError(
                    f"--vote tolerance applies to the repetition code, not --code {self.code}"
                )
            rtol = self.vote_rtol
            if (
                isinstance(rtol, bool)
                or not isinstance(rtol, (int, float))
                or not 0.0 < float(rtol) < 1.0
            ):
                raise ConfigError(f"--vote-rtol must be a number in (0, 1), got {rtol!r}")
        if isinstance(self.link_gbps, bool) or not isinstance(self.link_gbps, (int, float)):
            raise ConfigError(f"--link-gbps must be a number, got {self.link_gbps!r}")
        if not (math.isfinite(self.link_gbps) and self.link_gbps > 0):
            raise ConfigError(f"--link-gbps must be a positive number, got {self.link_gbps}")
        if self.target_accuracy is not None and not (
            isinstance(self.target_accuracy, (int, float))
            and not isinstance(self.target_accuracy, bool)
            and 0.0 < self.target_accuracy <= 1.0
        ):
            raise ConfigError(
                f"--target-accuracy must be a fraction in (0, 1], got {self.target_accuracy!r}"
            )
        if self.adversary_schedule not in SCHEDULES:
            raise ConfigError(
                f"--adversary-schedule must be one of {', '.join(SCHEDULES)}, "
                f"got {self.adversary_schedule!r}"
            )
        if self.attack is not None and not (isinstance(self.attack, str) and self.attack):
            raise ConfigError(f"--attack must be an attack name, got {self.attack!r}")
        if self.attack is not None and self.n_adversaries == 0:
            raise ConfigError(
                f"--attack {self.attack} needs liars: pass --adversaries S with S >= 1"
            )

    def _check_run(self) -> None:
        """Rounds, seed, task, optimizer, evaluation / checkpoint / failure policy."""
        _check_int("--rounds", self.rounds, 1)
        _check_int("--seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.task, dict) or "model" not in self.task:
            raise ConfigError(f"task spec must be a dict with a 'model' key, got {self.task!r}")
        if not isinstance(self.sgd, SGDConfig):
            raise ConfigError(f"sgd must be an SGDConfig, got {self.sgd!r}")
        _check_int("--eval-every", self.eval_every, 0)
        _check_int("--checkpoint-every", self.checkpoint_every, 0)
        _check_int("--max-failed-rounds", self.max_failed_rounds, 1)

    def _check_network(self) -> None:
        """Address, timeouts, event loop, TLS, run directory, server limits."""
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"--host must be a host name or address, got {self.host!r}")
        _check_int("--port", self.port, 0, 65535)
        _check_seconds("--round-timeout", self.round_timeout)
        _check_seconds("--handshake-timeout", self.handshake_timeout)
        _check_seconds("--join-timeout", self.join_timeout)
        _check_seconds("--rejoin-timeout", self.rejoin_timeout)
        _check_seconds("--shutdown-grace", self.shutdown_grace)
        if self.loop not in LOOPS:
            raise ConfigError(f"--loop must be one of {', '.join(LOOPS)}, got {self.loop!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key (or neither)")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "--tls-ca (verify worker certificates) needs the server's own --tls-cert "
                "and --tls-key"
            )
        if self.resume and self.run_dir is None:
            raise ConfigError("--resume needs the run directory to continue")
        if not isinstance(self.limits, ServerLimits):
            raise ConfigError(f"limits must be a ServerLimits, got {self.limits!r}")

    def _check_vote(self) -> None:
        """The repetition code's vote and the digest-first vote's limits."""
        if self.vote not in VOTES:
            raise ConfigError(f"--vote must be one of {', '.join(VOTE_CHOICES)}, got {self.vote!r}")
        if self.vote == "digest" and self.vote_rtol is not None:
            raise ConfigError(
                "--vote digest is an exact vote (bit-identical payloads); the tolerance vote "
                "needs every full payload"
            )
        if self.vote == "digest" and self.code != "repetition":
            raise ConfigError(
                f"--vote digest works with --code repetition only (--code {self.code} needs "
                "every full payload): use --vote full or auto"
            )
        _check_int("--digest-bytes", self.digest_bytes, 16, 64)
        if self.max_payload_requests is not None:
            _check_int("--max-payload-requests", self.max_payload_requests, 1)
        _check_seconds("--payload-timeout", self.payload_timeout)

    def resolved_vote(self, exact: bool = True) -> str:
        """The vote this run uses. ``auto``: ``digest`` for the repetition code with the exact
        vote (``exact``: no ``rtol``) when the PS listens on a non-loopback address (workers
        on other hosts: the PS's link is what the digest vote saves), else ``full``.

        Why not on loopback (decided from measurements, benchmarks/results.md "draco-bench
        net --vote"): there every worker shares the PS's machine and there is no link to
        save. ``draco-run`` at P = 45, d = 1,033,510 took the same time per round in both
        votes (0.60-0.81 s digest, 0.61-0.87 s full), while the digest vote adds a worst case
        (a member stopping between digest and payload costs ``--payload-timeout`` per member
        asked). Off loopback it wins: 6.2x shorter rounds with the PS's ingress at 1 Gb/s.
        Both votes pass the same fault tests and give the same model.
        """
        if self.vote_rtol is not None:
            return "full"  # the tolerance vote compares full payloads
        if self.vote != "auto":
            return self.vote
        if self.code != "repetition" or not exact or _is_loopback(self.host):
            return "full"
        return "digest"

    # -- conversions ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (paths as strings); ``from_dict`` inverts it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (SGDConfig, ServerLimits)):
                value = dataclasses.asdict(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PSConfig:
        """Rebuild from ``to_dict()`` output; ``ConfigError`` on unknown or bad fields."""
        if not isinstance(data, dict):
            raise ConfigError(f"a saved configuration is a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown configuration keys {sorted(unknown)}")
        kw = dict(data)
        if kw.get("code", "repetition") != "none" and kw.get("aggregator") == "mean":
            kw["aggregator"] = None  # run directories written before --aggregator was refused
        try:
            if "sgd" in kw:
                kw["sgd"] = SGDConfig(**kw["sgd"])
            if "limits" in kw:
                kw["limits"] = ServerLimits(**kw["limits"])
        except TypeError as exc:
            raise ConfigError(f"bad saved configuration: {exc}") from exc
        for name in ("ready_file", "run_dir", "secret_file", "tls_cert", "tls_key", "tls_ca"):
            if kw.get(name) is not None:
                kw[name] = Path(kw[name])
        return cls(**kw)

    def with_run_of(self, saved: PSConfig) -> PSConfig:
        """This process's settings with the run-defining fields of ``saved`` (for --resume)."""
        return dataclasses.replace(self, **{k: getattr(saved, k) for k in self.RUN_FIELDS})

    @classmethod
    def from_args(cls, args: argparse.Namespace, task: dict[str, Any]) -> PSConfig:
        """Build from ``draco-ps`` flags; ``task`` is ``task_spec_from_args(...)``."""
        limits = ServerLimits(
            max_header_bytes=args.max_header_bytes,
            max_handshake_header_bytes=args.max_handshake_header_bytes,
            max_messages_per_round=args.max_messages_per_round,
            max_pending_handshakes=args.max_pending_handshakes,
            max_pending_per_source=args.max_pending_per_source,
            auth_failure_burst=args.auth_failure_burst,
            auth_failure_rate=args.auth_failure_rate,
            max_outstanding_requests=getattr(
                args, "max_outstanding_requests", MAX_OUTSTANDING_REQUESTS
            ),
        )
        attack = None if args.attack in (None, "", "none") else args.attack
        aggregator_options = parse_options(getattr(args, "aggregator_option", None) or [])
        attack_options = parse_options(getattr(args, "attack_option", None) or [])
        resume = args.resume is not None
        run_dir = args.resume if resume else args.run_dir
        vote, vote_rtol = getattr(args, "vote", "auto"), getattr(args, "vote_rtol", None)
        if vote != "tolerance" and vote_rtol is not None:
            raise ConfigError("--vote-rtol needs --vote tolerance")
        if vote == "tolerance":
            # The tolerance vote compares full payloads.
            vote, vote_rtol = "full", DEFAULT_VOTE_RTOL if vote_rtol is None else vote_rtol
        return cls(
            n_workers=args.workers,
            n_adversaries=args.adversaries,
            code=args.code,
            aggregator=args.aggregator,
            aggregator_options=aggregator_options,
            attack=attack,
            attack_options=attack_options,
            adversary_schedule=args.adversary_schedule,
            vote_rtol=vote_rtol,
            rounds=args.rounds,
            seed=args.seed,
            task=task,
            sgd=SGDConfig(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay),
            eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every,
            max_failed_rounds=args.max_failed_rounds,
            link_gbps=args.link_gbps,
            target_accuracy=args.target_accuracy,
            host=args.host,
            port=args.port,
            ready_file=args.ready_file,
            run_dir=None if run_dir is None else Path(run_dir),
            resume=resume,
            secret_file=args.secret_file,
            round_timeout=args.round_timeout,
            handshake_timeout=args.handshake_timeout,
            join_timeout=args.join_timeout,
            rejoin_timeout=args.rejoin_timeout,
            shutdown_grace=args.shutdown_grace,
            loop=args.loop,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            limits=limits,
            vote=vote,
            digest_bytes=getattr(args, "digest_bytes", 32),
            max_payload_requests=getattr(args, "max_payload_requests", None),
            payload_timeout=getattr(args, "payload_timeout", 10.0),
        )

    def code_options(self) -> dict[str, Any]:
        """Options for ``make_code(self.code, n, s, **options)``."""
        if self.code == "repetition" and self.vote_rtol is not None:
            return {"rtol": float(self.vote_rtol)}
        if self.code != "none":
            return {}
        return {"aggregator": self.aggregator or "mean", **self.aggregator_options}


def _check_options(flag: str, options: Any) -> None:
    if not isinstance(options, dict):
        raise ConfigError(f"{flag} values must form a dict, got {options!r}")
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool, type(None))):
            raise ConfigError(f"{flag} {key}={value!r}: values are numbers, strings or booleans")
