"""The torch models and the flat float32 parameter vector they travel as.

Models (inputs are flattened 28x28 images, shape (B, 784), float32; outputs are logits (B, 10)):

- ``fc``: 784-800-500-10 with ReLU, the original DRACO code's MNIST network: 1,033,510
  parameters.
- ``lenet``: LeNet-5 for 28x28 inputs (conv 5x5 pad 2 -> 6, max-pool, conv 5x5 -> 16,
  max-pool, 400-120-84-10), ReLU: 61,706 parameters.
- ``logreg``: multinomial logistic regression 784-10: 7,850 parameters.
- ``lenet_bn``: LeNet-5 with batch-norm after each hidden layer (conv biases dropped, the
  BN shift replaces them): 61,848 parameters plus 2 * (6 + 16 + 120) running statistics and 3
  batch counters. The small batch-norm network the tests train.
- ``resnet18``: the CIFAR variant of ResNet-18 (He et al. 2016; the layout of the usual CIFAR
  code, e.g. kuangliu/pytorch-cifar): 3x3 stride-1 stem without max-pool, four stages of two
  BasicBlocks (64, 128, 256, 512 channels), 1x1 projection shortcuts where the shape changes,
  4x4 average pool, 512-10. Inputs (B, 3072) = 3x32x32 channel-major. 11,173,962
  parameters plus 2 * 4,800 running statistics and 20 batch counters.

The flat vector is the concatenation of ``model.parameters()`` in registration order, each
flattened in C order (what ``torch.nn.utils.parameters_to_vector`` produces). A model with
batch-norm travels as its *state*: that vector followed by ``model.buffers()`` in order (per
BN layer: running mean (C), running variance (C), num_batches_tracked (1), as float32; see
``buffer_layout`` and ``draco.tasks.running_stats.RunningStats``). The initial
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
from draco.tasks.running_stats import RunningStats, StatSegment

MODEL_NAMES = ("fc", "lenet", "logreg", "lenet_bn", "resnet18")
#: (C, H, W) of the images each model takes (flattened, channel-major).
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "fc": (1, 28, 28),
    "lenet": (1, 28, 28),
    "logreg": (1, 28, 28),
    "lenet_bn": (1, 28, 28),
    "resnet18": (3, 32, 32),
}
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


class LeNetBN(nn.Module):
    """LeNet-5 with batch-norm (BatchNorm2d after each conv, BatchNorm1d after fc1)."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 5 * 5, 120, bias=False)
        self.bn3 = nn.BatchNorm1d(120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)  # -> 6x14x14
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)  # -> 16x5x5
        x = torch.relu(self.bn3(self.fc1(x.flatten(1))))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images: 3x3 stem, no max-pool (see the module docstring)."""

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x.view(-1, 3, 32, 32))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # -> 512x4x4
        out = torch.flatten(torch.nn.functional.avg_pool2d(out, 4), 1)
        return self.linear(out)


def create_model(name: str) -> nn.Module:
    """A new model by name, parameters not yet initialised from a seed (see ``build_model``)."""
    if name == "fc":
        return FC()
    if name == "lenet":
        return LeNet()
    if name == "logreg":
        return LogReg()
    if name == "lenet_bn":
        return LeNetBN()
    if name == "resnet18":
        return ResNet18()
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


_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def initial_vector(model: nn.Module, seed: int) -> np.ndarray:
    """Deterministic initial flat parameters for ``model``: float32, shape (dim,).

    Each Linear / Conv2d layer's weight and bias are U(-b, b) with b = 1/sqrt(fan_in of the
    layer's weight), PyTorch's default for ``nn.Linear`` and ``nn.Conv2d``, drawn in parameter
    order from ``numpy.random.default_rng([seed, _INIT_STREAM])``. Batch-norm layers start at
    weight 1, bias 0 (PyTorch's default; they draw nothing, so models without batch-norm keep
    the vectors they always had).
    """
    rng = np.random.default_rng([seed, _INIT_STREAM])
    chunks: list[np.ndarray] = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            bound = 1.0 / math.sqrt(_fan_in(tuple(m.weight.shape)))
            for p in (m.weight, m.bias):
                if p is not None:
                    chunks.append(rng.uniform(-bound, bound, p.numel()).astype(np.float32))
        elif isinstance(m, _BN) and m.affine:
            chunks += [np.ones(m.num_features, np.float32), np.zeros(m.num_features, np.float32)]
    out = np.concatenate(chunks)
    if out.size != param_count(model):
        # A layer type without an init rule was added: fail loudly rather than mis-align.
        raise RuntimeError("initial_vector does not cover every parameter of the model")
    return out


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers in ``model.modules()`` (= ``model.buffers()``) order."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        if not m.track_running_stats:
            raise ConfigError(f"{type(m).__name__} without running statistics is not supported")
    return layers


def buffer_count(model: nn.Module) -> int:
    """Entries the buffers add to the state vector: 2C + 1 per batch-norm layer."""
    return sum(2 * m.num_features + 1 for m in batch_norm_layers(model))


def buffer_layout(model: nn.Module) -> RunningStats | None:
    """Where the running statistics sit in the state vector (None: no batch-norm)."""
    layers = batch_norm_layers(model)
    if not layers:
        return None
    offset = param_count(model)
    segments = []
    for m in layers:
        segments.append(StatSegment(offset, m.num_features, m.momentum))
        offset += 2 * m.num_features + 1
    return RunningStats(n_params=param_count(model), segments=tuple(segments))


def initial_buffers(model: nn.Module) -> np.ndarray:
    """The buffers' initial values: per layer mean 0 (C), var 1 (C), counter 0; float32."""
    chunks: list[np.ndarray] = []
    for m in batch_norm_layers(model):
        c = m.num_features
        chunks += [np.zeros(c, np.float32), np.ones(c, np.float32), np.zeros(1, np.float32)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def initial_state(model: nn.Module, seed: int) -> np.ndarray:
    """``initial_vector`` followed by ``initial_buffers``: float32, (dim + buffer_count,)."""
    return np.concatenate([initial_vector(model, seed), initial_buffers(model)])


def load_buffers(model: nn.Module, tail: np.ndarray) -> None:
    """Copy the state vector's buffer part (float32, (buffer_count,)) into the BN layers."""
    t = np.asarray(tail, dtype=np.float32)
    if t.shape != (buffer_count(model),):
        raise ValueError(f"expected {buffer_count(model)} buffer entries, got {t.shape}")
    offset = 0
    with torch.no_grad():
        for m in batch_norm_layers(model):
            c = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.from_numpy(t[offset : offset + c]))
            m.running_var.copy_(torch.from_numpy(t[offset + c : offset + 2 * c]))
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(int(t[offset + 2 * c]))
            offset += 2 * c + 1


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
