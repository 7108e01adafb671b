"""``draco-bench net --vote full|digest``: whole PS rounds, full-payload vs digest-first vote.

    draco-bench net --vote digest --workers 45 --adversaries 5 --dim 1033510 --rounds 6
    draco-bench net --vote full   --workers 45 --adversaries 5 --dim 1033510 --link 1gbit

The parameter server is the real one (``ParameterServer``, repetition code, uvloop), the
workers are P logical workers in ONE separate process that answer every ``RoundStart`` at
once with a fixed payload per group (no gradient computation: only the protocol is timed).
In digest mode a worker process computes the keyed digest once per group and round (the
bytes and the key are the same for every member): on a cluster every worker hashes its own
payload in parallel, so one hash is on a round's critical path, not P of them. The cost of
that hash is reported apart (``hash_seconds``).

``--link RATE`` (e.g. ``1gbit``; Linux, root) runs the worker process in its own network
namespace, joined to the PS by a veth pair whose worker side is shaped by a token bucket
(``tc qdisc ... tbf rate RATE``): the PS's INGRESS is limited to RATE. ``--link-both`` also
shapes the PS's egress (the parameter broadcast, the same P x d x 4 bytes in both modes).

Output: one JSON object per run, with per round (after ``--warmup`` rounds): ``bytes_in``
(read from the workers' sockets, answers that came after an early close included) and its
ratio to P x d x 4 (``ingress_ratio``), ``bytes_used`` (the record's: what the round used),
the PS's wall time per round (``round_seconds``: broadcast until the model is updated), its
CPU time (``ps_cpu_seconds``), the answers phase (``answers_seconds``: broadcast until
every payload, or every group's deciding digests, are in) and the fetch phase
(``fetch_seconds``, the extra request/response trip after it). Medians and [min, max] are
given; the machine's load average (``/proc/loadavg``) is recorded before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from draco.errors import ConfigError

SECRET = bytes(range(32))  # a benchmark's own cluster secret (never a real one)


# ----------------------------------------------------------------------------- workers


def _group_payloads(n: int, s: int, dim: int) -> tuple[list[int], list[np.ndarray]]:
    from draco.core.codes import RepetitionCode

    code = RepetitionCode(n, s)
    group_of = [0] * n
    for g, members in enumerate(code.groups):
        for j in members:
            group_of[j] = g
    rng = np.random.default_rng(0)
    return group_of, [rng.standard_normal(dim).astype(np.float32) for _ in code.groups]


async def _workers_async(host: str, port: int, n: int, s: int, dim: int) -> None:
    from draco.core.digests import payload_digest
    from draco.net import auth
    from draco.net import messages as m
    from draco.net.frames import PROTOCOL_VERSION, Limits
    from draco.net.protocol import Connection, Role
    from draco.net.server_state import retain_freed_memory
    from draco.net.worker_client import ClientProtocol

    # This one process stands for P hosts and receives P parameter vectors per round: keep
    # their freed buffers mapped so each round does not page-fault P x d x 4 fresh bytes
    # (the PS does the same for its payloads; d x 4 may exceed glibc's default threshold).
    retain_freed_memory(max_chunk=max(32 << 20, dim * 4 + (1 << 20)), keep=4 << 30)
    loop = asyncio.get_running_loop()
    group_of, payloads = _group_payloads(n, s, dim)
    # (key, group) -> the digest being computed: once per group and round, shared.
    digests: dict[tuple[bytes, int], asyncio.Future[bytes]] = {}
    hash_seconds: list[float] = []

    async def timed_digest(y: np.ndarray, key: bytes, size: int) -> bytes:
        t0 = time.perf_counter()
        digest = await loop.run_in_executor(None, payload_digest, y, key, size)
        hash_seconds.append(time.perf_counter() - t0)
        return digest

    async def one(j: int) -> None:
        limits = Limits(max_tensor_bytes=dim * 4, max_tensors=1, max_ndim=1)
        proto = ClientProtocol(Connection(Role.CLIENT, limits))
        await loop.create_connection(lambda: proto, host, port)
        await proto.send(m.Hello(protocol_version=PROTOCOL_VERSION, worker_id=j))
        ch = await proto.next()
        assert isinstance(ch, m.Challenge)
        token = auth.derive_token(SECRET, j)
        await proto.send(m.Auth(mac=auth.handshake_mac(token, ch.nonce, j)))
        welcome = await proto.next()
        assert isinstance(welcome, m.Welcome), welcome
        size = int(welcome.config["digest_bytes"])
        y = payloads[group_of[j]]
        while True:
            try:
                msg = await proto.next()
            except Exception:
                return
            if isinstance(msg, m.Bye | m.Error):
                return
            if isinstance(msg, m.PayloadRequest):
                await proto.send(
                    m.Payload(round_index=msg.round_index, attempt=msg.attempt, payload=y)
                )
            elif isinstance(msg, m.RoundStart) and msg.digest_key:
                k = (msg.digest_key, group_of[j])
                if k not in digests:
                    digests[k] = asyncio.ensure_future(timed_digest(y, msg.digest_key, size))
                await proto.send(
                    m.Digest(
                        round_index=msg.round_index,
                        attempt=msg.attempt,
                        digest=await digests[k],
                        compute_seconds=0.0,
                    )
                )
            elif isinstance(msg, m.RoundStart):
                await proto.send(
                    m.Gradient(
                        round_index=msg.round_index,
                        payload=y,
                        compute_seconds=0.0,
                        attempt=msg.attempt,
                    )
                )

    await asyncio.gather(*(one(j) for j in range(n)))
    print(json.dumps({"hash_seconds": hash_seconds}), flush=True)


def worker_main(argv: list[str]) -> None:
    """Entry of the worker process: ``host port n s dim``."""
    host, port, n, s, dim = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    from draco.net.eventloop import run_with_loop

    run_with_loop(lambda: _workers_async(host, port, n, s, dim), "uvloop")


# ----------------------------------------------------------------------------- namespaces


@contextlib.contextmanager
def shaped_namespace(rate: str, both: bool) -> Iterator[tuple[str, str]]:
    """A network namespace joined by a veth pair, the worker side shaped to ``rate``.

    Yields (namespace, PS address seen from it). ConfigError where it cannot be made.
    """
    if sys.platform != "linux" or shutil.which("ip") is None or shutil.which("tc") is None:
        raise ConfigError("--link needs Linux with the ip and tc commands (iproute2)")
    if os.geteuid() != 0:
        raise ConfigError("--link needs root (it creates a network namespace)")
    name = f"draco-bench-{uuid.uuid4().hex[:8]}"
    host_if, ns_if = f"dbh{name[-6:]}", f"dbn{name[-6:]}"

    def run(*argv: str) -> None:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise ConfigError(f"cannot set up the shaped link: {' '.join(argv)}: {r.stderr}")

    # The burst must hold at least one MTU-sized packet per timer tick; 1 MB keeps the
    # token bucket from being the bottleneck below RATE at 1 Gb/s (tc-tbf(8)).
    shape = ["tbf", "rate", rate, "burst", "1mb", "latency", "50ms"]
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("ip", "link", "set", ns_if, "netns", name)
        run("ip", "addr", "add", "10.202.0.1/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "-n", name, "addr", "add", "10.202.0.2/30", "dev", ns_if)
        run("ip", "-n", name, "link", "set", ns_if, "up")
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", ns_if, "root", *shape)
        if both:
            run("tc", "qdisc", "add", "dev", host_if, "root", *shape)
        yield name, "10.202.0.1"
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


# ----------------------------------------------------------------------------- the PS


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def _serve(args: argparse.Namespace, host: str, netns: str | None) -> dict[str, Any]:
    from draco.core.codes import make_code
    from draco.net.server import ParameterServer
    from draco.ps.config import PSConfig, ServerLimits
    from draco.ps.engine import RoundEngine
    from draco.ps.optim import SGD, SGDConfig
    from draco.ps.record import RoundRecord

    n, s, dim = args.workers, args.adversaries, args.dim
    code = make_code("repetition", n, s)
    records: list[dict[str, Any]] = []
    wire = [0]  # bytes read from the workers' sockets so far

    class Hooks:
        def round_done(self, record: RoundRecord, engine: Any) -> None:
            # The record's bytes_in counts what the round used; the link also carried the
            # answers that came after an early close (read during the next round): count
            # the sockets' bytes instead, the PS's real ingress.
            total = sum(p.conn.bytes_received for p in server.seats.values())
            line = record.metrics()
            line["wire_bytes_in"], wire[0] = total - wire[0], total
            records.append(line)

    config = PSConfig(
        n_workers=n,
        n_adversaries=s,
        rounds=args.rounds,
        host=host,
        port=0,
        task={"model": "bench", "dim": dim},
        round_timeout=600.0,
        join_timeout=120.0,
        vote=args.vote,
        payload_timeout=600.0,
        # All P workers connect from one process at once: room for all their handshakes.
        limits=ServerLimits(max_pending_per_source=max(16, n), max_pending_handshakes=max(256, n)),
    )
    engine = RoundEngine(
        code,
        np.zeros(dim, np.float32),
        SGD(SGDConfig(lr=1e-6), dim),  # fixed payloads: the model only has to move
        rounds=args.rounds,
        vote=args.vote,
    )
    server = ParameterServer(
        config, task_spec=config.task, code=code, engine=engine, secret=SECRET, hooks=Hooks()
    )
    _, port = await server.start()
    argv = [
        sys.executable,
        "-c",
        "import sys; from draco.bench.vote import worker_main; worker_main(sys.argv[1:])",
        host,
        str(port),
        str(n),
        str(s),
        str(dim),
    ]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    try:
        outcome = await server.serve()
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
    if not outcome.completed:
        raise ConfigError(f"the benchmark run failed: {outcome.reason}")
    worker = json.loads(out.decode().strip().splitlines()[-1])
    return {"records": records, "hash_seconds": worker["hash_seconds"]}


def _stats(values: list[float], digits: int = 6) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "values": [round(v, digits) for v in values],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``--rounds`` rounds; figures over the rounds after ``--warmup``."""
    if args.workers < 2 * args.adversaries + 1 or args.dim < 1:
        raise ConfigError("--workers must be >= 2 * --adversaries + 1 and --dim >= 1")
    if args.rounds <= args.warmup:
        raise ConfigError("--rounds must be larger than --warmup")
    from draco.net.eventloop import run_with_loop

    load_before = _load()
    if args.link:
        with shaped_namespace(args.link, args.link_both) as (netns, host):
            got = run_with_loop(lambda: _serve(args, host, netns), "uvloop")
    else:
        got = run_with_loop(lambda: _serve(args, "127.0.0.1", None), "uvloop")
    recs = got["records"][args.warmup :]
    full_bytes = args.workers * args.dim * 4
    hashes = got["hash_seconds"]
    return {
        "benchmark": "net-rounds",
        "vote": args.vote,
        "workers": args.workers,
        "adversaries": args.adversaries,
        "dim": args.dim,
        "link": args.link or "loopback",
        "link_shapes": ("ingress+egress" if args.link_both else "ingress") if args.link else None,
        "rounds_measured": len(recs),
        "ingress_ratio": _stats([r["wire_bytes_in"] / full_bytes for r in recs], 5),
        "bytes_in": _stats([float(r["wire_bytes_in"]) for r in recs], 0),
        "bytes_used": _stats([float(r["bytes_in"]) for r in recs], 0),
        "round_seconds": _stats([r["wall_seconds"] for r in recs]),
        "ps_cpu_seconds": _stats([r["ps_cpu_seconds"] for r in recs]),
        "fetch_seconds": _stats([r.get("fetch_seconds", 0.0) for r in recs]),
        # Broadcast until the answers phase closed (the full vote: every payload in; the
        # digest vote: every group decided), i.e. the round's wait without the fetch phase.
        "answers_seconds": _stats([r["wait_seconds"] - r.get("fetch_seconds", 0.0) for r in recs]),
        "decode_update_seconds": _stats([r["decode_seconds"] + r["update_seconds"] for r in recs]),
        "payload_requests": [r["payload_requests"] for r in recs],
        "hash_seconds": _stats(hashes) if hashes else None,
        "load_before": load_before,
        "load_after": _load(),
    }


def run(args: argparse.Namespace) -> int:
    print(json.dumps(measure(args)))
    return 0
