"""PS memory under a long TLS connect/disconnect churn: leak or allocator retention?

    python benchmarks/tls_churn.py --cert cert.pem --key key.pem --seconds 300 [--loop asyncio]

Runs a ``ParameterServer`` (TLS, lstsq task, nobody ever joins) in THIS process and a churn
client in a child process that, ``--concurrency`` at a time, opens a TLS connection to it,
completes the TLS handshake, sends nothing and closes; every ``--plain-every``-th connection
is plain text instead (a failed TLS upgrade on the server). Every ``--every`` seconds it prints
one JSON line: the PS's RSS (MB, /proc/self/status), glibc's ``mallinfo2`` in-use bytes
(``uordblks + hblkhd``, MB: memory the program still holds) and arena bytes (``arena``: memory
glibc holds from the OS), the number of open fds and the connections done so far. At the end
it calls ``malloc_trim(0)`` and prints the RSS again.

Reading it: in-use bytes that grow with the connection count are a leak (someone keeps
objects); in-use flat while RSS/arena grow is allocator retention (freed memory kept mapped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def rss_mb() -> float:
    """Resident set size of this process, MB (1e6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def sample(done: int, t0: float, server: Any) -> dict[str, Any]:
    import gc

    from draco.net.peer import Peer

    mi = _LIBC.mallinfo2()
    return {
        "peer_objects": sum(1 for o in gc.get_objects() if isinstance(o, Peer)),
        "peers_tracked": len(server.peers),
        "t": round(time.monotonic() - t0, 1),
        "connections": done,
        "rss_mb": round(rss_mb(), 1),
        "malloc_in_use_mb": round((mi.uordblks + mi.hblkhd) / 1e6, 1),
        "malloc_arena_mb": round(mi.arena / 1e6, 1),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def _churn(port: int, concurrency: int, seconds: float, counter: Any, plain_every: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def one() -> None:
        deadline = time.monotonic() + seconds
        k = 0
        while time.monotonic() < deadline:
            k += 1
            if plain_every and k % plain_every == 0:
                # A plain-text client on the TLS port: the server's failed-upgrade path.
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                    w.write(b"DRCO" + bytes(60))
                    await asyncio.wait_for(r.read(), 10)
                    w.close()
                continue
            try:
                _, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10
                )
                w.close()
                await w.wait_closed()
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                await asyncio.sleep(0.01)
                continue
            with counter.get_lock():  # completed TLS handshakes only
                counter.value += 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(concurrency)))

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--every", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument(
        "--plain-every", type=int, default=4, help="every K-th connection is plain text (0: none)"
    )
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "net"))
    from test_server import make_server  # the tests' in-memory lstsq server

    from draco.net import auth
    from draco.net.eventloop import run_with_loop

    async def run() -> None:
        ctx = auth.server_ssl_context(args.cert, args.key)
        server, _ = make_server(ssl_context=ctx, join_timeout=args.seconds + 60)
        _, port = await server.start()
        spawn = mp.get_context("spawn")
        counter = spawn.Value("q", 0)
        child = spawn.Process(
            target=_churn,
            args=(port, args.concurrency, args.seconds, counter, args.plain_every),
            daemon=True,
        )
        t0 = time.monotonic()
        print(json.dumps(sample(0, t0, server)), flush=True)
        child.start()
        while child.is_alive():
            await asyncio.sleep(args.every)
            print(json.dumps(sample(counter.value, t0, server)), flush=True)
        await asyncio.sleep(args.every)
        print(json.dumps(sample(counter.value, t0, server)), flush=True)
        import gc

        gc.collect()
        print(json.dumps({**sample(counter.value, t0, server), "after_gc_collect": True}))
        _LIBC.malloc_trim(0)
        trimmed = {**sample(counter.value, t0, server), "after_malloc_trim": True}
        print(json.dumps(trimmed), flush=True)
        await server.shutdown("done")

    run_with_loop(run, args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
