"""Which worker ids a ``draco-worker`` process runs: from its flags or its launcher.

Under a cluster launcher every process of a job runs the same command line; the launcher
tells each its rank through the environment:

- SLURM (``srun``): ``SLURM_PROCID`` (rank, 0-based) and ``SLURM_NTASKS`` (tasks in the step);
- torchrun and other PyTorch-style launchers: ``RANK`` and ``WORLD_SIZE``.

Rules (docs/slurm.md):

1. ``--id I`` given: ids ``I .. I+K-1`` with ``K = --count`` (default 1); the environment is
   not read (explicit flags win).
2. Else rank r of T from the environment (both SLURM and torchrun variables present must
   agree), and either
   - ``--workers N`` (the run's worker count): the N ids are split into T contiguous blocks
     whose sizes differ by at most one (rank r gets ``[r*N//T, (r+1)*N//T)``), or
   - ``--count K`` (default 1): rank r gets ``r*K .. r*K+K-1``.
3. Anything missing or inconsistent is a ``ConfigError`` that says which variable or flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from draco.errors import ConfigError
from draco.net.messages import MAX_WORKER_ID

#: (rank variable, size variable) per launcher, in the order they are reported.
LAUNCHERS: tuple[tuple[str, str, str], ...] = (
    ("SLURM", "SLURM_PROCID", "SLURM_NTASKS"),
    ("torchrun", "RANK", "WORLD_SIZE"),
)
MAX_IDS = MAX_WORKER_ID + 1  # worker ids are uint32 on the wire


@dataclass(frozen=True)
class IdRange:
    """Worker ids ``first .. first+count-1`` and where they came from (for the log)."""

    first: int
    count: int
    source: str


def _env_int(env: Mapping[str, str], name: str) -> int:
    text = env[name].strip()
    if not text.isdigit():
        raise ConfigError(f"${name} must be a non-negative integer, got {env[name]!r}")
    return int(text)


def launcher_rank(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """``(rank, world size, launcher name)`` from the environment, or None if not launched.

    Raises
    ------
    ConfigError
        Half of a pair set, non-integers, rank >= size, size 0, or two launchers that
        disagree.
    """
    found: list[tuple[int, int, str]] = []
    for name, rank_var, size_var in LAUNCHERS:
        has_rank, has_size = rank_var in env, size_var in env
        if not has_rank and not has_size:
            continue
        if has_rank != has_size:
            present, absent = (rank_var, size_var) if has_rank else (size_var, rank_var)
            raise ConfigError(
                f"${present} is set but ${absent} is not: {name} sets both; pass --id/--count "
                "to choose the ids yourself"
            )
        rank, size = _env_int(env, rank_var), _env_int(env, size_var)
        if size < 1 or rank >= size:
            raise ConfigError(
                f"${rank_var}={rank} must be smaller than ${size_var}={size} (and that >= 1)"
            )
        found.append((rank, size, f"{name} (${rank_var}={rank}, ${size_var}={size})"))
    if not found:
        return None
    if len({(r, s) for r, s, _ in found}) > 1:
        raise ConfigError(
            "the launcher variables disagree: " + " vs. ".join(src for _, _, src in found)
        )
    return found[0]


def resolve_ids(
    first: int | None, count: int | None, workers: int | None, env: Mapping[str, str]
) -> IdRange:
    """The ids this process runs (rules in the module docstring).

    Parameters
    ----------
    first, count, workers : int or None
        ``--id``, ``--count``, ``--workers`` (None = not given).
    env : Mapping[str, str]
        The process environment (``os.environ``).
    """
    if count is not None and count < 1:
        raise ConfigError(f"--count must be >= 1, got {count}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if first is not None:
        if first < 0:
            raise ConfigError(f"--id must be >= 0, got {first}")
        if workers is not None:
            raise ConfigError("--workers splits the ids over a launcher's ranks: not with --id")
        k = 1 if count is None else count
        _check_bounds(first, k)
        return IdRange(first, k, "--id/--count")
    launched = launcher_rank(env)
    if launched is None:
        raise ConfigError(
            "no worker ids: pass --id I [--count K], or start draco-worker under srun "
            "($SLURM_PROCID/$SLURM_NTASKS) or torchrun ($RANK/$WORLD_SIZE)"
        )
    rank, size, source = launched
    if workers is not None:
        if count is not None:
            raise ConfigError("give --workers (split over the ranks) or --count, not both")
        if workers < size:
            raise ConfigError(
                f"--workers {workers} over {size} launcher tasks leaves some tasks without a "
                f"worker: start at most {workers} tasks, or pass --count"
            )
        lo, hi = rank * workers // size, (rank + 1) * workers // size
        return IdRange(lo, hi - lo, f"{source}, --workers {workers}")
    k = 1 if count is None else count
    _check_bounds(rank * k, k)
    return IdRange(rank * k, k, f"{source}, --count {k}")


def _check_bounds(first: int, count: int) -> None:
    if first + count > MAX_IDS:
        raise ConfigError(f"worker ids {first}..{first + count - 1} exceed {MAX_IDS - 1}")
