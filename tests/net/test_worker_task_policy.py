"""A worker's own policy against the parameter server's Welcome (real localhost sockets).

A hostile PS names a task the worker's operator did not allow (``os:system``, a module on
sys.path), or bounds-breaking options: the worker refuses before importing anything, tells
the PS why (Error ``refused_config``) and ends with a ConfigError. A worker on a GPU refuses
the exact vote. The control: an allowed plug-in task computes the right gradients.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_worker import SECRET, TIMEOUT, Peer, _config, _options, fake_ps

from draco.core.codes import make_code
from draco.errors import ConfigError
from draco.net import messages as m
from draco.net.auth import verify_handshake
from draco.net.worker import run_workers
from draco.tasks.contract import CUSTOM_MODEL
from draco.tasks.plugins import TaskOptionLimits
from draco.tasks.registry import make_task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "shapes_cnn:make_task"


def plugin_spec(factory: str, options: Any = None, n_partitions: int = 3) -> dict[str, Any]:
    return {
        "model": CUSTOM_MODEL,
        "factory": factory,
        "options": {} if options is None else options,
        "n_partitions": n_partitions,
        "batch_size": 4,
        "seed": 0,
        "data_dir": None,
    }


async def welcome(peer: Peer, **changes: Any) -> m.Message | None:
    """Handshake, then a Welcome with ``changes`` applied; the worker's next message."""
    hello = await peer.recv()
    assert isinstance(hello, m.Hello)
    nonce = os.urandom(32)
    await peer.send(m.Challenge(nonce))
    auth = await peer.recv()
    assert isinstance(auth, m.Auth)
    assert verify_handshake(SECRET, hello.worker_id, nonce, auth.mac)
    config = {**_config(hello.worker_id), **changes}
    config.pop("dim")  # the plug-in task's size is not the lstsq one
    await peer.send(m.Welcome(config))
    return await peer.recv()


async def refused(changes: dict[str, Any], **opts: Any) -> tuple[ConfigError, list[Any]]:
    replies: list[Any] = []

    async def script(peer: Peer) -> None:
        replies.append(await welcome(peer, **changes))

    async with fake_ps(script) as (port, _):
        with pytest.raises(ConfigError) as info:
            await asyncio.wait_for(run_workers(_options(port, range(1), **opts)), TIMEOUT)
    return info.value, replies


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    name = f"draco_net_probe_{os.getpid()}"
    marker = tmp_path / "marker"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def make_task(ctx, **options):\n    raise AssertionError('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


async def test_a_welcome_naming_os_system_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    exc, replies = await refused({"task": plugin_spec("os:system")})
    assert "'os:system' is not allowed" in str(exc) and "--allow-task" in str(exc)
    assert calls == []
    [reply] = replies
    assert isinstance(reply, m.Error) and reply.code == "refused_config"
    assert "os:system" in reply.message


async def test_an_unlisted_module_is_never_imported(probe: tuple[str, Path]) -> None:
    name, marker = probe
    exc, replies = await refused(
        {"task": plugin_spec(f"{name}:make_task")}, allowed_tasks=frozenset({EXAMPLE})
    )
    assert "not allowed" in str(exc)
    assert name not in sys.modules and not marker.exists()
    assert isinstance(replies[0], m.Error) and replies[0].code == "refused_config"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"a": [[[[[[1]]]]]]}, "deeper than 4"),
        ({"a": list(range(2000))}, "more than 1024 values"),
        ({"a": "x" * 5000}, "longer than 4096"),
    ],
)
async def test_hostile_options_are_refused_before_import(
    probe: tuple[str, Path], options: dict[str, Any], match: str
) -> None:
    name, marker = probe
    factory = f"{name}:make_task"
    exc, _ = await refused(
        {"task": plugin_spec(factory, options)}, allowed_tasks=frozenset({factory})
    )
    assert match in str(exc)
    assert name not in sys.modules and not marker.exists()


async def test_option_limits_are_the_workers_own(probe: tuple[str, Path]) -> None:
    name, marker = probe
    factory = f"{name}:make_task"
    exc, _ = await refused(
        {"task": plugin_spec(factory, {"a": [1, 2, 3]})},
        allowed_tasks=frozenset({factory}),
        task_option_limits=TaskOptionLimits(max_items=3),
    )
    assert "more than 3 values" in str(exc) and not marker.exists()


async def test_a_gpu_worker_refuses_the_exact_vote() -> None:
    exc, replies = await refused({}, device="cuda")
    assert "--vote tolerance" in str(exc) and "bit-identical" in str(exc)
    assert isinstance(replies[0], m.Error) and replies[0].code == "refused_config"


async def test_a_gpu_worker_passes_the_vote_check_with_a_tolerance_vote() -> None:
    # The vote is accepted; the next check (lstsq is numpy-only) is what refuses here.
    exc, _ = await refused({"code_options": {"rtol": 1e-4}}, device="cuda")
    assert "lstsq task computes with numpy" in str(exc)


async def test_an_allowed_plugin_task_computes_its_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "custom_task"))
    spec = plugin_spec(EXAMPLE, {"width": 2, "n_train": 64, "n_test": 16})
    local = make_task(spec, allowed=(EXAMPLE,))
    params = local.initial_params() + np.float32(0.01)
    code = make_code("repetition", 3, 1)
    got: list[m.Gradient] = []

    async def script(peer: Peer) -> None:
        reply = None
        hello = await peer.recv()
        assert isinstance(hello, m.Hello)
        nonce = os.urandom(32)
        await peer.send(m.Challenge(nonce))
        assert isinstance(await peer.recv(), m.Auth)
        await peer.send(m.Welcome({**_config(hello.worker_id), "task": spec, "dim": local.dim}))
        await peer.send(m.RoundStart(4, params, None, 0))
        reply = await peer.recv()
        assert isinstance(reply, m.Gradient), reply
        got.append(reply)
        await peer.send(m.Bye("done"))

    async with fake_ps(script) as (port, _):
        opts = _options(port, range(1), allowed_tasks=frozenset({EXAMPLE}))
        await asyncio.wait_for(run_workers(opts), TIMEOUT)
    parts = code.partitions_of(0)
    expect = code.encode(0, local.partition_gradients(params, 4, parts))
    np.testing.assert_array_equal(got[0].payload, expect)


def test_cli_refuses_a_malformed_allow_task(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from draco.cli import worker as cli

    argv = ["--ps", "127.0.0.1:1", "--id", "0", "--token-file", str(tmp_path / "t")]
    assert cli.main([*argv, "--allow-task", "os:path.join"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("draco-worker: error: a task factory is named package.module:function")
    assert cli.main([*argv, "--max-task-option-depth", "99"]) == 2
    assert "--max-task-option-depth must be an int in [0, 16]" in capsys.readouterr().err


def test_cli_takes_its_ids_from_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from draco.cli import worker as cli
    from draco.net.auth import issue_tokens, write_token_file

    tokens = tmp_path / "tokens"
    write_token_file(tokens, issue_tokens(SECRET, range(4)))
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    # Rank 2 of 3 with --count 2 runs ids 4 and 5: the tokens file has none of them.
    assert cli.main(["--ps", "127.0.0.1:1", "--count", "2", "--token-file", str(tokens)]) == 2
    assert "no token for worker id(s) [4, 5]" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    assert cli.main(["--ps", "127.0.0.1:1", "--token-file", str(tokens)]) == 2
    assert "launcher variables disagree" in capsys.readouterr().err
