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
usage error, 130 / 143 when stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import signal
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from draco.config import (
    CODES,
    DEFAULT_VOTE_RTOL,
    LOOPS,
    SCHEDULES,
    VOTE_CHOICES,
    PSConfig,
    ServerLimits,
)
from draco.errors import ConfigError, DracoError
from draco.optim import SGD
from draco.task import CUSTOM_MODEL, Task, add_task_arguments, make_task, task_spec_from_args

PROG = "draco-ps"
EXIT_USAGE = 2
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}

# config.json keys that are not PSConfig fields (informational).
_CONFIG_EXTRAS = ("dim", "n_partitions", "format")


def model_sha256(params: np.ndarray) -> str:
    """SHA-256 of the parameters as little-endian float32 bytes (hex)."""
    return hashlib.sha256(np.asarray(params).astype("<f4").tobytes()).hexdigest()


# ----------------------------------------------------------------------------- flags


def build_parser() -> argparse.ArgumentParser:
    d = PSConfig()
    lim = ServerLimits()
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run the DRACO parameter server (see also: draco-ps keys --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_task_arguments(p)
    return p


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
    from draco.net import auth

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.create_secret:
        secret = auth.write_secret(args.secret_file)
    else:
        if not args.secret_file.exists():
            raise ConfigError(
                f"secret file {args.secret_file} does not exist; add --create-secret to make it"
            )
        secret = auth.load_secret(args.secret_file)
    tokens = auth.issue_tokens(secret, range(args.workers))
    auth.write_token_file(args.out, tokens, overwrite=args.force)
    print(f"{PROG}: wrote tokens of workers 0..{args.workers - 1} to {args.out} (mode 0600)")
    return 0


# ----------------------------------------------------------------------------- recording


class RunRecorder:
    """Per-round side work: evaluation (in a thread), metrics, checkpoints, progress line.

    Metric records are written in round order; a record whose evaluation is still running
    waits for it (evaluation is off the round's critical path, not skipped).

    Parameters
    ----------
    task : Task
        Evaluates parameters.
    config : PSConfig
        eval_every, checkpoint_every, rounds.
    rundir : RunDir or None
        Where metrics and checkpoints go (None: stdout only).
    out : TextIO
        Progress lines.
    wall_offset : float
        Wall seconds of earlier processes of this run (resume).
    """

    def __init__(
        self,
        task: Task,
        config: PSConfig,
        rundir: Any,
        out: TextIO,
        *,
        start_round: int = 0,
        wall_offset: float = 0.0,
    ) -> None:
        self.task = task
        self.config = config
        self.rundir = rundir
        self.out = out
        self.start_round = start_round
        self.wall_offset = wall_offset
        # The newest checkpoint written (a resumed run starts from one).
        self.saved_round = start_round
        self.t0 = time.perf_counter()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draco-eval")
        self.pending: deque[tuple[dict[str, Any], Future[dict[str, float]] | None]] = deque()
        self.last_eval: dict[str, float] = {}
        self.last_eval_round = -1
        self.first_round_started: float | None = None
        # The server's admission counters (refused / evicted / auth_failed / throttled /
        # handshake_timeouts ...), set by ``serve``; each record gets what changed since the
        # previous record, nonzero keys only, so a quiet run adds nothing to metrics.jsonl.
        self.counters: dict[str, int] | None = None
        self._counters_seen: dict[str, int] = {}
        # Cluster time (docs/cluster_time.md): the running sum over written records, and the
        # first evaluation at or above --target-accuracy (rounds, cluster s, wall s).
        self.cluster_total = 0.0
        self.to_target: dict[str, float] | None = None
        if rundir is not None and start_round > 0:
            for old in rundir.read_metrics():
                self._account(old)

    def admission_delta(self) -> dict[str, int]:
        """Admission counters that changed since the previous call (nonzero deltas only)."""
        if self.counters is None:
            return {}
        now = dict(self.counters)
        delta = {k: v - self._counters_seen.get(k, 0) for k, v in now.items()}
        self._counters_seen = now
        return {k: v for k, v in delta.items() if v and k != "admitted"}

    def _account(self, record: dict[str, Any]) -> None:
        self.cluster_total += float(record.get("cluster_seconds", 0.0) or 0.0)
        record["cluster_seconds_elapsed"] = self.cluster_total
        target = self.config.target_accuracy
        acc = record.get("test_accuracy")
        if target is not None and self.to_target is None and acc is not None and acc >= target:
            self.to_target = {
                "rounds": int(record.get("evaluated_after_rounds", record["round"] + 1)),
                "cluster_seconds": self.cluster_total,
                "wall_seconds": float(record.get("elapsed_seconds", math.nan)),
            }

    @property
    def wall_seconds(self) -> float:
        return self.wall_offset + (time.perf_counter() - self.t0)

    def round_done(self, record: dict[str, Any], engine: Any) -> None:
        admission = self.admission_delta()
        if admission:
            record["admission"] = admission
        done = engine.next_round
        every = self.config.eval_every
        fut = None
        if not record["failed"] and every and done % every == 0:
            fut = self.executor.submit(self.task.evaluate, engine.params)
            record["evaluated_after_rounds"] = done
        record["elapsed_seconds"] = self.wall_seconds
        self.pending.append((record, fut))
        self.flush(block=False)
        k = self.config.checkpoint_every
        if not record["failed"] and k and done % k == 0:
            self.save_checkpoint(engine)
        self._progress(record, engine)

    def save_checkpoint(self, engine: Any) -> None:
        """Checkpoint the completed rounds (metrics up to it are flushed first); no-op without
        a run directory or with checkpoints off, or if this round's checkpoint exists."""
        done = engine.next_round
        if self.rundir is None or not self.config.checkpoint_every or done == self.saved_round:
            return
        self.flush(block=True)  # metrics up to the checkpoint are on disk first
        params, opt, extra = engine.state()
        extra = {**extra, "wall_seconds": self.wall_seconds}
        self.rundir.save_checkpoint(done, params, opt, extra)
        self.saved_round = done

    def flush(self, *, block: bool) -> None:
        """Write the records whose evaluation (if any) finished, in order."""
        while self.pending:
            record, fut = self.pending[0]
            if fut is not None:
                if not block and not fut.done():
                    return
                metrics = fut.result()
                record.update(metrics)
                self.last_eval = dict(metrics)
                self.last_eval_round = int(record["evaluated_after_rounds"])
            self.pending.popleft()
            self._account(record)
            if self.rundir is not None:
                self.rundir.append_metrics(record)

    def _progress(self, record: dict[str, Any], engine: Any) -> None:
        from draco.rundir import format_progress

        done = engine.next_round
        now = time.perf_counter()
        if self.first_round_started is None:
            # Rate over the rounds only: waiting for the workers to join is not a round.
            self.first_round_started = now - float(record["wall_seconds"])
        elapsed = now - self.first_round_started
        rate = (done - self.start_round) / elapsed if elapsed > 0 else math.nan
        eta = (engine.rounds - done) / rate if rate and rate > 0 else math.nan
        line = format_progress(done, engine.rounds, rate, eta, self.last_eval.get("test_accuracy"))
        if "test_accuracy" not in self.last_eval and "test_loss" in self.last_eval:
            line += f"  loss {self.last_eval['test_loss']:.4g}"
        if record["failed"]:
            line += (
                f"  round {record['round']} FAILED after {record.get('attempts', 1)} "
                f"attempt(s): {record.get('error', '')}"
            )
        else:
            located = record["adversaries_located"]
            line += f"  liars located {located}" if located else "  liars located -"
            if record["erasures"]:
                line += f"  erasures {record['erasures']}"
            if record.get("attempts", 1) > 1:
                line += f"  ({record['attempts']} attempts)"
        print(line, file=self.out, flush=True)

    def close(self, engine: Any, *, final_eval: bool) -> dict[str, float]:
        """Finish pending evaluations and records; evaluate the final model if asked."""
        self.flush(block=True)
        self.executor.shutdown(wait=True)
        if final_eval and self.last_eval_round != engine.next_round:
            self.last_eval = dict(self.task.evaluate(engine.params))
            self.last_eval_round = engine.next_round
            target, acc = self.config.target_accuracy, self.last_eval.get("test_accuracy")
            if target is not None and self.to_target is None and acc is not None and acc >= target:
                self.to_target = {
                    "rounds": engine.next_round,
                    "cluster_seconds": self.cluster_total,
                    "wall_seconds": self.wall_seconds,
                }
        return self.last_eval

    def cluster_summary(self) -> dict[str, Any]:
        """summary.json's cluster-time keys (docs/cluster_time.md)."""
        hit = self.to_target
        return {
            "cluster_seconds_total": self.cluster_total,
            "link_gbps": self.config.link_gbps,
            "target_accuracy": self.config.target_accuracy,
            "rounds_to_target": None if hit is None else hit["rounds"],
            "cluster_seconds_to_target": None if hit is None else hit["cluster_seconds"],
            "wall_seconds_to_target": None if hit is None else hit["wall_seconds"],
        }


# ----------------------------------------------------------------------------- the run


def _read_saved_config(rundir: Any) -> PSConfig:
    raw = rundir.read_config()
    for key in _CONFIG_EXTRAS:
        raw.pop(key, None)
    return PSConfig.from_dict(raw)


def prepare(config: PSConfig) -> tuple[PSConfig, dict[str, Any]]:
    """Open the run directory (new or resumed); returns the effective config and state.

    The state dict holds: rundir, checkpoint (or None).
    """
    from draco.rundir import RunDir

    state: dict[str, Any] = {"rundir": None, "checkpoint": None}
    if config.run_dir is None:
        return config, state
    rundir = RunDir(config.run_dir, resume=config.resume)
    state["rundir"] = rundir
    if config.resume:
        config = config.with_run_of(_read_saved_config(rundir))
        state["checkpoint"] = rundir.latest_checkpoint()
    return config, state


async def serve(config: PSConfig, out: TextIO = sys.stdout) -> int:
    """Build everything from ``config`` and serve the run; returns the exit status."""
    from draco.core.codes import make_code
    from draco.net import auth
    from draco.net.rounds import DigestVoteConfig, RoundEngine
    from draco.net.server import ParameterServer

    if config.secret_file is None:
        raise ConfigError(
            "--secret-file is required; create one (and the workers' tokens) with: "
            f"{PROG} keys --secret-file ps.secret --workers {config.n_workers} "
            "--out tokens.txt --create-secret"
        )
    secret = auth.load_secret(config.secret_file)
    ssl_context = None
    if config.tls_cert is not None and config.tls_key is not None:
        ssl_context = auth.server_ssl_context(config.tls_cert, config.tls_key, config.tls_ca)
    config, state = prepare(config)
    rundir, ckpt = state["rundir"], state["checkpoint"]
    code = make_code(config.code, config.n_workers, config.n_adversaries, **config.code_options())
    if int(config.task.get("n_partitions", code.n_partitions)) != code.n_partitions:
        raise ConfigError(
            f"the task has {config.task['n_partitions']} partitions, the code "
            f"{code.n_partitions}: they must match"
        )
    # Loading a data set can take seconds: keep the loop free (signals still work). A
    # plug-in factory is allowed here because this process's own operator named it.
    allowed = [config.task["factory"]] if config.task.get("model") == CUSTOM_MODEL else []
    task = await asyncio.get_running_loop().run_in_executor(
        None, lambda: make_task(config.task, allowed=allowed)
    )
    if config.vote_rtol is not None:
        print(
            f"{PROG}: repetition code with the TOLERANCE vote (rtol {config.vote_rtol:g}): "
            "payloads that agree within rtol count as equal, for workers on devices that "
            "cannot give bit-identical gradients",
            file=out,
            flush=True,
        )
    attack = None
    if config.attack is not None:
        from draco.core.attacks import make_attack

        attack = make_attack(config.attack, **config.attack_options)
    engine = RoundEngine(
        code,
        task.initial_params(),
        # Batch-norm buffers in the task's state vector follow their own rule (draco.optim).
        SGD(config.sgd, task.dim, getattr(task, "running_stats", None)),
        rounds=config.rounds,
        seed=config.seed,
        attack=attack,
        schedule=config.adversary_schedule,
        max_failed_rounds=config.max_failed_rounds,
        link_gbps=config.link_gbps,
        vote=config.resolved_vote(exact=getattr(code, "rtol", None) is None),
        digest=DigestVoteConfig(
            digest_bytes=config.digest_bytes,
            max_payload_requests=config.max_payload_requests,
            payload_timeout=config.payload_timeout,
        ),
    )
    wall_offset = 0.0
    if rundir is not None:
        if config.resume:
            if ckpt is not None:
                engine.restore(ckpt.params, ckpt.optimizer_state, ckpt.extra)
                wall_offset = float(ckpt.extra.get("wall_seconds", 0.0))
            rundir.truncate_metrics(engine.next_round)
            print(
                f"{PROG}: resuming {config.run_dir} at round {engine.next_round}/{config.rounds}",
                file=out,
                flush=True,
            )
        else:
            rundir.write_config(
                {
                    **config.to_dict(),
                    "dim": task.dim,
                    "n_partitions": code.n_partitions,
                    "format": 1,
                }
            )
    recorder = RunRecorder(
        task, config, rundir, out, start_round=engine.next_round, wall_offset=wall_offset
    )
    server = ParameterServer(
        config,
        task_spec=task.spec(),
        code=code,
        engine=engine,
        secret=secret,
        hooks=recorder,
        ssl_context=ssl_context,
    )
    recorder.counters = server.admission.counters
    loop = asyncio.get_running_loop()
    for sig, status in _SIGNAL_EXIT.items():
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-POSIX loops
            loop.add_signal_handler(
                sig, server.request_stop, f"stopped by {signal.Signals(sig).name}", status
            )
    host, port = await server.start()
    print(
        f"{PROG}: listening on {host}:{port} for {config.n_workers} workers", file=out, flush=True
    )
    outcome = await server.serve()
    evals = await loop.run_in_executor(
        None, lambda: recorder.close(engine, final_eval=outcome.completed)
    )
    if outcome.completed:
        # The final model is kept too (e.g. 120 rounds with a checkpoint every 50): draco-experiment
        # compares attacked runs' final parameters with the clean run's.
        await loop.run_in_executor(None, recorder.save_checkpoint, engine)
    if not outcome.completed:
        print(f"{PROG}: error: {outcome.reason}", file=sys.stderr, flush=True)
        return outcome.exit_code
    summary = {
        "rounds": engine.next_round,
        "test_accuracy": evals.get("test_accuracy"),
        "test_loss": evals.get("test_loss"),
        **{k: v for k, v in evals.items() if k not in ("test_accuracy", "test_loss")},
        "model_sha256": model_sha256(engine.params),
        "wall_seconds": recorder.wall_seconds,
        "adversaries_located": engine.totals.adversaries_located,
        "failed_rounds": engine.totals.failed_rounds,
        "admission": {k: v for k, v in server.admission.counters.items() if v},
        "code": config.code,
        "task": config.task.get("factory", config.task.get("model")),
        "workers": config.n_workers,
        "adversaries": config.n_adversaries,
        "attack": config.attack,
        "aggregator": (config.aggregator or "mean") if config.code == "none" else None,
        "vote": None
        if config.code != "repetition"
        else ("tolerance" if config.vote_rtol is not None else engine.vote),
        "vote_rtol": config.vote_rtol,
        "aggregator_options": dict(config.aggregator_options),
        "attack_options": dict(config.attack_options),
        "seed": config.seed,
        **recorder.cluster_summary(),
    }
    if rundir is not None:
        rundir.write_summary(summary)
    print(json.dumps(summary, indent=2), file=out, flush=True)
    return outcome.exit_code


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
        from draco.net.server import run_with_loop

        return int(run_with_loop(lambda: serve(config), config.loop))
    except DracoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a signal before the loop installed its handlers
        return 130


if __name__ == "__main__":
    sys.exit(main())
