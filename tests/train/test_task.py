"""draco.tasks.torch.task.TorchTask: the Task contract, bit-identical gradients, learning."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from draco.errors import ConfigError, DataError
from draco.ps.optim import SGD, SGDConfig
from draco.tasks.contract import Task
from draco.tasks.registry import make_task
from draco.tasks.torch.models import build_model, unflatten_params
from draco.tasks.torch.task import TorchTask


def spec(model: str = "fc", **kw: object) -> dict[str, object]:
    s: dict[str, object] = {
        "model": model,
        "dataset": "synthetic",
        "data_dir": None,
        "n_partitions": 6,
        "batch_size": 32,
        "seed": 5,
    }
    s.update(kw)
    return s


def perturbed(task: TorchTask, seed: int = 0) -> np.ndarray:
    # Away from the initial point, so every layer has a non-trivial gradient.
    w = task.initial_params()
    return w + np.float32(0.01) * np.random.default_rng(seed).standard_normal(w.size).astype(
        np.float32
    )


def test_contract_and_spec_round_trip() -> None:
    task = make_task(spec())
    assert isinstance(task, TorchTask) and isinstance(task, Task)
    assert task.dim == 1_033_510
    assert task.spec() == spec()
    again = TorchTask.from_spec(task.spec())
    assert again.spec() == task.spec()
    w = task.initial_params()
    assert w.dtype == np.float32 and w.shape == (task.dim,)
    assert again.initial_params().tobytes() == w.tobytes()
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "fc"},  # no dataset
        spec(dataset="cifar"),
        spec(batch_size="many"),
        spec(batch_size=0),
        spec(n_partitions=0),
    ],
)
def test_bad_spec(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_task(bad)


def test_unknown_model_direct() -> None:
    with pytest.raises(ConfigError, match="unknown torch model"):
        TorchTask("vgg", "synthetic", 2, 8, 0)


def test_gradients_shape_and_bit_identical_across_instances() -> None:
    a = make_task(spec())
    b = make_task(spec())
    assert isinstance(a, TorchTask) and isinstance(b, TorchTask)
    w = perturbed(a)
    g1 = a.partition_gradients(w, 3, [0, 4, 5])
    assert g1.shape == (3, a.dim) and g1.dtype == np.float32
    assert np.isfinite(g1).all() and np.abs(g1).max() > 0
    g2 = b.partition_gradients(w.copy(), 3, [5, 0])
    assert g2[0].tobytes() == g1[2].tobytes()
    assert g2[1].tobytes() == g1[0].tobytes()
    # Interleaving other work (another round, an evaluation) does not disturb it.
    b.partition_gradients(perturbed(b, 1), 9, [1])
    b.evaluate(w)
    assert b.partition_gradients(w, 3, [4])[0].tobytes() == g1[1].tobytes()
    # Different partitions and rounds differ.
    assert not np.array_equal(g1[0], g1[1])
    assert not np.array_equal(a.partition_gradients(w, 4, [0])[0], g1[0])


@pytest.mark.parametrize("model", ["fc", "lenet"])
def test_gradients_identical_in_a_compute_thread(model: str) -> None:
    # The worker computes in its own thread: torch's one-thread setting must reach it.
    task = make_task(spec(model))
    assert isinstance(task, TorchTask)
    w = perturbed(task)
    here = task.partition_gradients(w, 2, [1, 3])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
        there = pool.submit(task.partition_gradients, w, 2, [1, 3]).result()
    assert here.tobytes() == there.tobytes()


_CHILD = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from draco.tasks.registry import make_task
    task = make_task({"model": "fc", "dataset": "synthetic", "data_dir": None,
                      "n_partitions": 6, "batch_size": 32, "seed": 5})
    w = task.initial_params()
    w = w + np.float32(0.01) * np.random.default_rng(0).standard_normal(w.size).astype(np.float32)
    g = task.partition_gradients(w, 3, [0, 4, 5])
    print(hashlib.sha256(g.tobytes()).hexdigest())
    """
)


def test_gradients_bit_identical_across_processes() -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    task = make_task(spec())
    assert isinstance(task, TorchTask)
    here = hashlib.sha256(task.partition_gradients(perturbed(task), 3, [0, 4, 5]).tobytes())
    assert outs[0] == outs[1] == here.hexdigest()


@pytest.mark.parametrize("model", ["fc", "lenet", "logreg"])
def test_gradient_matches_plain_torch(model: str) -> None:
    task = make_task(spec(model))
    assert isinstance(task, TorchTask)
    w = perturbed(task, 2)
    got = task.partition_gradients(w, 1, [2])[0]
    ref_model = build_model(model, seed=0)
    unflatten_params(ref_model, w)
    x, y = task.partition_batch(1, 2)
    F.cross_entropy(ref_model(x), y).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in ref_model.parameters() if p.grad is not None])
    assert ref.numel() == task.dim
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-7)


def test_gradient_matches_finite_differences() -> None:
    # Central differences of the float64 loss along random directions (logreg: small & smooth).
    task = make_task(spec("logreg"))
    assert isinstance(task, TorchTask)
    w = perturbed(task, 3)
    g = task.partition_gradients(w, 0, [1])[0].astype(np.float64)
    x, y = task.partition_batch(0, 1)
    x64 = x.double()

    def loss(v: np.ndarray) -> float:
        weight = torch.from_numpy(v[:7840].reshape(10, 784))
        bias = torch.from_numpy(v[7840:])
        return float(F.cross_entropy(x64 @ weight.T + bias, y))

    rng = np.random.default_rng(4)
    w64 = w.astype(np.float64)
    for _ in range(3):
        d = rng.standard_normal(w.size)
        d /= np.linalg.norm(d)
        eps = 1e-4
        fd = (loss(w64 + eps * d) - loss(w64 - eps * d)) / (2 * eps)
        assert fd == pytest.approx(float(g @ d), rel=1e-4, abs=1e-6)


def test_flip_labels() -> None:
    task = make_task(spec("logreg"))
    assert isinstance(task, TorchTask)
    _, y = task.partition_batch(2, 3)
    _, yf = task.partition_batch(2, 3, flip_labels=True)
    assert torch.equal(yf, 9 - y)
    w = perturbed(task)
    honest = task.partition_gradients(w, 2, [3])
    flipped = task.partition_gradients(w, 2, [3], flip_labels=True)
    assert not np.array_equal(honest, flipped)
    assert task.partition_gradients(w, 2, [3], flip_labels=True).tobytes() == flipped.tobytes()


def test_rejects_wrong_param_shape() -> None:
    task = make_task(spec("logreg"))
    with pytest.raises(ValueError, match="shape"):
        task.partition_gradients(np.zeros(5, np.float32), 0, [0])
    with pytest.raises(ValueError, match="shape"):
        task.evaluate(np.zeros(5, np.float32))


def test_evaluate_at_init_is_chance() -> None:
    task = make_task(spec())
    m = task.evaluate(task.initial_params())
    assert set(m) == {"test_accuracy", "test_loss"}
    assert 0.0 <= m["test_accuracy"] < 0.2
    assert m["test_loss"] == pytest.approx(np.log(10), rel=0.1)


def test_fc_learns_the_synthetic_task() -> None:
    # Plain minibatch SGD through the Task interface, as the parameter server does it:
    # mean of the partition gradients -> draco.ps.optim.SGD (lr 0.01, momentum 0.9).
    task = make_task(spec("fc", n_partitions=2, batch_size=32, seed=0))
    w = task.initial_params()
    sgd = SGD(SGDConfig(lr=0.01, momentum=0.9), task.dim)
    for t in range(150):
        g = task.partition_gradients(w, t, [0, 1])
        w = sgd.step(w, g.sum(axis=0) / np.float32(2))
    metrics = task.evaluate(w)
    assert metrics["test_accuracy"] > 0.9, metrics


def _mnist_root() -> Path | None:
    for root in (os.environ.get("DRACO_DATA"), "/work/shared/data"):
        if root and Path(root, "mnist").is_dir():
            return Path(root)
    return None


def test_mnist_task() -> None:
    root = _mnist_root()
    if root is None:
        pytest.skip(
            "MNIST not found: set DRACO_DATA to a folder holding mnist/ (e.g. ../shared/data)"
        )
    task = make_task(spec("logreg", dataset="mnist", data_dir=str(root), n_partitions=4))
    assert isinstance(task, TorchTask)
    x, _ = task.partition_batch(0, 0)
    assert x.dtype == torch.float32 and x.shape == (32, 784)
    assert -0.5 < float(x.min()) < -0.4  # (0 - 0.1307) / 0.3081
    w = task.initial_params()
    sgd = SGD(SGDConfig(lr=0.05, momentum=0.9), task.dim)
    for t in range(40):
        w = sgd.step(w, task.partition_gradients(w, t, range(4)).mean(axis=0))
    assert task.evaluate(w)["test_accuracy"] > 0.7


def test_missing_dataset_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from draco.tasks.torch import data

    monkeypatch.delenv("DRACO_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": ()})
    with pytest.raises(DataError, match="draco-data mnist"):
        make_task(spec(dataset="mnist", data_dir=str(tmp_path / "none")))
