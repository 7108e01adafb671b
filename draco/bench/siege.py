"""``draco-bench siege``: rounds per second of an honest run alone and under an idle flood.

    draco-bench siege --floods 64 1000 --repeats 3 --json

Each measurement is a real run: ``draco-ps`` and one ``draco-worker`` process with all
``--workers`` logical workers on 127.0.0.1 (the least-squares task, no liars, no
evaluation). Under a flood, a child process holds N idle TCP connections to the PS from the
same source address (127.0.0.1), opened before the workers join and held to the end; a
connection the PS drops is replaced after ``--flood-pause`` seconds (a slowloris; 0 =
hammering). The rate is ``rounds / sum(wall_seconds)`` over the run's metrics records after
``--warmup`` rounds (joining excluded). The PS's RSS (MB) and open fds are sampled every
0.2 s (max reported), and the CPU seconds of the PS and of the flood process over the run
(the flood runs on the same machine: on few cores its own CPU competes with the run).

Output (one JSON object): per configuration (``alone``, ``flood_64``, ...) the median, min and
max rounds/s over ``--repeats`` runs (alternating alone / flooded, so drift in the machine's
load hits all alike), ``ratio`` = median flooded / median alone (goal >= 0.8), max RSS and fds,
plus the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from draco.errors import ConfigError
from draco.net.auth import issue_tokens, write_secret, write_token_file
from draco.ps.rundir import read_metrics

# ----------------------------------------------------------------------------- the flood


def _flood_child(host: str, port: int, count: int, pause: float, ready: Any, stop: Any) -> None:
    """Child process: hold ``count`` idle connections until ``stop`` is set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))

    async def hold(halt: asyncio.Event) -> None:
        while not halt.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(max(pause, 0.01))
                continue
            read = asyncio.ensure_future(reader.read(1 << 16))
            wake = asyncio.ensure_future(halt.wait())
            with contextlib.suppress(OSError):
                await asyncio.wait([read, wake], return_when=asyncio.FIRST_COMPLETED)
            read.cancel()
            wake.cancel()
            writer.transport.abort()
            if pause:
                await asyncio.sleep(pause)

    async def main() -> None:
        halt = asyncio.Event()
        tasks = [asyncio.ensure_future(hold(halt)) for _ in range(count)]
        await asyncio.sleep(1.0)  # the flood is in place before the workers start
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        halt.set()
        await asyncio.wait(tasks, timeout=10)

    asyncio.run(main())


# ----------------------------------------------------------------------------- one run


def _cmd(name: str, *args: Any) -> list[str]:
    return [sys.executable, "-m", f"draco.cli.{name}", *map(str, args)]


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class _Sampler:
    """Every 0.2 s in a thread: the PS's RSS (MB) and open fds, and the CPU seconds of the PS
    and of the flood process so far (their maxima are what the run reports)."""

    def __init__(self, ps_pid: int, flood_pid: int | None) -> None:
        self.samples: list[tuple[float, int]] = []
        self.cpu = {"ps": 0.0, "flood": 0.0}
        self._pids = (ps_pid, flood_pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()

    def _loop(self) -> None:
        ps_pid, flood_pid = self._pids
        while not self._done.wait(0.2):
            self.samples.append((_rss_mb(ps_pid), _fds(ps_pid)))
            self.cpu["ps"] = max(self.cpu["ps"], _cpu_seconds(ps_pid))
            if flood_pid is not None:
                self.cpu["flood"] = max(self.cpu["flood"], _cpu_seconds(flood_pid))


def _start_ps(
    args: argparse.Namespace, folder: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], Path]:
    """Credentials in ``folder``, then ``draco-ps`` on any free port; (process, tokens)."""
    folder.mkdir(parents=True)
    secret, tokens = folder / "secret", folder / "tokens"
    write_token_file(tokens, issue_tokens(write_secret(secret), range(args.workers)))
    ready, run_dir = folder / "ready.json", folder / "run"
    ps = subprocess.Popen(
        _cmd(
            "ps", "--port", 0, "--ready-file", ready, "--secret-file", secret, "--run-dir",
            run_dir, "--workers", args.workers, "--adversaries", args.adversaries, "--rounds",
            args.rounds, "--model", "lstsq", "--lstsq-dim", args.dim, "--batch-size", 8,
            "--eval-every", 0, "--checkpoint-every", 0, "--join-timeout", 120,
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    return ps, tokens


def _ps_port(ps: subprocess.Popen[str], ready: Path) -> int:
    """The PS's port from its ready file; ConfigError if it died or took over 60 s."""
    deadline = time.monotonic() + 60
    while not ready.exists():
        if ps.poll() is not None or time.monotonic() > deadline:
            err = ps.stderr.read() if ps.stderr else ""
            raise ConfigError(f"draco-ps did not start: {err}")
        time.sleep(0.05)
    return int(json.loads(ready.read_text())["port"])


def _start_flood(args: argparse.Namespace, port: int, flood: int, stop: Any) -> Any:
    """The flood's child process, once it holds its ``flood`` connections."""
    spawn = mp.get_context("spawn")
    flooded = spawn.Event()
    child = spawn.Process(
        target=_flood_child,
        args=("127.0.0.1", port, flood, args.flood_pause, flooded, stop),
        daemon=True,
    )
    child.start()
    if not flooded.wait(60):
        raise ConfigError("the flood did not start")
    return child


def one_run(args: argparse.Namespace, folder: Path, flood: int) -> dict[str, Any]:
    """One honest run, optionally under a flood of ``flood`` idle connections.

    1. Start the PS (``_start_ps``), wait for its port; 2. start the flood, if any, and the
    sampler; 3. run the one worker process to the end; 4. stop the flood and the sampler;
    5. the rate over the metrics after ``--warmup``, the sampled maxima, the admission
    counters and the model's sha256.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ps, tokens = _start_ps(args, folder, env)
    stop = mp.get_context("spawn").Event()
    child = None
    sampler: _Sampler | None = None
    try:
        port = _ps_port(ps, folder / "ready.json")
        if flood:
            child = _start_flood(args, port, flood, stop)
        sampler = _Sampler(ps.pid, child.pid if child is not None else None)
        sampler.start()
        worker = subprocess.run(
            _cmd(
                "worker", "--ps", f"127.0.0.1:{port}", "--id", 0, "--count", args.workers,
                "--token-file", tokens,
            ),
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        status = ps.wait(120)
        if status != 0 or worker.returncode != 0:
            raise ConfigError(
                f"a run failed (ps {status}, worker {worker.returncode}): "
                f"{ps.stderr.read() if ps.stderr else ''} {worker.stderr}"
            )
    finally:
        if sampler is not None:
            sampler.stop()
        stop.set()
        if child is not None:
            child.join(20)
            if child.is_alive():
                child.kill()
        if ps.poll() is None:
            ps.kill()
            ps.wait(10)
    return _run_result(args, folder / "run", sampler)


def _run_result(args: argparse.Namespace, run_dir: Path, sampler: _Sampler) -> dict[str, Any]:
    """Step 5 of ``one_run``."""
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["round"] >= args.warmup]
    wall = sum(float(r["wall_seconds"]) for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = sampler.samples
    return {
        "rounds_per_second": len(records) / wall if wall > 0 else float("nan"),
        "max_rss_mb": round(max((s[0] for s in samples), default=0.0), 1),
        "max_fds": max((s[1] for s in samples), default=0),
        "ps_cpu_seconds": round(sampler.cpu["ps"], 2),
        "flood_cpu_seconds": round(sampler.cpu["flood"], 2),
        "admission": summary.get("admission", {}),
        "model_sha256": summary["model_sha256"],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Alone and every flood size, ``repeats`` times, interleaved (see module docstring)."""
    if args.workers < 2 * args.adversaries + 1 or args.rounds <= args.warmup or args.repeats < 1:
        raise ConfigError("need --workers >= 2s+1, --rounds > --warmup and --repeats >= 1")
    if any(n < 1 for n in args.floods):
        raise ConfigError("--floods sizes must be >= 1")
    configs = [0, *args.floods]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in configs}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="draco-siege-") as tmp:
        for rep in range(args.repeats):
            for n in configs:
                runs[n].append(one_run(args, Path(tmp) / f"{rep}-{n}", n))
    load_after = os.getloadavg()
    alone = [r["rounds_per_second"] for r in runs[0]]
    out: dict[str, Any] = {
        "workers": args.workers,
        "adversaries": args.adversaries,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "dim": args.dim,
        "repeats": args.repeats,
        "flood_pause": args.flood_pause,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    for n in configs:
        rates = [r["rounds_per_second"] for r in runs[n]]
        entry: dict[str, Any] = {
            "rounds_per_second_median": round(statistics.median(rates), 2),
            "rounds_per_second_min": round(min(rates), 2),
            "rounds_per_second_max": round(max(rates), 2),
            "max_rss_mb": max(r["max_rss_mb"] for r in runs[n]),
            "max_fds": max(r["max_fds"] for r in runs[n]),
            "ps_cpu_seconds_median": round(
                statistics.median(r["ps_cpu_seconds"] for r in runs[n]), 2
            ),
            "flood_cpu_seconds_median": round(
                statistics.median(r["flood_cpu_seconds"] for r in runs[n]), 2
            ),
            "same_model_as_alone": all(
                r["model_sha256"] == runs[0][0]["model_sha256"] for r in runs[n]
            ),
        }
        if n:
            entry["ratio"] = round(statistics.median(rates) / statistics.median(alone), 3)
            entry["admission"] = runs[n][-1]["admission"]
        out["alone" if n == 0 else f"flood_{n}"] = entry
    return out


def run(args: argparse.Namespace) -> int:
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0
