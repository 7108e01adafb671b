"""Worker ids from --id/--count or a launcher's environment (draco.launch.env); no SLURM."""

from __future__ import annotations

import pytest

from draco.errors import ConfigError
from draco.launch.env import IdRange, launcher_rank, resolve_ids

SLURM = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}
TORCHRUN = {"RANK": "2", "WORLD_SIZE": "4"}


def ids(r: IdRange) -> list[int]:
    return list(range(r.first, r.first + r.count))


def test_explicit_flags_win_over_the_environment() -> None:
    got = resolve_ids(5, 3, None, {**SLURM, **TORCHRUN})
    assert ids(got) == [5, 6, 7] and got.source == "--id/--count"
    assert ids(resolve_ids(0, None, None, SLURM)) == [0]


@pytest.mark.parametrize("env", [SLURM, TORCHRUN, {**SLURM, **TORCHRUN}])
def test_rank_from_either_launcher(env: dict[str, str]) -> None:
    assert ids(resolve_ids(None, None, None, env)) == [2]  # one logical worker per task
    assert ids(resolve_ids(None, 3, None, env)) == [6, 7, 8]  # rank * K
    got = resolve_ids(None, None, 10, env)  # 10 ids over 4 tasks: 2, 3, 2, 3
    assert ids(got) == [5, 6] and "--workers 10" in got.source


@pytest.mark.parametrize(("n", "tasks"), [(10, 4), (15, 15), (45, 7), (3, 1), (100, 3)])
def test_workers_split_covers_every_id_once(n: int, tasks: int) -> None:
    seen: list[int] = []
    sizes = set()
    for rank in range(tasks):
        env = {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks)}
        got = ids(resolve_ids(None, None, n, env))
        seen += got
        sizes.add(len(got))
    assert seen == list(range(n)) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_source_names_the_variables() -> None:
    got = resolve_ids(None, None, None, SLURM)
    assert "SLURM" in got.source and "$SLURM_PROCID=2" in got.source
    assert "torchrun" in resolve_ids(None, None, None, TORCHRUN).source


@pytest.mark.parametrize(
    ("args", "env", "match"),
    [
        ((None, None, None), {}, "pass --id I"),
        ((None, None, None), {"SLURM_PROCID": "1"}, r"\$SLURM_NTASKS is not"),
        ((None, None, None), {"WORLD_SIZE": "4"}, r"\$RANK is not"),
        ((None, None, None), {"SLURM_PROCID": "x", "SLURM_NTASKS": "4"}, "non-negative integer"),
        ((None, None, None), {"RANK": "-1", "WORLD_SIZE": "4"}, "non-negative integer"),
        ((None, None, None), {"RANK": "4", "WORLD_SIZE": "4"}, "must be smaller"),
        ((None, None, None), {"RANK": "0", "WORLD_SIZE": "0"}, "must be smaller"),
        ((None, None, None), {**SLURM, "RANK": "1", "WORLD_SIZE": "4"}, "disagree"),
        ((None, None, None), {**SLURM, "RANK": "2", "WORLD_SIZE": "5"}, "disagree"),
        ((None, None, 3), SLURM, "leaves some tasks without"),
        ((None, 2, 10), SLURM, "not both"),
        ((0, None, 10), SLURM, "not with --id"),
        ((-1, None, None), {}, "--id must be >= 0"),
        ((0, 0, None), {}, "--count must be >= 1"),
        ((None, None, 0), SLURM, "--workers must be >= 1"),
        ((2**32 - 1, 2, None), {}, "exceed"),
        ((None, 2**31, None), SLURM, "exceed"),
    ],
)
def test_inconsistent_values_are_clear_errors(
    args: tuple[int | None, int | None, int | None], env: dict[str, str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_ids(*args, env)


def test_no_launcher() -> None:
    assert launcher_rank({"PATH": "/bin"}) is None
