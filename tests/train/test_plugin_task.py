"""The task plug-in API: factory names, the allowlist, hostile options, ModuleTask.

Pure unit tests (no sockets). The security tests check that a refused name imports nothing
(``sys.modules``, and a probe module whose import would leave a file behind).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from draco.errors import ConfigError
from draco.tasks.contract import CUSTOM_MODEL, TaskContext
from draco.tasks.plugins import TaskOptionLimits, check_factory_name, check_task_options
from draco.tasks.registry import add_task_arguments, make_task, task_spec_from_args
from draco.tasks.torch.module_task import ModuleTask

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "shapes_cnn:make_task"

PROBE_SOURCE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def make_task(ctx, **options):
    raise AssertionError("a refused factory was called")
"""


def spec(factory: str = EXAMPLE, **kw: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": CUSTOM_MODEL,
        "factory": factory,
        "options": {},
        "n_partitions": 4,
        "batch_size": 8,
        "seed": 1,
        "data_dir": None,
    }
    s.update(kw)
    return s


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module on sys.path whose import writes a marker file: (module name, marker)."""
    name = f"draco_probe_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    marker = tmp_path / "marker"
    (tmp_path / f"{name}.py").write_text(PROBE_SOURCE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


@pytest.fixture
def example_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "custom_task"))


# -- names and the allowlist ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["pkg.mod:make", "m:f", "_a.b_1:F_2", "shapes_cnn:make_task", "a" * 50 + ":b"]
)
def test_factory_names_accepted(name: str) -> None:
    module, attr = check_factory_name(name)
    assert f"{module}:{attr}" == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "os",
        "os:path.join",  # no dotted attribute path through a module
        "a..b:c",
        ".a:b",
        "a:b:c",
        "1a:b",
        "a-b:c",
        "a b:c",
        "os:system;rm",
        "a:" + "b" * 300,
        None,
        5,
        ["os", "system"],
    ],
)
def test_factory_names_refused(name: Any) -> None:
    with pytest.raises(ConfigError, match=r"package\.module:function"):
        check_factory_name(name)


def test_os_system_is_refused_and_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    for allowed in ((), ("shapes_cnn:make_task",), ("os:getcwd",)):
        with pytest.raises(ConfigError, match="'os:system' is not allowed"):
            make_task(spec("os:system"), allowed=allowed)
    assert calls == []


def test_unlisted_module_is_never_imported(probe: tuple[str, Path]) -> None:
    name, marker = probe
    for allowed in ((), (f"{name}:other",), (f"{name}.sub:make_task",)):
        with pytest.raises(ConfigError, match="--allow-task"):
            make_task(spec(f"{name}:make_task"), allowed=allowed)
        assert name not in sys.modules
        assert not marker.exists()


def test_listed_module_is_imported_and_called(probe: tuple[str, Path]) -> None:
    # The control: the same probe IS imported once listed (so the test above can fail).
    name, marker = probe
    with pytest.raises(ConfigError, match="a refused factory was called"):
        make_task(spec(f"{name}:make_task"), allowed=(f"{name}:make_task",))
    assert name in sys.modules and marker.exists()


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"a": _deep(5)}, "deeper than 4"),
        ({"a": list(range(2000))}, "more than 1024 values"),
        ({"a": "x" * 5000}, "longer than 4096"),
        ({"a": {"k" * 5000: 1}}, "bad key"),
        ({"not an identifier": 1}, "identifiers"),
        ({"_private": 1}, "identifiers"),
        ({"a": b"bytes"}, "bytes"),
        ({"a": float("nan")}, "not finite"),
        ({"a": 2**70}, "64 bits"),
        ({"a": {1: 2}}, "bad key"),
        ([1, 2], "must be a table"),
    ],
)
def test_hostile_options_refused_before_import(
    probe: tuple[str, Path], options: Any, match: str
) -> None:
    name, marker = probe
    hostile = spec(f"{name}:make_task", options=options)
    with pytest.raises(ConfigError, match=match):
        make_task(hostile, allowed=(f"{name}:make_task",))
    assert name not in sys.modules and not marker.exists()


def test_option_limits_are_configurable() -> None:
    opts = {"a": [[1]], "b": "xyz"}
    check_task_options(opts, TaskOptionLimits(max_depth=2, max_items=4, max_text=3))
    with pytest.raises(ConfigError, match="deeper than 1"):
        check_task_options(opts, TaskOptionLimits(max_depth=1))
    with pytest.raises(ConfigError, match="more than 3 values"):
        check_task_options(opts, TaskOptionLimits(max_items=3))
    with pytest.raises(ConfigError, match="longer than 2"):
        check_task_options(opts, TaskOptionLimits(max_text=2))
    with pytest.raises(ConfigError, match="--max-task-option-depth"):
        TaskOptionLimits(max_depth=-1)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"n_partitions": 0}, "n_partitions"),
        ({"batch_size": "8"}, "batch_size"),
        ({"seed": True}, "seed"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_malformed_plugin_spec(example_path: None, bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_task(spec(**bad), allowed=(EXAMPLE,))


# -- factories --------------------------------------------------------------------------------


def typed_factory(ctx: TaskContext, width: int = 2, rate: float = 0.5, name: str | None = None):
    raise AssertionError("not reached in the type tests")


def test_option_types_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    this = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "draco_typed_probe", this)
    allowed = ("draco_typed_probe:typed_factory",)
    for options, match in [
        ({"width": "2"}, "width must be int"),
        ({"width": 2.0}, "width must be int"),
        ({"width": True}, "width must be int"),
        ({"name": 3}, "name must be str or none"),
        ({"colour": 1}, "unexpected keyword argument 'colour'.*width, rate, name"),
    ]:
        with pytest.raises(ConfigError, match=match):
            make_task(spec(allowed[0], options=options), allowed=allowed)
    # Right types (an int for a float, None for an optional) reach the factory.
    with pytest.raises(ConfigError, match=r"factory .* failed: AssertionError"):
        make_task(spec(allowed[0], options={"rate": 1, "name": None}), allowed=allowed)


def not_a_task(ctx: TaskContext) -> object:
    return object()


def wrong_spec(ctx: TaskContext) -> ModuleTask:
    task = ModuleTask(ctx, model=lambda: nn.Linear(3, 2), data=_linear_data)
    task.ctx = TaskContext(ctx.n_partitions, ctx.batch_size, ctx.seed, spec={"model": "x"})
    return task


def test_factory_must_return_a_task_with_its_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "draco_typed_probe", sys.modules[__name__])
    with pytest.raises(ConfigError, match="returned a object without"):
        make_task(spec("draco_typed_probe:not_a_task"), allowed=("draco_typed_probe:not_a_task",))
    with pytest.raises(ConfigError, match=r"spec\(\) must return ctx.spec"):
        make_task(spec("draco_typed_probe:wrong_spec"), allowed=("draco_typed_probe:wrong_spec",))


def test_missing_module_and_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="cannot import task module 'no_such_mod_xyz'"):
        make_task(spec("no_such_mod_xyz:f"), allowed=("no_such_mod_xyz:f",))
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        make_task(spec("os:nope"), allowed=("os:nope",))


# -- ModuleTask -------------------------------------------------------------------------------


def _linear_data() -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return (x, y), (x[:16], y[:16])


def _ctx(**kw: Any) -> TaskContext:
    base = {"n_partitions": 4, "batch_size": 8, "seed": 2}
    base.update(kw)
    return TaskContext(spec={"model": CUSTOM_MODEL, **base}, **base)


class ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, noise: float = 0.0) -> None:
        self.x, self.y, self.noise = torch.from_numpy(x), torch.from_numpy(y), noise

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.noise:  # torch-random augmentation: seeded per (seed, round, partition)
            x = x + self.noise * torch.randn_like(x)
        return x, self.y[i]


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(3, 16), nn.Dropout(0.5), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def test_gradients_match_plain_torch_on_the_sampled_batch() -> None:
    task = ModuleTask(_ctx(), model=lambda: nn.Linear(3, 2), data=_linear_data)
    w = task.initial_params()
    g = task.partition_gradients(w, 5, [2, 0])
    (x, y), _ = _linear_data()
    ref = nn.Linear(3, 2)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(w), ref.parameters())
    for row, k in enumerate([2, 0]):
        idx = task.sampler.indices(5, k)
        loss = F.cross_entropy(ref(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        expect = torch.cat([p.reshape(-1) for p in torch.autograd.grad(loss, ref.parameters())])
        np.testing.assert_allclose(g[row], expect.numpy(), rtol=1e-6, atol=1e-7)
    assert g.dtype == np.float32 and g.shape == (2, task.dim) and task.dim == 8


def test_random_models_and_augmentation_are_bit_identical_per_partition() -> None:
    def data() -> tuple[Any, Any]:
        (x, y), test = _linear_data()
        return ArrayDataset(x, y, noise=0.3), test

    a = ModuleTask(_ctx(), model=DropoutNet, data=data)
    b = ModuleTask(_ctx(), model=DropoutNet, data=data)
    w = a.initial_params()
    np.testing.assert_array_equal(w, b.initial_params())
    torch.manual_seed(123)  # the caller's RNG state must not matter
    ga = a.partition_gradients(w, 3, [0, 1, 2, 3])
    torch.manual_seed(456)
    gb = b.partition_gradients(w, 3, [3, 1])
    np.testing.assert_array_equal(ga[[3, 1]], gb)
    # ... and the randomness is real: another round (or partition) draws other numbers.
    assert not np.array_equal(ga[0], a.partition_gradients(w, 4, [0])[0])


def test_dataset_and_arrays_give_the_same_gradients() -> None:
    def as_dataset() -> tuple[Any, Any]:
        (x, y), test = _linear_data()
        return ArrayDataset(x, y), test

    a = ModuleTask(_ctx(), model=lambda: nn.Linear(3, 2), data=_linear_data)
    b = ModuleTask(_ctx(), model=lambda: nn.Linear(3, 2), data=as_dataset)
    w = a.initial_params()
    np.testing.assert_array_equal(
        a.partition_gradients(w, 1, [1]), b.partition_gradients(w, 1, [1])
    )


def test_seed_changes_the_initial_parameters() -> None:
    a = ModuleTask(_ctx(seed=1), model=lambda: nn.Linear(3, 2), data=_linear_data)
    b = ModuleTask(_ctx(seed=2), model=lambda: nn.Linear(3, 2), data=_linear_data)
    assert not np.array_equal(a.initial_params(), b.initial_params())


def test_flip_labels_and_evaluate() -> None:
    task = ModuleTask(_ctx(), model=lambda: nn.Linear(3, 2), data=_linear_data)
    w = task.initial_params()
    honest = task.partition_gradients(w, 0, [0])
    flipped = task.partition_gradients(w, 0, [0], flip_labels=True)
    assert not np.array_equal(honest, flipped)
    metrics = task.evaluate(w)
    assert set(metrics) == {"test_loss", "test_accuracy"} and 0 <= metrics["test_accuracy"] <= 1
    for t in range(200):
        w = w - 0.5 * task.partition_gradients(w, t, range(4)).mean(axis=0)
    assert task.evaluate(w)["test_accuracy"] > 0.9  # x0 > 0 is linearly separable


def test_regression_without_test_data() -> None:
    def data() -> tuple[Any, None]:
        x = np.arange(32, dtype=np.float64).reshape(16, 2)
        return (x, x.sum(axis=1, keepdims=True)), None

    task = ModuleTask(
        _ctx(batch_size=4),
        model=lambda: nn.Linear(2, 1),
        data=data,
        loss=F.mse_loss,
        classification=False,
    )
    w = task.initial_params()
    assert task.evaluate(w) == {}
    g, neg = (
        task.partition_gradients(w, 0, [0]),
        task.partition_gradients(w, 0, [0], flip_labels=True),
    )
    assert not np.array_equal(g, neg)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (lambda: (42, None), "must be a map-style torch Dataset or a pair"),
        (lambda: ((np.zeros((4, 2)), np.zeros(3)), None), "equal counts"),
        (lambda: ((np.zeros((0, 2)), np.zeros(0)), None), "no samples"),
        (lambda: "train", "must return .train, test."),
        (lambda: ((np.zeros((4, 2)), np.zeros(4)), None), "exceeds the 4 training samples"),
    ],
)
def test_bad_data_is_a_config_error(data: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModuleTask(_ctx(), model=lambda: nn.Linear(2, 2), data=data)


def test_batch_norm_state_is_refused_for_now() -> None:
    with pytest.raises(ConfigError, match="batch-norm running statistics"):
        ModuleTask(
            _ctx(),
            model=lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
            data=_linear_data,
        )
    # Without running statistics the layer has no state beyond its parameters: accepted.
    ModuleTask(
        _ctx(),
        model=lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)),
        data=_linear_data,
    )


def test_the_example_task(example_path: None) -> None:
    s = spec(options={"width": 2, "n_train": 64, "n_test": 32})
    task = make_task(s, allowed=(EXAMPLE,))
    assert task.spec() == s and task.dim > 0
    again = make_task(dict(s), allowed=(EXAMPLE,))
    w = task.initial_params()
    np.testing.assert_array_equal(
        task.partition_gradients(w, 2, [1, 3]), again.partition_gradients(w, 2, [1, 3])
    )


# -- flags --------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_task_arguments(p)
    return p.parse_args(list(argv))


def test_task_flags_and_file(tmp_path: Path) -> None:
    toml = tmp_path / "task.toml"
    toml.write_text('task = "pkg.mod:make"\n[options]\nwidth = 8\nnames = ["a", "b"]\n')
    got = task_spec_from_args(
        _args("--task-file", str(toml), "--task-option", "width=4", "--task-option", "x=none"),
        6,
        9,
    )
    assert got == {
        "model": CUSTOM_MODEL,
        "factory": "pkg.mod:make",
        "options": {"width": 4, "names": ["a", "b"], "x": None},
        "n_partitions": 6,
        "batch_size": 32,
        "seed": 9,
        "data_dir": None,
    }
    flags = _args("--task", "other.mod:f", "--task-file", str(toml))
    assert task_spec_from_args(flags, 6, 9)["factory"] == "other.mod:f"
    assert task_spec_from_args(_args(), 6, 9)["model"] == "fc"  # the default is unchanged


@pytest.mark.parametrize(
    ("argv", "toml", "match"),
    [
        (["--model", "fc", "--task", "a:b"], None, "--model or --task"),
        (["--task-option", "a=1"], None, "need a factory"),
        (["--task", "a:b", "--task-option", "novalue"], None, "KEY=VALUE"),
        (["--task", "os:path.join"], None, "package.module:function"),
        ([], "task = 5", "task must be a string"),
        ([], "task = 'a:b'\noptions = 3", "options must be a table"),
        ([], "tsk = 'a:b'", "unknown keys"),
        ([], "task = ", "not valid TOML"),
    ],
)
def test_task_flag_errors(tmp_path: Path, argv: list[str], toml: str | None, match: str) -> None:
    if toml is not None:
        (tmp_path / "t.toml").write_text(toml)
        argv = [*argv, "--task-file", str(tmp_path / "t.toml")]
    with pytest.raises(ConfigError, match=match):
        task_spec_from_args(_args(*argv), 6, 9)


def test_missing_task_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read --task-file"):
        task_spec_from_args(_args("--task-file", str(tmp_path / "nope.toml")), 6, 9)


# -- devices ----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device")
def test_cuda_without_a_gpu_is_a_clear_error_for_every_torch_task() -> None:
    builtin = {"model": "logreg", "dataset": "synthetic", "data_dir": None}
    builtin.update(n_partitions=2, batch_size=4, seed=0)
    with pytest.raises(ConfigError, match=r"--device cuda: .*use --device cpu"):
        make_task(builtin, device="cuda")
    with pytest.raises(ConfigError, match="--device cuda: "):
        ModuleTask(_ctx(device="cuda"), model=lambda: nn.Linear(3, 2), data=_linear_data)


def test_device_names_and_numpy_tasks() -> None:
    lstsq = {"model": "lstsq", "dim": 4, "n_partitions": 2, "batch_size": 4, "seed": 0}
    with pytest.raises(ConfigError, match="lstsq task computes with numpy"):
        make_task(lstsq, device="mps")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        make_task(lstsq, device="tpu")
    assert make_task(lstsq, device="cpu").dim == 4
