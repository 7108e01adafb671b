"""Batch-norm under the code: the state vector, the payload's batch statistics, and the PS's
running-statistics update against torch's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from draco.ps.optim import SGD, SGDConfig
from draco.tasks.registry import make_task
from draco.tasks.running_stats import RunningStats, StatSegment
from draco.tasks.torch.models import (
    batch_norm_layers,
    buffer_count,
    build_model,
    create_model,
    initial_buffers,
    load_buffers,
    param_count,
)
from draco.tasks.torch.task import TorchTask


def bn_task(n_partitions: int = 1, **kw: object) -> TorchTask:
    spec = {"model": "lenet_bn", "dataset": "synthetic", "data_dir": None}
    spec.update({"n_partitions": n_partitions, "batch_size": 16, "seed": 2, **kw})
    task = make_task(spec)
    assert isinstance(task, TorchTask)
    return task


def torch_buffers(model: nn.Module) -> np.ndarray:
    """The model's buffers in state-vector order, as float32."""
    return np.concatenate(
        [b.detach().to(torch.float32).reshape(-1).numpy() for b in model.buffers()]
    )


def test_state_vector_layout() -> None:
    task = bn_task()
    model = create_model("lenet_bn")
    n = param_count(model)
    assert task.dim == n + buffer_count(model) == n + 2 * (6 + 16 + 120) + 3
    w = task.initial_params()
    # Parameters as build_model makes them, then the buffers as torch initialises them.
    built = build_model("lenet_bn", 2)
    np.testing.assert_array_equal(w[n:], initial_buffers(model))
    np.testing.assert_array_equal(w[n:], torch_buffers(built))
    np.testing.assert_array_equal(
        w[:n], nn.utils.parameters_to_vector(built.parameters()).detach().numpy()
    )
    rs = task.running_stats
    assert rs is not None and rs.n_params == n and rs.dim == task.dim
    assert [s.channels for s in rs.segments] == [6, 16, 120]


def test_models_without_batch_norm_are_unchanged() -> None:
    task = make_task(
        {"model": "lenet", "dataset": "synthetic", "n_partitions": 1, "batch_size": 4, "seed": 0}
    )
    assert isinstance(task, TorchTask) and task.running_stats is None
    assert task.dim == param_count(create_model("lenet"))


def test_payload_rows_carry_torchs_batch_statistics() -> None:
    task = bn_task(n_partitions=3)
    w = task.initial_params()
    g = task.partition_gradients(w, 1, [0, 2])
    n = task.running_stats.n_params if task.running_stats else 0
    for row, k in enumerate([0, 2]):
        # torch itself, momentum 1 from fresh buffers: running = the batch statistics.
        model = build_model("lenet_bn", 2)
        for bn in batch_norm_layers(model):
            bn.momentum = 1.0
        model.train()
        x, y = task.partition_batch(1, k)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        flat = torch.cat([t.reshape(-1) for t in grads]).numpy()
        np.testing.assert_array_equal(g[row, :n], flat)
        stats = []
        for bn in batch_norm_layers(model):
            stats += [bn.running_mean.numpy(), bn.running_var.numpy(), np.zeros(1, np.float32)]
        np.testing.assert_array_equal(g[row, n:], np.concatenate(stats))
    # Same bits from a second call (the engine's buffers are reset each time).
    assert task.partition_gradients(w, 1, [0, 2]).tobytes() == g.tobytes()


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_ps_running_stat_update_equals_torchs(momentum: float | None) -> None:
    # One partition per round: the PS's update from the decoded statistics must be what
    # torch's BN layers do in training mode over the same batches, bit for bit.
    task = bn_task(n_partitions=1)
    rs = task.running_stats
    assert rs is not None
    rs = RunningStats(
        rs.n_params, tuple(StatSegment(s.offset, s.channels, momentum) for s in rs.segments)
    )
    sgd = SGD(SGDConfig(lr=0.05, momentum=0.9), task.dim, rs)
    reference = build_model("lenet_bn", 2)
    for bn in batch_norm_layers(reference):
        bn.momentum = momentum
    reference.train()
    w = task.initial_params()
    n = rs.n_params
    for t in range(5):
        with torch.no_grad():
            nn.utils.vector_to_parameters(torch.from_numpy(w[:n].copy()), reference.parameters())
            reference(task.partition_batch(t, 0)[0])  # torch's own running-stat update
        w = sgd.step(w, task.partition_gradients(w, t, [0])[0])
        np.testing.assert_array_equal(w[n:], torch_buffers(reference))
    counters = [w[s.offset + 2 * s.channels] for s in rs.segments]
    assert counters == [5.0, 5.0, 5.0]


def test_mean_of_partition_statistics_and_no_decay_on_buffers() -> None:
    seg = StatSegment(offset=2, channels=2, momentum=0.1)
    rs = RunningStats(n_params=2, segments=(seg,))
    sgd = SGD(SGDConfig(lr=0.5, momentum=0.0, weight_decay=0.1), 7, rs)
    w = np.array([1.0, 2.0, 0.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    g = np.array([1.0, 1.0, 4.0, 8.0, 2.0, 2.0, 123.0], np.float32)
    out = sgd.step(w, g)
    f32 = np.float32
    np.testing.assert_array_equal(out[:2], w[:2] - f32(0.5) * (g[:2] + f32(0.1) * w[:2]))
    expected = f32(0.1) * g[2:6] + f32(0.9) * w[2:6]
    np.testing.assert_array_equal(out[2:6], expected)
    assert out[6] == 1.0  # the counter counts rounds; the payload's value there is ignored
    with pytest.raises(ValueError, match="cover"):
        SGD(SGDConfig(), 8, rs)


def test_evaluation_uses_the_running_statistics() -> None:
    task = bn_task()
    w = task.initial_params()
    base = task.evaluate(w)
    n = task.running_stats.n_params if task.running_stats else 0
    shifted = w.copy()
    shifted[n : n + 6] = 5.0  # the first BN layer's running mean
    assert task.evaluate(shifted)["test_loss"] != base["test_loss"]
    model = create_model("lenet_bn")
    load_buffers(model, shifted[n:])
    assert float(batch_norm_layers(model)[0].running_mean[0]) == 5.0


def test_lenet_bn_learns_with_ps_side_statistics() -> None:
    task = bn_task(n_partitions=2)
    sgd = SGD(SGDConfig(lr=0.05, momentum=0.9), task.dim, task.running_stats)
    w = task.initial_params()
    for t in range(40):
        w = sgd.step(w, task.partition_gradients(w, t, [0, 1]).sum(axis=0) / np.float32(2))
    trained = task.evaluate(w)["test_accuracy"]
    assert trained > 0.3  # chance is 0.1
    # The PS's running statistics are what make the eval-mode model work.
    n = task.running_stats.n_params if task.running_stats else 0
    stale = np.concatenate([w[:n], task.initial_params()[n:]])
    assert task.evaluate(stale)["test_accuracy"] < trained
