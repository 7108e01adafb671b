"""``draco-experiment``'s figures: one PNG per (attack, s) in the style of the paper's
Figure 1: test accuracy (%) vs round and vs cluster seconds (docs/cluster_time.md), a line per
finished or diverged run. matplotlib is optional (the ``plot`` extra): imported only here, lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from draco.experiment.grid import Experiment
from draco.ps.rundir import read_metrics

PROG = "draco-experiment"


def write_figures(exp: Experiment, rows: list[dict[str, Any]]) -> list[Path]:
    """One PNG per (attack, s): accuracy vs round and vs cluster seconds, a line per run."""
    try:
        import matplotlib
    except ImportError:
        print(f"{PROG}: matplotlib is not installed: no figures (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["s"]), []).append(r)
    for (attack, s), group in sorted(groups.items()):
        fig, (ax_r, ax_t) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
        for r in group:
            pts = [
                (int(m["round"]) + 1, float(m["cluster_seconds_elapsed"]), 100 * m["test_accuracy"])
                for m in read_metrics(exp.results / "runs" / r["run"])
                if m.get("test_accuracy") is not None and "cluster_seconds_elapsed" in m
            ]
            if not pts:
                continue
            label = r["method"] if r["seed"] == 0 else f"{r['method']} seed {r['seed']}"
            ax_r.plot([p[0] for p in pts], [p[2] for p in pts], label=label)
            ax_t.plot([p[1] for p in pts], [p[2] for p in pts], label=label)
        if exp.target_accuracy is not None:
            for ax in (ax_r, ax_t):
                ax.axhline(100 * exp.target_accuracy, color="grey", lw=0.8, ls="--")
        ax_r.set_xlabel("round")
        ax_t.set_xlabel("cluster seconds (docs/cluster_time.md)")
        ax_r.set_ylabel("test accuracy (%)")
        for ax in (ax_r, ax_t):
            ax.grid(True, alpha=0.3)
        ax_t.legend(loc="lower right", fontsize=8)
        fig.suptitle(f"{exp.name}: attack {attack}, s = {s}", fontsize=10)
        fig.tight_layout()
        out = exp.results / f"figure_{attack}_s{s}.png"
        fig.savefig(out, dpi=80)
        plt.close(fig)
        written.append(out)
    return written
