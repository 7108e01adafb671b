"""The parameter server's library entry point: ``run(config) -> RunResult``.

1. Open the run directory (new, or resumed from its newest checkpoint).
2. Build the code, the task (in a thread: loading data takes seconds), the attack and the
   round engine (``draco.ps.engine``) with its optimizer (``draco.ps.optim``).
3. Serve the rounds with ``draco.net.server.ParameterServer``; each round's record goes to
   the ``RunRecorder`` (evaluation, metrics.jsonl, checkpoints, progress line).
4. On completion: the final evaluation and checkpoint, then ``summary.json``.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from draco.errors import ConfigError
from draco.net.eventloop import exit_status, on_stop_signals, run_with_loop
from draco.ps.config import PSConfig
from draco.ps.optim import SGD
from draco.ps.recorder import RunRecorder, model_sha256
from draco.ps.rundir import Checkpoint, RunDir
from draco.tasks.contract import CUSTOM_MODEL, Task
from draco.tasks.registry import make_task

if TYPE_CHECKING:
    from draco.core.codes import Code
    from draco.ps.engine import RoundEngine

__all__ = ["RunResult", "RunState", "prepare", "run", "serve"]

PROG = "draco-ps"  # the voice of the PS's notices on ``out``
# config.json keys that are not PSConfig fields (informational).
_CONFIG_EXTRAS = ("dim", "n_partitions", "format")


@dataclass(frozen=True)
class RunResult:
    """How a run ended: ``exit_code`` 0 only for a completed run (then ``summary`` is set).

    ``exit_code``: 0 completed, 1 failed (too many failed rounds, no worker joined),
    3 diverged (the model went NaN/Inf: ``summary`` is set, with ``status`` "diverged"),
    130 / 143 stopped by SIGINT / SIGTERM. ``reason``: why, in words.
    """

    exit_code: int
    reason: str
    summary: dict[str, Any] | None

    @property
    def completed(self) -> bool:
        return self.exit_code == 0 and self.summary is not None


def _read_saved_config(rundir: RunDir) -> PSConfig:
    raw = rundir.read_config()
    for key in _CONFIG_EXTRAS:
        raw.pop(key, None)
    return PSConfig.from_dict(raw)


@dataclass(frozen=True)
class RunState:
    """Where a run starts: its run directory (None: none) and the checkpoint to resume."""

    rundir: RunDir | None = None
    checkpoint: Checkpoint | None = None


def prepare(config: PSConfig) -> tuple[PSConfig, RunState]:
    """Open the run directory (new or resumed); returns the effective config and state."""
    if config.run_dir is None:
        return config, RunState()
    rundir = RunDir(config.run_dir, resume=config.resume)
    if not config.resume:
        return config, RunState(rundir)
    summary = rundir.read_summary()
    if summary is not None and summary.get("status") == "diverged":
        raise ConfigError(
            f"{config.run_dir} ended with a diverged model at round {summary.get('rounds')} "
            f"({summary.get('diverged', 'NaN/Inf')}); resuming would retrace the same steps: "
            "start a new run instead"
        )
    config = config.with_run_of(_read_saved_config(rundir))
    return config, RunState(rundir, rundir.latest_checkpoint())


def _credentials(config: PSConfig) -> tuple[bytes, ssl.SSLContext | None]:
    """The cluster secret and, with ``--tls-cert/--tls-key``, the server's TLS context."""
    from draco.net import auth

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
    return secret, ssl_context


def _make_code(config: PSConfig) -> Code:
    from draco.core.codes import make_code

    code = make_code(config.code, config.n_workers, config.n_adversaries, **config.code_options())
    if int(config.task.get("n_partitions", code.n_partitions)) != code.n_partitions:
        raise ConfigError(
            f"the task has {config.task['n_partitions']} partitions, the code "
            f"{code.n_partitions}: they must match"
        )
    return code


def _make_engine(config: PSConfig, code: Code, task: Task) -> RoundEngine:
    """The round engine: the code, the task's initial state, the optimizer, the attack."""
    from draco.ps.digest_vote import DigestVoteConfig
    from draco.ps.engine import RoundEngine

    attack = None
    if config.attack is not None:
        from draco.core.attacks import make_attack

        attack = make_attack(config.attack, **config.attack_options)
    return RoundEngine(
        code,
        task.initial_params(),
        # Batch-norm buffers in the task's state vector follow their own rule (draco.ps.optim).
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


def _open_or_resume(
    config: PSConfig, state: RunState, engine: RoundEngine, task: Task, out: TextIO
) -> float:
    """A new run writes config.json; a resumed one restores its checkpoint and cuts its
    metrics there. Returns the wall seconds of earlier processes of the run."""
    rundir, ckpt = state.rundir, state.checkpoint
    if rundir is None:
        return 0.0
    if not config.resume:
        rundir.write_config(
            {
                **config.to_dict(),
                "dim": task.dim,
                "n_partitions": engine.code.n_partitions,
                "format": 1,
            }
        )
        return 0.0
    wall_offset = 0.0
    if ckpt is not None:
        engine.restore(ckpt.params, ckpt.optimizer_state, ckpt.extra)
        wall_offset = float(ckpt.extra.get("wall_seconds", 0.0))
    rundir.truncate_metrics(engine.next_round)
    print(
        f"{PROG}: resuming {config.run_dir} at round {engine.next_round}/{config.rounds}",
        file=out,
        flush=True,
    )
    return wall_offset


def _summary(
    config: PSConfig,
    engine: RoundEngine,
    recorder: RunRecorder,
    evals: dict[str, float],
    admission: dict[str, int],
) -> dict[str, Any]:
    """summary.json of a completed run (``status`` "completed") or a diverged one."""
    return {
        "status": "diverged" if engine.diverged else "completed",
        "rounds": engine.next_round,
        "test_accuracy": evals.get("test_accuracy"),
        "test_loss": evals.get("test_loss"),
        **{k: v for k, v in evals.items() if k not in ("test_accuracy", "test_loss")},
        "model_sha256": model_sha256(engine.params),
        "wall_seconds": recorder.wall_seconds,
        "adversaries_located": engine.totals.adversaries_located,
        "failed_rounds": engine.totals.failed_rounds,
        "admission": {k: v for k, v in admission.items() if v},
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
        **({"diverged": engine.diverged} if engine.diverged else {}),
    }


async def serve(config: PSConfig, out: TextIO = sys.stdout) -> RunResult:
    """Build everything from ``config`` and serve the run (on the running event loop).

    Progress lines and the PS's notices go to ``out``; the summary is returned (and written
    to the run directory), not printed. Steps 1-4 of the module docstring.
    """
    from draco.net.server import ParameterServer

    loop = asyncio.get_running_loop()
    # Step 1: credentials, the run directory (new or resumed), the code.
    secret, ssl_context = _credentials(config)
    config, state = prepare(config)
    code = _make_code(config)
    # Step 2: the task (loading a data set can take seconds: off the loop, signals still
    # work; a plug-in factory is allowed because this process's own operator named it).
    allowed = [config.task["factory"]] if config.task.get("model") == CUSTOM_MODEL else []
    task = await loop.run_in_executor(None, lambda: make_task(config.task, allowed=allowed))
    if config.vote_rtol is not None:
        print(
            f"{PROG}: repetition code with the TOLERANCE vote (rtol {config.vote_rtol:g}): "
            "payloads that agree within rtol count as equal, for workers on devices that "
            "cannot give bit-identical gradients",
            file=out,
            flush=True,
        )
    engine = _make_engine(config, code, task)
    wall_offset = _open_or_resume(config, state, engine, task, out)
    recorder = RunRecorder(
        task, config, state.rundir, out, start_round=engine.next_round, wall_offset=wall_offset
    )
    # Step 3: serve the rounds; every record goes to the recorder.
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
    on_stop_signals(lambda sig: server.request_stop(f"stopped by {sig.name}", exit_status(sig)))
    host, port = await server.start()
    print(
        f"{PROG}: listening on {host}:{port} for {config.n_workers} workers", file=out, flush=True
    )
    outcome = await server.serve()
    # Step 4: the last evaluation and checkpoint (draco-experiment compares final models),
    # then the summary.
    evals = await loop.run_in_executor(
        None, lambda: recorder.close(engine, final_eval=outcome.completed)
    )
    if not (outcome.completed or outcome.diverged):
        return RunResult(outcome.exit_code, outcome.reason, None)
    # A diverged run is a final outcome too (draco-experiment does not rerun it), with no
    # checkpoint: resuming would retrace the same steps (``prepare`` refuses it).
    if outcome.completed:
        await loop.run_in_executor(None, recorder.save_checkpoint, engine)
    summary = _summary(config, engine, recorder, evals, server.admission.counters)
    if state.rundir is not None:
        state.rundir.write_summary(summary)
    return RunResult(outcome.exit_code, outcome.reason, summary)


def run(config: PSConfig, out: TextIO = sys.stdout) -> RunResult:
    """Serve the run of ``config`` to its end on a new event loop (``config.loop``).

    The library entry point: ``draco-ps`` is argument parsing around this call. SIGINT and
    SIGTERM stop the run cleanly (exit code 130 / 143 in the result).
    """
    return run_with_loop(lambda: serve(config, out), config.loop)
