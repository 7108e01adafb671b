"""The torch models and the flat float32 parameter vector they travel as.

Models (inputs are flattened 28x28 images, shape (B, 784), float32; outputs are logits (B, 10)):

- ``fc``: 784-800-500-10 with ReLU, the original DRACO code's MNIST network: 1,033,510
  parameters.
- ``lenet``: LeNet-5 for 28x28 inputs (conv 5x5 pad 2 -> 6, max-pool, conv 5x5 -> 16,
  max-pool, 400-120-84-10), ReLU: 61,706 parameters.
- ``logreg``: multinomial logistic regression 784-10: 7,850 parameters.

The flat vector is the concatenation of ``model.parameters()`` in registration order, each
flattened in C order (what ``torch.nn.utils.parameters_to_vector`` produces). The initial
vector is drawn with numpy from the seed alone (PyTorch's default layer initialisation
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases), so it does not depend on torch's
global RNG or version.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from draco.errors import ConfigError

MODEL_NAMES = ("fc", "lenet", "logreg")
N_FEATURES = 784
N_CLASSES = 10
_INIT_STREAM = 0x1A17  # separates the init RNG stream from the sampler's


class FC(nn.Module):
    """784-800-500-10 multilayer perceptron with ReLU."""

    def __init__(self, n_features: int = N_FEATURES, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, 800)
        self.fc2 = nn.Linear(800, 500)
        self.fc3 = nn.Linear(500, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet(nn.Module):
    """LeNet-5 for 28x28 grey images (the classic layout with ReLU and max-pooling)."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)  # 28x28 -> 28x28
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)  # 14x14 -> 10x10
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # -> 6x14x14
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # -> 16x5x5
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LogReg(nn.Module):
    """Multinomial logistic regression: one linear layer 784-10."""

    def __init__(self, n_features: int = N_FEATURES, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def create_model(name: str) -> nn.Module:
    """A new model by name, parameters not yet initialised from a seed (see ``build_model``)."""
    if name == "fc":
        return FC()
    if name == "lenet":
        return LeNet()
    if name == "logreg":
        return LogReg()
    raise ConfigError(f"unknown torch model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def param_count(model: nn.Module) -> int:
    """Number of scalar parameters (the flat vector's length)."""
    return sum(p.numel() for p in model.parameters())


def param_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each parameter, in the flat vector's order."""
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _fan_in(shape: tuple[int, ...]) -> int:
    # Linear weight (out, in); Conv weight (out, in, kh, kw): fan_in = in * kh * kw.
    return int(np.prod(shape[1:]))


def initial_vector(model: nn.Module, seed: int) -> np.ndarray:
    """Deterministic initial flat parameters for ``model``: float32, shape (dim,).

    Each layer's weight and bias are U(-b, b) with b = 1/sqrt(fan_in of the layer's weight),
    PyTorch's default for ``nn.Linear`` and ``nn.Conv2d``, drawn in parameter order from
    ``numpy.random.default_rng([seed, _INIT_STREAM])``.
    """
    rng = np.random.default_rng([seed, _INIT_STREAM])
    modules = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    chunks: list[np.ndarray] = []
    for m in modules:
        bound = 1.0 / math.sqrt(_fan_in(tuple(m.weight.shape)))
        for p in (m.weight, m.bias):
            if p is not None:
                chunks.append(rng.uniform(-bound, bound, p.numel()).astype(np.float32))
    out = np.concatenate(chunks)
    if out.size != param_count(model):
        # A layer type without an init rule was added: fail loudly rather than mis-align.
        raise RuntimeError("initial_vector does not cover every parameter of the model")
    return out


def flatten_params(model: nn.Module) -> np.ndarray:
    """The model's parameters as one new float32 vector of shape (dim,)."""
    with torch.no_grad():
        vec = nn.utils.parameters_to_vector(model.parameters())
    return vec.detach().to(torch.float32).numpy().copy()


def unflatten_params(model: nn.Module, vector: np.ndarray) -> None:
    """Copy a flat float32 vector of shape (dim,) into the model's parameters (in place)."""
    vec = np.asarray(vector)
    dim = param_count(model)
    if vec.shape != (dim,):
        raise ValueError(f"expected a parameter vector of shape ({dim},), got {vec.shape}")
    with torch.no_grad():
        nn.utils.vector_to_parameters(
            torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32)), model.parameters()
        )


def build_model(name: str, seed: int) -> nn.Module:
    """A model by name with the deterministic initial parameters of ``seed``."""
    model = create_model(name)
    unflatten_params(model, initial_vector(model, seed))
    return model


def bind_flat_storage(model: nn.Module) -> torch.Tensor:
    """Make every parameter a view into one flat float32 tensor and return that tensor.

    Loading a parameter vector then costs one ``flat.copy_(...)`` instead of one copy per
    layer, and the flat order is the ``parameters_to_vector`` order.
    """
    with torch.no_grad():
        flat = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        offset = 0
        for p in model.parameters():
            n = p.numel()
            p.data = flat[offset : offset + n].view_as(p)
            offset += n
    return flat
