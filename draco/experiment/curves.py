"""Accuracy curves of run directories: ``Curve``, ``load_curve``, ``plot_curves``.

Each run directory's ``metrics.jsonl`` supplies the points: the records that carry
``test_accuracy`` (a fraction in [0, 1]). The x axes are the record's ``round`` + 1 (rounds
completed) and the elapsed wall time in seconds: ``elapsed_seconds`` when a record has it,
otherwise the running sum of the per-round ``wall_seconds``. ``draco-plot`` draws them.

matplotlib is an optional dependency (``pip install 'draco[plot]'``), imported only inside
``plot_curves``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from draco.errors import DracoError
from draco.ps.rundir import METRICS_NAME, read_metrics


@dataclass(frozen=True)
class Curve:
    """One run's accuracy curve: equal-length lists of rounds, seconds and accuracies."""

    label: str
    rounds: list[int]
    seconds: list[float]
    accuracy: list[float]


def load_curve(run_dir: str | Path, label: str | None = None) -> Curve:
    """The accuracy curve of one run directory.

    Raises
    ------
    DracoError
        The folder has no ``metrics.jsonl`` or no record with ``test_accuracy``.
    """
    path = Path(run_dir)
    if not (path / METRICS_NAME).is_file():
        raise DracoError(f"{path} is not a run directory: {METRICS_NAME} not found")
    records: list[dict[str, Any]] = read_metrics(path)
    rounds: list[int] = []
    seconds: list[float] = []
    accuracy: list[float] = []
    elapsed = 0.0
    for r in records:
        elapsed += float(r.get("wall_seconds", 0.0) or 0.0)
        acc = r.get("test_accuracy")
        if acc is None:
            continue
        rounds.append(int(r.get("round", len(rounds))) + 1)
        seconds.append(float(r.get("elapsed_seconds", elapsed)))
        accuracy.append(float(acc))
    if not accuracy:
        raise DracoError(f"{path / METRICS_NAME} holds no record with test_accuracy")
    return Curve(label or path.name or str(path), rounds, seconds, accuracy)


def plot_curves(curves: list[Curve], out: str | Path, title: str | None = None) -> None:
    """Draw the curves side by side (vs round, vs seconds) and save to ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, (ax_round, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for c in curves:
        pct = [100.0 * a for a in c.accuracy]
        ax_round.plot(c.rounds, pct, marker=".", label=c.label)
        ax_time.plot(c.seconds, pct, marker=".", label=c.label)
    ax_round.set_xlabel("round")
    ax_time.set_xlabel("wall time (s)")
    ax_round.set_ylabel("test accuracy (%)")
    for ax in (ax_round, ax_time):
        ax.grid(True, alpha=0.3)
    ax_time.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
