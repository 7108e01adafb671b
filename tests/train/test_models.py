"""draco.tasks.torch.models: sizes, the flat parameter vector, deterministic initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from draco.errors import ConfigError
from draco.tasks.torch.models import (
    INPUT_SHAPES,
    MODEL_NAMES,
    bind_flat_storage,
    build_model,
    create_model,
    flatten_params,
    initial_vector,
    param_count,
    param_layout,
    unflatten_params,
)


def test_fc_is_the_papers_network() -> None:
    model = create_model("fc")
    assert param_count(model) == 1_033_510
    assert [shape for _, shape in param_layout(model)] == [
        (800, 784),
        (800,),
        (500, 800),
        (500,),
        (10, 500),
        (10,),
    ]


@pytest.mark.parametrize(
    ("name", "count"),
    [("lenet", 61_706), ("logreg", 7_850), ("lenet_bn", 61_848), ("resnet18", 11_173_962)],
)
def test_other_sizes(name: str, count: int) -> None:
    assert param_count(create_model(name)) == count


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape(name: str) -> None:
    model = build_model(name, seed=0)
    n_features = int(np.prod(INPUT_SHAPES[name]))
    x = np.random.default_rng(0).standard_normal((5, n_features)).astype(np.float32)
    x = torch.from_numpy(x)
    assert model(x).shape == (5, 10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_flatten_unflatten_round_trip(name: str) -> None:
    model = create_model(name)
    d = param_count(model)
    vec = np.random.default_rng(1).standard_normal(d).astype(np.float32)
    unflatten_params(model, vec)
    back = flatten_params(model)
    assert back.dtype == np.float32 and back.shape == (d,)
    assert back.tobytes() == vec.tobytes()
    # The order is parameters() order, each parameter flattened in C order.
    first_name, first_shape = param_layout(model)[0]
    first = dict(model.named_parameters())[first_name].detach().numpy()
    n0 = int(np.prod(first_shape))
    assert np.array_equal(first.reshape(-1), vec[:n0])


def test_unflatten_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="shape"):
        unflatten_params(create_model("logreg"), np.zeros(7849, np.float32))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_initial_vector_is_deterministic(name: str) -> None:
    a = initial_vector(create_model(name), seed=3)
    b = initial_vector(create_model(name), seed=3)
    c = initial_vector(create_model(name), seed=4)
    assert a.dtype == np.float32 and a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    assert flatten_params(build_model(name, 3)).tobytes() == a.tobytes()


def test_initial_vector_uses_fan_in_bounds() -> None:
    vec = initial_vector(create_model("fc"), seed=0)
    w1 = vec[: 800 * 784]
    bound = 1 / np.sqrt(784)
    assert np.abs(w1).max() <= bound
    assert np.abs(w1).max() > 0.99 * bound  # spans the whole range
    w3 = vec[-(10 * 500 + 10) : -10]
    assert np.abs(w3).max() <= 1 / np.sqrt(500)


def test_bind_flat_storage_makes_parameters_views() -> None:
    model = create_model("logreg")
    flat = bind_flat_storage(model)
    vec = np.arange(flat.numel(), dtype=np.float32) / 1e4
    with torch.no_grad():
        flat.copy_(torch.from_numpy(vec))
    assert flatten_params(model).tobytes() == vec.tobytes()


def test_unknown_model() -> None:
    with pytest.raises(ConfigError, match="fc"):
        create_model("resnet")
