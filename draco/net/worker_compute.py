"""The worker's gradient job: one compute thread per process, its caches, one round's payload.

Gradients are computed one at a time in ONE compute thread for the whole process (torch uses
one thread per process, and the event loop stays responsive for the other connections). The
logical workers of a process share partition gradients through a per-round cache: in the
repetition code every member of a group computes the same partitions, and the computation is
deterministic, so computing partition k once per (round, params) gives every holder the bit
identical gradient it would have computed itself. ``compute_seconds`` still reports what the
worker's own partitions cost, cached or not, so the metrics keep the code's real load.

``setup_from_welcome`` turns the PS's Welcome into a ``RoundSetup`` (code, task, attack);
``round_payload`` computes one round's payload. The connection loop that calls them is
``draco.net.worker``; the digest vote's side, ``draco.net.worker_digest``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from draco.core.attacks import make_attack
from draco.core.codes import make_code
from draco.core.decoding import bitwise_equal
from draco.core.digests import DEFAULT_DIGEST_BYTES, check_digest_bytes, payload_digest
from draco.errors import ConfigError, RemoteProtocolError
from draco.net import messages as m
from draco.tasks.contract import Task
from draco.tasks.plugins import TaskOptionLimits
from draco.tasks.registry import make_task

__all__ = ["Compute", "RoundSetup", "check_vote", "round_payload", "setup_from_welcome"]

log = logging.getLogger("draco.worker")


class Compute:
    """The process's single compute thread, its task cache and its partition-gradient cache.

    Everything that touches a task runs in the one thread, so the caches need no locks.
    """

    def __init__(
        self,
        share_gradients: bool,
        *,
        allowed_tasks: frozenset[str] = frozenset(),
        device: str = "cpu",
        option_limits: TaskOptionLimits | None = None,
    ) -> None:
        # The operator's task policy (``WorkerOptions``: allowlist, device, option limits);
        # the defaults are built-in tasks only, on the CPU.
        self.allowed_tasks = allowed_tasks
        self.device = device
        self.option_limits = option_limits if option_limits is not None else TaskOptionLimits()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="draco-compute"
        )
        self.share = share_gradients
        self._tasks: dict[str, Task] = {}
        # (task key, flip_labels) -> (round, params, {partition: (gradient row, seconds)})
        self._grads: dict[tuple[str, bool], tuple[int, np.ndarray, dict[int, Any]]] = {}
        # Digest vote: (digest key, size) -> [(payload, digest)] for the newest key only. The
        # members of a group in this process send bit-identical payloads: one hash, then a
        # byte comparison (~5x cheaper) for each of the others.
        self._digests: dict[tuple[bytes, int], list[tuple[np.ndarray, bytes]]] = {}

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def task(self, spec: dict[str, Any]) -> tuple[str, Task]:
        # Runs in the compute thread: loading a data set must not stall the event loop.
        key = json.dumps(spec, sort_keys=True)
        if key not in self._tasks:
            self._tasks[key] = make_task(
                spec,
                allowed=self.allowed_tasks,
                device=self.device,
                option_limits=self.option_limits,
            )
        return key, self._tasks[key]

    def gradients(
        self,
        key: str,
        params: np.ndarray,
        round_index: int,
        partitions: Sequence[int],
        flip_labels: bool,
    ) -> tuple[np.ndarray, float]:
        """Rows for ``partitions`` ((r, d) float32) and the CPU seconds they cost to compute."""
        task = self._tasks[key]
        # Thread CPU time, not wall time: many workers sharing a few cores must not inflate
        # it (this runs in the one compute thread; torch computes on it with one thread).
        if not self.share:
            t0 = time.thread_time()
            g = task.partition_gradients(params, round_index, partitions, flip_labels=flip_labels)
            return g, time.thread_time() - t0
        slot = self._grads.get((key, flip_labels))
        # Reuse only for the very same round AND parameters: a worker that rejoined late may be
        # on another round than its neighbours in this process.
        if slot is None or slot[0] != round_index or not np.array_equal(slot[1], params):
            slot = (round_index, params.copy(), {})
            self._grads[(key, flip_labels)] = slot
        done = slot[2]
        todo = [k for k in partitions if k not in done]
        if todo:
            t0 = time.thread_time()
            g = task.partition_gradients(params, round_index, todo, flip_labels=flip_labels)
            per = (time.thread_time() - t0) / len(todo)
            for row, k in enumerate(todo):
                done[k] = (g[row], per)
        rows = np.stack([done[k][0] for k in partitions]).astype(np.float32, copy=False)
        return rows, float(sum(done[k][1] for k in partitions))

    def digest(self, payload: np.ndarray, key: bytes, size: int) -> bytes:
        """``payload_digest(payload, key, size)``, shared between equal payloads of a round."""
        payload = np.ascontiguousarray(payload)  # bitwise_equal compares memory
        slot = (bytes(key), int(size))
        if slot not in self._digests:
            self._digests = {slot: []}  # a new round's key: the old digests are useless
        seen = self._digests[slot]
        for other, digest in seen:
            if bitwise_equal(other, payload):
                return digest
        digest = payload_digest(payload, key, size)
        seen.append((payload, digest))
        return digest

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class RoundSetup:
    """What a Welcome sets up for a session's rounds (``setup_from_welcome``)."""

    code: Any  # the run's code (``make_code``), as the PS built it
    partitions: tuple[int, ...]  # this worker's partitions, in encoding order
    key: str  # the task's key in ``Compute``'s caches
    task: Task
    n: int  # workers of the run
    s: int  # liars the code tolerates
    seed: int  # the run's seed (seeds a persistent liar's attack)
    persistent: Any  # the persistent liar's attack (``WorkerOptions.attack``) or None
    attack_options: dict[str, Any] = field(default_factory=dict)  # the PS's attack options
    digest_bytes: int = DEFAULT_DIGEST_BYTES  # digest vote: digest length


async def setup_from_welcome(
    compute: Compute, worker_id: int, config: dict[str, Any], attack: str | None, device: str
) -> RoundSetup:
    """The code, partitions and task the PS's Welcome ``config`` names, checked.

    RemoteProtocolError for a malformed config or partitions the code does not give this
    worker; ConfigError for what this worker's operator must fix (a task dimension that
    differs, a device the PS's vote cannot use). ``attack``: the persistent liar's attack
    (``WorkerOptions.attack``). The task is built in the compute thread.
    """
    try:
        n, s = int(config["n_workers"]), int(config["n_adversaries"])
        code = make_code(str(config["code"]), n, s, **dict(config.get("code_options") or {}))
        partitions = tuple(int(k) for k in config["partitions"])
        spec = dict(config["task"])
        seed = int(config.get("seed", 0))
        attack_options = dict(config.get("attack_options") or {})
        digest_bytes = check_digest_bytes(
            int(config.get("digest_bytes", DEFAULT_DIGEST_BYTES)), "Welcome digest_bytes"
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"worker {worker_id}: malformed Welcome config: {exc}") from exc
    check_vote(worker_id, device, code)
    if tuple(code.partitions_of(worker_id)) != partitions:
        raise RemoteProtocolError(
            f"worker {worker_id}: the PS assigned partitions {partitions} but the code "
            f"{code.name!r} gives {tuple(code.partitions_of(worker_id))}"
        )
    key, task = await compute.run(compute.task, spec)
    if "dim" in config and int(config["dim"]) != task.dim:
        raise ConfigError(
            f"worker {worker_id}: the task has {task.dim} parameters, the PS expects "
            f"{config['dim']} (different package versions?)"
        )
    persistent = make_attack(attack) if attack else None
    return RoundSetup(
        code, partitions, key, task, n, s, seed, persistent, attack_options, digest_bytes
    )


def check_vote(worker_id: int, device: str, code: Any) -> None:
    """A non-CPU device needs the tolerance vote (see draco.tasks.torch.device)."""
    if device == "cpu":
        return
    if code.name == "repetition" and getattr(code, "rtol", None) is None:
        raise ConfigError(
            f"worker {worker_id}: --device {device} cannot give bit-identical gradients "
            "across workers, and the PS runs the repetition code's exact vote: restart "
            "draco-ps with --vote tolerance, or run this worker with --device cpu"
        )
    if code.name == "cyclic":
        log.warning(
            "worker %d: --device %s with the cyclic code: its decoder refuses a round "
            "whose honest payloads disagree beyond its measured noise floor",
            worker_id,
            device,
        )


async def round_payload(
    compute: Compute, setup: RoundSetup, worker_id: int, msg: m.RoundStart
) -> tuple[np.ndarray, float]:
    """One round's job: the payload, shape (d,) of the code's payload dtype, and the CPU
    seconds its gradients cost.

    1. The attack: the round's (``msg.attack``, seeded by the PS) or the persistent one
       (seeded by (seed, round, worker id)), if any.
    2. Gradients of the worker's partitions in the compute thread, (r, d) float32 (labels
       flipped for a data attack).
    3. ``code.encode``; then a payload attack's lie (an omniscient one is ignored: the PS
       simulates those).
    """
    attack = setup.persistent
    attack_seed: Any = [setup.seed, msg.round_index, worker_id]
    if msg.attack is not None:
        attack = make_attack(msg.attack, **setup.attack_options)
        attack_seed = msg.attack_seed
    flip = attack is not None and attack.data_attack
    params = np.asarray(msg.params, dtype=np.float32)
    grads, seconds = await compute.run(
        compute.gradients, setup.key, params, msg.round_index, setup.partitions, flip
    )
    payload = setup.code.encode(worker_id, grads)
    if attack is not None and not attack.data_attack:
        if attack.omniscient:
            # Omniscient attacks are simulated at the PS; a worker cannot see the others.
            log.warning("worker %d: ignoring omniscient attack %s", worker_id, attack.name)
        else:
            payload = attack.apply(
                payload,
                rng=np.random.default_rng(attack_seed),
                n_workers=setup.n,
                n_adversaries=setup.s,
            )
    return payload, seconds
