"""A worker that answers EVERY RoundStart it has read, superseded or not (a naive client).

``draco-worker`` skips a RoundStart once a newer one is queued; a client in another language
need not. Run as ``python backlog_worker.py HOST:PORT ID TOKEN_FILE``: one logical worker,
otherwise the real ``draco.net.worker`` code. Prints ``answered N superseded M`` at the end.
The e2e test freezes it (SIGSTOP) while rounds go on, so that on SIGCONT it answers the
backlog of rounds it missed, one late payload after another.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import ClassVar

from draco.net import messages as m
from draco.net import worker as w
from draco.net.auth import read_token_file
from draco.net.worker_client import ClientProtocol
from draco.net.worker_compute import Compute


class BacklogWorker(w.LogicalWorker):
    superseded: ClassVar[set[tuple[int, int]]] = set()

    def _superseded(self, msg: m.RoundStart, proto: ClientProtocol) -> bool:
        if super()._superseded(msg, proto):
            self.superseded.add((msg.round_index, msg.attempt))
        return False  # answer it anyway


async def main(address: str, worker_id: int, token_file: Path) -> None:
    host, port = address.rsplit(":", 1)
    token = read_token_file(token_file)[worker_id]
    options = w.WorkerOptions(host=host, port=int(port), tokens={worker_id: token})
    compute = Compute(share_gradients=True)
    worker = BacklogWorker(worker_id, token, options, compute)
    try:
        await worker.run()
    finally:
        compute.close()
    print(f"answered {worker.rounds_sent} superseded {len(worker.superseded)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
