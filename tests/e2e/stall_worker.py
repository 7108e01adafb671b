"""Logical workers that stall at their first payload request from a given round on.

The digest vote's own worst moment: a majority member whose digest already counted is asked
for its payload and does not deliver. Run as
``python stall_worker.py HOST:PORT FIRST COUNT TOKEN_FILE MODE ROUND``: ``COUNT`` logical
workers (ids FIRST..), otherwise the real ``draco.net.worker`` code. At the first
PayloadRequest for a round >= ROUND the whole process stops itself (``MODE`` ``freeze``:
SIGSTOP, so the test decides when it goes on; it then answers the request late) or dies
(``kill``: SIGKILL). Prints ``stalled at round R worker J`` before stalling and
``payloads N skipped M`` at the end (freeze mode).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from draco.net import messages as m
from draco.net import worker as w
from draco.net.auth import read_token_file
from draco.net.worker_client import ClientProtocol
from draco.net.worker_compute import Compute
from draco.net.worker_digest import HeldPayloads


class StallWorker(w.LogicalWorker):
    stall_round = 0
    mode = "freeze"
    stalled = False  # once per process

    async def _answer_request(
        self,
        proto: ClientProtocol,
        msg: m.PayloadRequest,
        held: HeldPayloads,
    ) -> None:
        if not StallWorker.stalled and msg.round_index >= self.stall_round:
            StallWorker.stalled = True
            print(f"stalled at round {msg.round_index} worker {self.id}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL if self.mode == "kill" else signal.SIGSTOP)
        await super()._answer_request(proto, msg, held)


async def main(address: str, first: int, count: int, token_file: Path) -> None:
    host, port = address.rsplit(":", 1)
    tokens = read_token_file(token_file)
    ids = range(first, first + count)
    options = w.WorkerOptions(host=host, port=int(port), tokens={j: tokens[j] for j in ids})
    compute = Compute(share_gradients=True)
    workers = [StallWorker(j, tokens[j], options, compute) for j in ids]
    try:
        await asyncio.gather(*(x.run() for x in workers))
    finally:
        compute.close()
    payloads = sum(x.payloads_sent for x in workers)
    skipped = sum(x.requests_skipped for x in workers)
    print(f"payloads {payloads} skipped {skipped}", flush=True)


if __name__ == "__main__":
    StallWorker.mode, StallWorker.stall_round = sys.argv[5], int(sys.argv[6])
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))
