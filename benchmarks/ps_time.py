"""PS time per round from run directories' metrics.jsonl (no new measurement; reads records).

    python benchmarks/ps_time.py RUN_DIR [RUN_DIR ...]

Per run, over its rounds (round 0, which includes the workers' start-up, left out): median
and 90th percentile of

- decode + update: wall seconds of the PS's decode (or aggregation) and SGD update;
- decode CPU: thread CPU seconds of the same (decode thread);
- loop CPU: thread CPU seconds of the PS's event loop during the round (broadcast of the
  model, receiving and checking the payloads, kernel time of its socket calls included);
- loop user / loop sys: the loop CPU split into this process's own code (framing, checks,
  bookkeeping) and the kernel's work for it (socket copies, TCP, page faults); records from
  before 2026-12-02 lack the split ("-");
- ready CPU: thread CPU seconds of the cyclic code's readiness checks in the helper thread
  (0 for codes checked inline; not recorded, "-", before 2026-12-02);
- PS CPU: decode CPU + loop CPU (+ ready CPU where recorded) = everything the PS does in a
  round besides waiting (evaluation, checkpoints and metrics writing excluded: they run in
  other threads / after).
"""

from __future__ import annotations

import sys
from pathlib import Path

from draco.ps.rundir import read_metrics

FIELDS = (
    ("decode + update", lambda r: r["decode_seconds"] + r["update_seconds"]),
    ("decode CPU", lambda r: r["decode_cpu_seconds"]),
    ("loop CPU", lambda r: r["loop_cpu_seconds"]),
    ("loop user", lambda r: r.get("loop_user_cpu_seconds")),
    ("loop sys", lambda r: r.get("loop_sys_cpu_seconds")),
    ("ready CPU", lambda r: r.get("ready_cpu_seconds")),
    ("PS CPU", lambda r: r["ps_cpu_seconds"]),
    ("wall", lambda r: r["wall_seconds"]),
)


def quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]


def main(argv: list[str]) -> int:
    print("| run | rounds | " + " | ".join(f"{n} s (median / p90)" for n, _ in FIELDS) + " |")
    print("|---|---|" + "---|" * len(FIELDS))
    for d in argv:
        records = [r for r in read_metrics(Path(d)) if r["round"] > 0 and "ps_cpu_seconds" in r]
        if not records:
            print(f"| {Path(d).name} | 0 |" + " – |" * len(FIELDS))
            continue
        cells = []
        for _, get in FIELDS:
            got = [get(r) for r in records]
            vals = [float(v) for v in got if v is not None]
            if len(vals) < len(got):
                cells.append("-")  # not recorded by the code that made this run
                continue
            cells.append(f"{quantile(vals, 0.5):.3f} / {quantile(vals, 0.9):.3f}")
        print(f"| {Path(d).name} | {len(records)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
