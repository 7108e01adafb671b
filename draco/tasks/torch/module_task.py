"""``ModuleTask``: a DRACO task from an ordinary torch ``nn.Module`` and a data set.

A plug-in task factory (docs/tasks.md) usually ends in one line::

    def make_task(ctx: TaskContext, width: int = 8) -> ModuleTask:
        return ModuleTask(ctx, model=lambda: SmallCNN(width), data=make_data)

where ``make_data()`` returns ``(train, test)``, each either a map-style
``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs, or a pair of arrays / tensors
``(X, Y)`` with the samples along the first axis (``test`` may be None: no evaluation).

What the helper guarantees (the same as the built-in tasks, draco.tasks.torch.task):

- the samples of partition k in round t come from ``draco.tasks.sampler.PartitionSampler`` only,
  a pure function of (seed, round, partition);
- torch's global RNG is seeded from (seed, round, partition) around each partition's batch
  and forward pass, so dropout and any torch-random augmentation in ``Dataset.__getitem__``
  draw the same numbers on every replica of the partition;
- one torch thread, deterministic algorithms, float32 parameters;
- the initial parameters are the module's own initialisation under ``torch.manual_seed``
  of the run's seed (only the parameter server's copy is used: it broadcasts the model).

Not yet supported: modules whose state is not a gradient, i.e. batch-norm running
statistics (refused with a clear error). Carrying such state through the code is the
optional "state" part of the contract that is being added (issue 12, item 3).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, default_collate

from draco.errors import ConfigError
from draco.tasks.contract import TaskContext, check_params
from draco.tasks.sampler import PartitionSampler
from draco.tasks.torch.device import check_device, configure_torch
from draco.tasks.torch.models import bind_flat_storage

#: ``(X, Y)`` arrays / tensors, or a map-style Dataset of ``(x, y)`` items.
DataLike = Dataset[Any] | tuple[Any, Any]
EVAL_BATCH = 1000  # test samples per forward pass in evaluate()
_RNG_STREAM = 0x7A5C  # separates the per-partition torch seed from other streams of the seed


class _Source:
    """Uniform access to arrays or a Dataset: ``len`` and ``batch(indices) -> (x, y)``."""

    def __init__(self, data: Any, what: str) -> None:
        if isinstance(data, tuple):
            if len(data) != 2:
                raise ConfigError(f"{what} arrays must be a pair (X, Y), got {len(data)} items")
            x, y = (torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a) for a in data)
            if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
                raise ConfigError(
                    f"{what} X and Y must have the samples along axis 0 with equal counts, "
                    f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
                )
            if x.is_floating_point():
                x = x.to(torch.float32)  # float32 throughout: float64 inputs would promote
            self.x: torch.Tensor | None = x
            self.y: torch.Tensor | None = y
            self.dataset: Any = None
            self.n = int(x.shape[0])
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self.x = self.y = None
            self.dataset = data
            self.n = len(data)
        else:
            raise ConfigError(
                f"{what} must be a map-style torch Dataset or a pair of arrays (X, Y), got "
                f"{type(data).__name__}"
            )
        if self.n < 1:
            raise ConfigError(f"{what} holds no samples")

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x is not None and self.y is not None:
            t = torch.from_numpy(idx)
            return self.x.index_select(0, t), self.y.index_select(0, t)
        items = [self.dataset[int(i)] for i in idx]
        try:
            x, y = default_collate(items)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"the data set's items must be (x, y) pairs of tensors / numbers: {exc}"
            ) from exc
        if torch.is_tensor(x) and x.is_floating_point():
            x = x.to(torch.float32)
        return x, y


def _stateful_norm_layers(model: nn.Module) -> list[str]:
    """Names of layers that keep running statistics (state that is not a gradient)."""
    norm_base = nn.modules.batchnorm._NormBase
    return [
        name or type(mod).__name__
        for name, mod in model.named_modules()
        if isinstance(mod, norm_base) and mod.track_running_stats
    ]


class ModuleTask:
    """A ``draco.tasks.contract.Task`` around a torch module factory and a data factory.

    Parameters
    ----------
    ctx : TaskContext
        What the factory was given (partitions, batch size, seed, device, spec).
    model : callable () -> nn.Module
        Builds the network; called once per purpose (gradients, evaluation). Its output
        for a batch of B samples is what ``loss`` takes (logits (B, C) for classification).
    data : callable () -> (train, test)
        Builds the data once per process; ``train`` and ``test`` are each a map-style
        ``torch.utils.data.Dataset`` of ``(x, y)`` or a pair ``(X, Y)`` of arrays / tensors
        (floating inputs are cast to float32). ``test`` may be None.
    loss : callable (output, target) -> scalar tensor, optional
        Mean loss over the batch; default ``F.cross_entropy``.
    classification : bool
        Report ``test_accuracy`` (argmax of the output vs. integer targets) besides
        ``test_loss``, and flip labels y -> C-1-y for the ``label_flip`` attack (C = the
        output's width). False: regression, the attack negates the targets.

    Raises
    ------
    ConfigError
        Empty or malformed data, a batch size larger than the training set, a model with
        batch-norm running statistics, an unavailable device.
    """

    def __init__(
        self,
        ctx: TaskContext,
        model: Callable[[], nn.Module],
        data: Callable[[], tuple[DataLike, DataLike | None]],
        *,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        classification: bool = True,
    ) -> None:
        self.ctx = ctx
        self.device = check_device(ctx.device)
        configure_torch(ctx.device)
        self.loss = loss or F.cross_entropy
        self.classification = classification
        got = data()
        if not isinstance(got, tuple) or len(got) != 2:
            raise ConfigError("the data factory must return (train, test); test may be None")
        self.train = _Source(got[0], "the training data")
        self.test = None if got[1] is None else _Source(got[1], "the test data")
        self.sampler = PartitionSampler(self.train.n, ctx.n_partitions, ctx.batch_size, ctx.seed)
        # The initial parameters: the module's own init under the run's seed, without
        # touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            grad_model = model()
        if not isinstance(grad_model, nn.Module):
            raise ConfigError(f"the model factory returned a {type(grad_model).__name__}")
        stateful = _stateful_norm_layers(grad_model)
        if stateful:
            raise ConfigError(
                f"the model has batch-norm running statistics ({', '.join(stateful[:3])}); "
                "carrying them through the code is not supported by ModuleTask yet: use "
                "track_running_stats=False, or GroupNorm / LayerNorm"
            )
        for p in grad_model.parameters():
            if p.dtype != torch.float32:
                raise ConfigError(f"parameters must be float32, got {p.dtype}")
        init = torch.nn.utils.parameters_to_vector(grad_model.parameters()).detach()
        self._init: np.ndarray = init.to(torch.float32).numpy().copy()
        self._grad_model = grad_model.to(self.device)
        self._grad_flat = bind_flat_storage(self._grad_model)
        self._grad_params = list(self._grad_model.parameters())
        # Evaluation runs on the CPU in its own model, so the PS's evaluation thread never
        # races a gradient computation of an in-process worker.
        eval_model = model()
        self._eval_flat = bind_flat_storage(eval_model)
        self._eval_model = eval_model
        self._dim = int(self._grad_flat.numel())
        if int(self._eval_flat.numel()) != self._dim:
            raise ConfigError("the model factory built two models of different sizes")
        self._grad_lock = threading.Lock()
        self._eval_lock = threading.Lock()

    # -- the Task protocol

    @property
    def dim(self) -> int:
        """Number of float32 parameters."""
        return self._dim

    def spec(self) -> dict[str, Any]:
        """The spec the factory was called with (``ctx.spec``)."""
        return dict(self.ctx.spec)

    def initial_params(self) -> np.ndarray:
        """The module's initialisation under ``torch.manual_seed(seed)``: float32, (dim,)."""
        return self._init.copy()

    def _partition_seed(self, round_index: int, partition: int) -> int:
        seq = np.random.SeedSequence([self.ctx.seed, _RNG_STREAM, round_index, partition])
        return int(seq.generate_state(1, dtype=np.uint64)[0] >> 1)

    def _seed_torch(self, seed: int) -> None:
        # On the CPU only the default generator matters; torch.manual_seed would also seed
        # every accelerator's generators, about 100x the cost (benchmarks/results.md).
        if self.device.type == "cpu":
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)

    def _check_params(self, params: np.ndarray) -> torch.Tensor:
        w = check_params(params, self._dim)
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))

    def partition_gradients(
        self,
        params: np.ndarray,
        round_index: int,
        partitions: Sequence[int],
        *,
        flip_labels: bool = False,
    ) -> np.ndarray:
        """Gradient of each partition's mean loss.

        ``Task.partition_gradients``: params (dim,) float32 -> (len(partitions), dim)
        float32, bit-identical for the same arguments on the same device type; round t
        selects the samples and the torch seed with the partition; ``flip_labels`` is the
        ``label_flip`` attack (see the class docstring).
        """
        w = self._check_params(params)
        out = np.empty((len(partitions), self._dim), dtype=np.float32)
        out_t = torch.from_numpy(out)
        model = self._grad_model
        with self._grad_lock:
            with torch.no_grad():
                self._grad_flat.copy_(w)
            model.train()
            for row, k in enumerate(partitions):
                with torch.random.fork_rng(
                    devices=[] if self.device.type == "cpu" else None,
                    device_type=self.device.type if self.device.type != "cpu" else "cuda",
                ):
                    self._seed_torch(self._partition_seed(round_index, int(k)))
                    x, y = self.train.batch(self.sampler.indices(round_index, int(k)))
                    x, y = x.to(self.device), y.to(self.device)
                    output = model(x)
                    if flip_labels:
                        y = (output.shape[-1] - 1) - y if self.classification else -y
                    loss = self.loss(output, y)
                grads = torch.autograd.grad(loss, self._grad_params)
                flat = [g.reshape(-1) for g in grads]
                if self.device.type == "cpu":
                    torch.cat(flat, out=out_t[row])  # straight into the result, no copy
                else:
                    out_t[row].copy_(torch.cat(flat))
        return out

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        """Mean test loss (and accuracy for classification); ``{}`` without test data.

        Returns
        -------
        dict
            ``{"test_loss": float, "test_accuracy": float in [0, 1]}``.
        """
        w = self._check_params(params)
        if self.test is None:
            return {}
        n = self.test.n
        loss_sum = 0.0
        correct = 0
        with self._eval_lock, torch.inference_mode():
            self._eval_flat.copy_(w)
            self._eval_model.eval()
            for start in range(0, n, EVAL_BATCH):
                x, y = self.test.batch(np.arange(start, min(n, start + EVAL_BATCH)))
                output = self._eval_model(x)
                loss_sum += float(self.loss(output, y)) * len(y)
                if self.classification:
                    correct += int((output.argmax(dim=-1) == y).sum())
        result = {"test_loss": loss_sum / n}
        if self.classification:
            result["test_accuracy"] = correct / n
        return result

    def __repr__(self) -> str:
        return (
            f"ModuleTask(factory={self.ctx.spec.get('factory')!r}, dim={self._dim}, "
            f"n_partitions={self.ctx.n_partitions}, batch_size={self.ctx.batch_size}, "
            f"device={self.ctx.device!r})"
        )
