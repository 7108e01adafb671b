"""Python CPU per round of the PS receive path with cold caches (2026-12-02, issue 13 item 5).

45 ``Peer`` s (the PS's protocol objects: ``Connection``, ``FrameDecoder``, ``ArrayPool``,
``RoundCollector.offer`` through the benchmark's sink) fed one Gradient frame each per round
through ``get_buffer`` / ``buffer_updated``, with no sockets: the prefix/header read gets real
bytes, the body read is reported without copying (the kernel's copy is not what is timed).
``cold``: before every frame 8 MB go through the caches, as the previous payload's read does
in a real round. Prints the median thread CPU per round of 45 frames (rounds 4-25).

    python 2026-12-02-ingest-coldpeer.py cold|warm
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import numpy as np

from draco.bench import net as bn
from draco.net import messages as m
from draco.net.frames import ArrayPool, encode_frame
from draco.net.server import PAYLOAD_POOL_SLACK, Peer

N, DIM = 45, 1033510


class _Transport:
    def writelines(self, chunks: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, key: str) -> None:
        return None


async def main(cold: bool) -> float:
    sink = bn._Sink(N, DIM)
    pool = ArrayPool((N + PAYLOAD_POOL_SLACK) * DIM * 4)
    peers = []
    for _ in range(N):
        conn = bn.ready_server_connection(DIM, np.dtype(np.float32), 64 * 1024, pool)
        peer = Peer(sink, conn)
        peer.connection_made(_Transport())  # type: ignore[arg-type]
        peers.append(peer)
    junk = np.ones(2 * DIM, np.float32)
    junk2 = np.empty_like(junk)
    payload = np.zeros(DIM, np.float32)
    times = []
    for r in range(25):
        sink.new_round(r)
        msg = m.Gradient(round_index=r, payload=payload, compute_seconds=0.0)
        frame = b"".join(bytes(c) for c in encode_frame(*m.to_wire(msg)))
        total = 0.0
        for peer in peers:
            if cold:
                np.copyto(junk2, junk)
            t0 = time.thread_time()
            pos = 0
            while pos < len(frame):
                buf = peer.get_buffer(65536)
                k = min(len(buf), len(frame) - pos)
                if len(buf) <= 65536:  # prefix/header (scratch): real bytes
                    buf[:k] = frame[pos : pos + k]
                peer.buffer_updated(k)
                pos += k
            total += time.thread_time() - t0
        times.append(total)
        assert sink.done is not None and sink.done.is_set(), sink.errors
    return statistics.median(times[3:])


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "cold"
    ms = 1e3 * asyncio.run(main(mode == "cold"))
    print(f"{mode}: python ms/round median {ms:.2f}")
