"""Table of benchmarks/results/digest_vote/rounds.jsonl (``draco-bench net --vote ...`` runs).

python benchmarks/results/digest_vote/summarize.py benchmarks/results/digest_vote/rounds.jsonl

Rows: (d, link, vote); a ``--link-both`` run (PS egress shaped too) is its own link.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from typing import Any


def main(path: str) -> None:
    rows: dict[tuple[int, str, str], list[dict[str, Any]]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.startswith("{"):
                r = json.loads(line)
                link = r["link"]
                if r.get("link_shapes") == "ingress+egress":
                    link += " both ways"  # --link-both: the broadcast is shaped too
                rows[(r["dim"], link, r["vote"])].append(r)
    print(
        "| d | link | vote | runs | ingress / (P d 4) | round s: median [run medians] "
        "(min..max) | answers s | fetch s | PS CPU s | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    medians = {}
    for (dim, link, vote), rs in sorted(rows.items()):
        rounds = [v for r in rs for v in r["round_seconds"]["values"]]
        runs = ", ".join(f"{r['round_seconds']['median']:.3f}" for r in rs)
        cpu = statistics.median(v for r in rs for v in r["ps_cpu_seconds"]["values"])
        fetch = statistics.median(v for r in rs for v in r["fetch_seconds"]["values"])
        ingress = statistics.median(v for r in rs for v in r["ingress_ratio"]["values"])
        loads = [float(r[k].split()[0]) for r in rs for k in ("load_before", "load_after")]
        # Broadcast until every answer (full) / deciding digest (digest) is in; "-" for runs
        # made before the benchmark reported it.
        answers_runs = [r["answers_seconds"]["values"] for r in rs if "answers_seconds" in r]
        answers = (
            f"{statistics.median(v for a in answers_runs for v in a):.3f}" if answers_runs else "-"
        )
        med = medians[(dim, link, vote)] = statistics.median(rounds)
        print(
            f"| {dim:,} | {link} | {vote} | {len(rs)} | {ingress:.4f} | {med:.3f} [{runs}] "
            f"({min(rounds):.3f}..{max(rounds):.3f}) | {answers} | {fetch:.3f} | {cpu:.3f} | "
            f"{min(loads):.1f}-{max(loads):.1f} |"
        )
    for (dim, link, vote), med in sorted(medians.items()):
        if vote == "full" and (dim, link, "digest") in medians:
            ratio = med / medians[(dim, link, "digest")]
            print(f"\nd = {dim:,}, {link}: full / digest round time = {ratio:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1])
