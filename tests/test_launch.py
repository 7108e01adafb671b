"""draco-run's library (draco.launch): plans, credentials and checks, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from draco.errors import ConfigError
from draco.launch.credentials import issue_keys, load_tokens
from draco.launch.local import run_local
from draco.launch.plan import LaunchOptions, new_plan, resume_plan, split_workers, worker_argvs


def test_split_workers() -> None:
    assert split_workers(15, 2) == [(0, 8), (8, 7)]
    assert split_workers(2, 5) == [(0, 1), (1, 1)]
    for n in range(1, 20):
        for p in range(1, 6):
            parts = split_workers(n, p)
            counts = [c for _, c in parts]
            assert sum(counts) == n and max(counts) - min(counts) <= 1 and min(counts) >= 1
            assert [f for f, _ in parts] == [sum(counts[:i]) for i in range(len(parts))]


def test_new_plan_puts_the_users_flags_over_the_demo(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    plan = new_plan(LaunchOptions(run_dir=run_dir), ["--workers", "5", "--adversaries", "0"])
    assert plan.n_workers == 5 and plan.run_dir == run_dir
    assert plan.secret_path.is_file() and plan.tokens_path.is_file()
    assert plan.ps_flags[-2:] == ["--run-dir", str(run_dir)]
    assert plan.ps_flags[-4:-2] == ["--attack", "none"]  # no liars asked for: no attack
    argvs = worker_argvs(plan, "127.0.0.1:7000", 2, ["--loop", "asyncio"])
    assert [a[a.index("--count") + 1] for a in argvs] == ["3", "2"]
    assert all(a[-2:] == ["--loop", "asyncio"] for a in argvs)
    assert load_tokens(plan.tokens_path, 0, 5).keys() == set(range(5))


def test_a_plugin_task_replaces_the_demo_model(tmp_path: Path) -> None:
    plan = new_plan(LaunchOptions(run_dir=tmp_path / "run"), ["--task", "pkg.mod:make"])
    assert "--model" not in plan.ps_flags


def test_plans_refuse_what_they_cannot_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        new_plan(LaunchOptions(run_dir=run_dir), [])
    with pytest.raises(ConfigError, match="not both"):
        resume_plan(LaunchOptions(run_dir=tmp_path / "other", resume=run_dir), [])
    with pytest.raises(ConfigError, match="--worker-procs"):
        run_local(LaunchOptions(worker_procs=0), [])
    with pytest.raises(ConfigError, match="--port itself"):
        run_local(LaunchOptions(run_dir=tmp_path / "new"), ["--port", "7000"])


def test_issue_keys_and_load_tokens(tmp_path: Path) -> None:
    secret, tokens = tmp_path / "ps.secret", tmp_path / "tokens.txt"
    with pytest.raises(ConfigError, match="--create-secret"):
        issue_keys(secret, 3, tokens, create_secret=False, force=False)
    issue_keys(secret, 3, tokens, create_secret=True, force=False)
    assert sorted(load_tokens(tokens, 1, 2)) == [1, 2]
    with pytest.raises(ConfigError, match="no token for worker id"):
        load_tokens(tokens, 2, 2)
