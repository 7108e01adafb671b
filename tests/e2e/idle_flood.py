"""An idle-connection flood (slowloris), as a process: ``python idle_flood.py HOST PORT ...``.

Holds ``--plain`` TCP connections that never send a byte and ``--tls`` connections that
complete a TLS handshake (certificate not checked) and then send nothing; a connection the
server drops is replaced after ``--pause`` seconds (``0``: at once, a hammering flood). Stops
after ``--seconds`` or on SIGTERM. Prints one JSON line of counts at the end. Bounded in
sockets (``--plain + --tls``) and time; meant for 127.0.0.0/8 or the tests' own netns
addresses only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys


async def _hold(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    pause: float,
    stats: dict[str, int],
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx), 10
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            stats["failed"] += 1
            await asyncio.sleep(max(pause, 0.01))
            continue
        stats["opened"] += 1
        read = asyncio.ensure_future(reader.read(1 << 16))
        halt = asyncio.ensure_future(stop.wait())
        with contextlib.suppress(OSError, ssl.SSLError):
            await asyncio.wait([read, halt], return_when=asyncio.FIRST_COMPLETED)
        for fut in (read, halt):
            fut.cancel()
        if not stop.is_set():
            stats["dropped"] += 1
        writer.transport.abort()
        if pause:
            await asyncio.sleep(pause)


async def main(args: argparse.Namespace) -> dict[str, int]:
    stats = {"opened": 0, "dropped": 0, "failed": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    tasks = [
        *(_hold(args.host, args.port, None, args.pause, stats, stop) for _ in range(args.plain)),
        *(_hold(args.host, args.port, ctx, args.pause, stats, stop) for _ in range(args.tls)),
    ]
    runner = asyncio.ensure_future(asyncio.gather(*tasks))
    print(json.dumps({"started": True}), flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), args.seconds)
    stop.set()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(runner, 15)
    return stats


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--plain", type=int, default=0)
    p.add_argument("--tls", type=int, default=0)
    p.add_argument("--pause", type=float, default=0.2)
    p.add_argument("--seconds", type=float, default=120.0)
    args = p.parse_args()
    if not args.host.startswith(("127.", "10.")):  # loopback or the tests' netns addresses
        sys.exit(f"refusing to flood {args.host}")
    print(json.dumps(asyncio.run(main(args))), flush=True)
