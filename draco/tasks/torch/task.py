"""``TorchTask``: torch models on MNIST, Fashion-MNIST, CIFAR-10 or synthetic data as a ``Task``.

Determinism (DRACO's promise rests on it: every worker holding partition k must produce the
bit-identical gradient g_k):

- the samples of partition k in round t come from ``draco.tasks.sampler.PartitionSampler`` only;
- ``torch.set_num_threads(1)``: one torch thread per process, hence per logical worker (a
  worker process computes its logical workers' gradients one at a time in one thread). A
  multi-threaded reduction could sum in a different order from run to run;
- ``torch.use_deterministic_algorithms(True)``;
- float32 throughout; pixels are normalised through a fixed float32 lookup table;
- no dropout; CIFAR-10's augmentation (random crop with 4-pixel zero padding, horizontal
  flip) is drawn from ``PartitionSampler.augmentation``, a pure function of
  (seed, round, partition), and applied to the uint8 pixels by integer indexing (exact).

Batch-norm (``lenet_bn``, ``resnet18``): the task's vector is the model's *state*,
parameters then buffers (``draco.tasks.torch.models.buffer_layout``). The gradients are taken in
training mode (batch statistics, as torch trains); each payload row carries, after the
gradient, that partition's batch mean and unbiased variance per BN layer (0 in the counter's
place), read from torch itself: the gradient model's BN layers run with momentum 1, so after
the forward pass their running buffers hold exactly the batch statistics torch computed. The
PS then updates the running statistics from the decoded mean
(``draco.tasks.running_stats.RunningStats``) and evaluates in eval mode with them. A worker
never uses the buffers it receives.

Both settings are process-wide (``draco.tasks.torch.device.configure_torch``), so constructing a
``TorchTask`` sets them for the whole process (the parameter server's evaluation then runs
single-threaded too). ``device="cuda"``/``"mps"`` computes the gradients there (evaluation
stays on the CPU); see draco.tasks.torch.device for what that means for the vote.

Performance: the dataset is loaded once per process and shared by every task instance (the
logical workers of one process); one model per (architecture, purpose) per process is reused,
its parameters live in one flat tensor, so loading a parameter vector is a single copy.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from draco.errors import ConfigError
from draco.tasks.contract import check_params
from draco.tasks.running_stats import RunningStats
from draco.tasks.sampler import PartitionSampler
from draco.tasks.torch.data import Dataset
from draco.tasks.torch.datasets import DATASET_NAMES, load_dataset
from draco.tasks.torch.device import check_device, configure_torch
from draco.tasks.torch.models import (
    INPUT_SHAPES,
    MODEL_NAMES,
    batch_norm_layers,
    bind_flat_storage,
    buffer_count,
    buffer_layout,
    create_model,
    initial_state,
    load_buffers,
)

CROP_PADDING = 4  # pixels of zero padding around a CIFAR-10 image before the random crop

EVAL_BATCH = 1000  # test samples per forward pass in evaluate()


@dataclass
class _Engine:
    """A reusable model whose parameters are views into ``flat`` (float32, (dim,))."""

    model: nn.Module
    flat: torch.Tensor
    params: list[nn.Parameter]
    lock: threading.Lock


_ENGINES: dict[tuple[str, str, str], _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(model_name: str, purpose: str, device: str = "cpu") -> _Engine:
    # "grad" and "eval" get separate models, so an evaluation in one thread never races a
    # gradient computation in another (in-process tests run server and workers together).
    key = (model_name, purpose, device)
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            model = create_model(model_name).to(device)
            flat = bind_flat_storage(model)
            if purpose == "grad":
                # Momentum 1: after a training-mode forward pass the running buffers hold
                # exactly the batch statistics (torch computes f*batch + (1-f)*running).
                for bn in batch_norm_layers(model):
                    bn.momentum = 1.0
            else:
                model.eval()
            eng = _Engine(model, flat, list(model.parameters()), threading.Lock())
            _ENGINES[key] = eng
        return eng


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    # Zero-copy view of the (read-only, shared) dataset; torch warns about read-only arrays,
    # but these tensors are only ever read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


class TorchTask:
    """A torch classification task (see module docstring).

    Parameters
    ----------
    model : str
        ``fc``, ``lenet`` or ``logreg``.
    dataset : str
        ``synthetic``, ``mnist``, ``fashion-mnist`` or ``cifar10``.
    n_partitions : int
        Gradient partitions per round.
    batch_size : int
        Samples per partition per round.
    seed : int
        Seeds the initial parameters and the sampler's shuffling.
    data_dir : str, optional
        Where to look for the IDX or CIFAR-10 files first (see ``draco.tasks.torch.data``).
    device : str
        Where gradients are computed: ``cpu`` (default), ``cuda`` or ``mps`` (not part of
        the spec: each worker chooses its own; evaluation always runs on the CPU).

    Raises
    ------
    ConfigError
        Unknown model or dataset, bad sizes.
    DataError
        The dataset's files are missing or damaged.
    """

    def __init__(
        self,
        model: str,
        dataset: str,
        n_partitions: int,
        batch_size: int,
        seed: int,
        data_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        if model not in MODEL_NAMES:
            raise ConfigError(
                f"unknown torch model {model!r}; choose one of {', '.join(MODEL_NAMES)}"
            )
        if dataset not in DATASET_NAMES:
            raise ConfigError(
                f"unknown dataset {dataset!r}; choose one of {', '.join(DATASET_NAMES)}"
            )
        self.device = check_device(device)
        configure_torch(device)
        self._spec: dict[str, Any] = {
            "model": model,
            "dataset": dataset,
            "data_dir": data_dir,
            "n_partitions": int(n_partitions),
            "batch_size": int(batch_size),
            "seed": int(seed),
        }
        self.model_name = model
        self.seed = int(seed)
        self.data: Dataset = load_dataset(dataset, data_dir)
        self.n_classes = self.data.n_classes
        self.sampler = PartitionSampler(len(self.data.train_labels), n_partitions, batch_size, seed)
        self._grad = _engine(model, "grad", device)
        self._eval = _engine(model, "eval")
        if self.data.image_shape != INPUT_SHAPES[model]:
            c, h, w = self.data.image_shape
            raise ConfigError(
                f"--model {model} takes {'x'.join(map(str, INPUT_SHAPES[model]))} images but "
                f"--dataset {dataset} has {c}x{h}x{w}: use --model resnet18 with cifar10, and "
                "fc, lenet, lenet_bn or logreg with mnist, fashion-mnist or synthetic"
            )
        self._n_params = int(self._grad.flat.numel())
        self._dim = self._n_params + buffer_count(self._grad.model)
        #: Where the batch-norm buffers sit in the state vector (None: no batch-norm); the
        #: PS hands it to ``draco.ps.optim.SGD``.
        self.running_stats: RunningStats | None = buffer_layout(self._grad.model)
        self._bn = batch_norm_layers(self._grad.model)
        self._train_x = _as_tensor(self.data.train_images)
        self._train_y = _as_tensor(self.data.train_labels)
        self._test_x = _as_tensor(self.data.test_images)
        self._test_y = _as_tensor(self.data.test_labels)
        # uint8 pixels -> float32 through a 256-entry table per channel: exact, identical
        # everywhere. Gathered from one flat (C*256,) table: pixel i of channel c reads
        # entry c*256 + value (the offsets are one row of c*256 per pixel).
        self._lut: torch.Tensor | None = None
        self._lut_offsets: torch.Tensor | None = None
        if self.data.train_images.dtype == np.uint8:
            c, h, w = self.data.image_shape
            self._lut = torch.from_numpy(self.data.pixel_lut().reshape(-1))
            self._lut_offsets = torch.arange(c, dtype=torch.int64).repeat_interleave(h * w) * 256

    @classmethod
    def from_spec(cls, spec: dict[str, Any], *, device: str = "cpu") -> TorchTask:
        """Rebuild a task from ``spec()`` (as sent to workers). ``ConfigError`` if malformed."""
        try:
            data_dir = spec.get("data_dir")
            return cls(
                model=str(spec["model"]),
                dataset=str(spec["dataset"]),
                n_partitions=int(spec["n_partitions"]),
                batch_size=int(spec["batch_size"]),
                seed=int(spec["seed"]),
                data_dir=None if data_dir is None else str(data_dir),
                device=device,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"bad torch task spec {spec!r}: {exc!r}") from exc

    # -- the Task protocol

    @property
    def dim(self) -> int:
        """Number of float32 parameters."""
        return self._dim

    def spec(self) -> dict[str, Any]:
        """JSON/msgpack-able spec; ``TorchTask.from_spec(spec)`` rebuilds this task."""
        return dict(self._spec)

    def initial_params(self) -> np.ndarray:
        """Deterministic initial state from the seed: float32, shape (dim,) (params, buffers)."""
        return initial_state(self._grad.model, self.seed)

    def _normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        # uint8 (B, C*H*W) -> float32 through the per-channel tables; float data as it is.
        if self._lut is None or self._lut_offsets is None:
            return pixels
        return self._lut[pixels.to(torch.int64) + self._lut_offsets]

    def _augmented(self, pixels: np.ndarray, round_index: int, partition: int) -> np.ndarray:
        """Random crop (zero padding ``CROP_PADDING``) and horizontal flip of uint8 images.

        pixels: (B, C*H*W) uint8 -> same shape; the draws are the sampler's for
        (round_index, partition), so every replica of the partition sees the same images.
        """
        c, h, w = self.data.image_shape
        pad = CROP_PADDING
        dy, dx, flip = self.sampler.augmentation(round_index, partition, 2 * pad + 1)
        b = pixels.shape[0]
        padded = np.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=np.uint8)
        padded[:, :, pad : pad + h, pad : pad + w] = pixels.reshape(b, c, h, w)
        rows = dy[:, None] + np.arange(h)  # (B, H)
        cols = np.where(flip[:, None], w - 1 - np.arange(w), np.arange(w)) + dx[:, None]
        out = padded[
            np.arange(b)[:, None, None, None],
            np.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return out.reshape(b, c * h * w)

    def partition_batch(
        self, round_index: int, partition: int, *, flip_labels: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, C*H*W) float32 and labels (B,) int64 of one partition in one round."""
        indices = self.sampler.indices(round_index, partition)
        idx = torch.from_numpy(indices)
        if self.data.augment:
            pixels = torch.from_numpy(
                self._augmented(self.data.train_images[indices], round_index, partition)
            )
        else:
            pixels = self._train_x.index_select(0, idx)
        x = self._normalized(pixels)
        y = self._train_y.index_select(0, idx)
        if flip_labels:
            y = (self.n_classes - 1) - y  # the label_flip attack: y -> C-1-y
        return x.to(self.device), y.to(self.device)

    def partition_gradients(
        self,
        params: np.ndarray,
        round_index: int,
        partitions: Sequence[int],
        *,
        flip_labels: bool = False,
    ) -> np.ndarray:
        """Mean cross-entropy gradient of each partition's batch (and its BN statistics).

        ``Task.partition_gradients``: params (dim,) float32 -> (len(partitions), dim)
        float32, bit-identical for the same arguments; round t selects the samples with the
        partition index; ``flip_labels`` trains on y -> C-1-y (the ``label_flip`` attack).
        Row i: the gradient (n_params entries), then per BN layer the batch mean (C),
        unbiased batch variance (C) and 0 (see the module docstring).
        """
        w = check_params(params, self._dim)
        out = np.empty((len(partitions), self._dim), dtype=np.float32)
        out_t = torch.from_numpy(out)
        eng = self._grad
        n = self._n_params
        with eng.lock:
            with torch.no_grad():
                eng.flat.copy_(torch.from_numpy(np.ascontiguousarray(w[:n], dtype=np.float32)))
            for row, k in enumerate(partitions):
                x, y = self.partition_batch(round_index, int(k), flip_labels=flip_labels)
                with torch.no_grad():
                    for bn in self._bn:  # finite start: 0 * running must stay 0
                        bn.reset_running_stats()
                loss = F.cross_entropy(eng.model(x), y)  # mean over the batch
                grads = torch.autograd.grad(loss, eng.params)
                if self.device.type == "cpu":
                    torch.cat([g.reshape(-1) for g in grads], out=out_t[row, :n])
                else:
                    out_t[row, :n].copy_(torch.cat([g.reshape(-1) for g in grads]))
                offset = n
                for bn in self._bn:
                    c = bn.num_features
                    assert bn.running_mean is not None and bn.running_var is not None
                    out_t[row, offset : offset + c] = bn.running_mean
                    out_t[row, offset + c : offset + 2 * c] = bn.running_var
                    out_t[row, offset + 2 * c] = 0.0
                    offset += 2 * c + 1
        return out

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        """Accuracy and mean cross-entropy on the test split.

        Returns
        -------
        dict
            ``{"test_accuracy": float in [0, 1], "test_loss": float}``.
        """
        w = check_params(params, self._dim)
        eng = self._eval
        n = int(self._test_y.numel())
        correct = 0
        loss_sum = 0.0
        p = self._n_params
        with eng.lock, torch.inference_mode():
            eng.flat.copy_(torch.from_numpy(np.ascontiguousarray(w[:p], dtype=np.float32)))
            load_buffers(eng.model, w[p:])
            for start in range(0, n, EVAL_BATCH):
                x = self._normalized(self._test_x[start : start + EVAL_BATCH])
                y = self._test_y[start : start + EVAL_BATCH]
                logits = eng.model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
        return {"test_accuracy": correct / n, "test_loss": loss_sum / n}

    def __repr__(self) -> str:
        s = self._spec
        return (
            f"TorchTask(model={s['model']!r}, dataset={s['dataset']!r}, dim={self._dim}, "
            f"n_partitions={s['n_partitions']}, batch_size={s['batch_size']}, seed={s['seed']})"
        )
