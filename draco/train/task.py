"""``TorchTask``: torch models on MNIST / Fashion-MNIST / synthetic data as a ``draco.task.Task``.

Determinism (DRACO's promise rests on it: every worker holding partition k must produce the
bit-identical gradient g_k):

- the samples of partition k in round t come from ``draco.sampler.PartitionSampler`` only;
- ``torch.set_num_threads(1)``: one torch thread per process, hence per logical worker (a
  worker process computes its logical workers' gradients one at a time in one thread). A
  multi-threaded reduction could sum in a different order from run to run;
- ``torch.use_deterministic_algorithms(True)``;
- float32 throughout; pixels are normalised through a fixed float32 lookup table;
- no dropout, no augmentation, no other randomness.

Both settings are process-wide (``draco.train.device.configure_torch``), so constructing a
``TorchTask`` sets them for the whole process (the parameter server's evaluation then runs
single-threaded too). ``device="cuda"``/``"mps"`` computes the gradients there (evaluation
stays on the CPU); see draco.train.device for what that means for the vote.

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
from draco.sampler import PartitionSampler
from draco.train.data import DATASET_NAMES, Dataset, load_dataset, normalize_lut
from draco.train.device import check_device, configure_torch
from draco.train.models import MODEL_NAMES, bind_flat_storage, create_model, initial_vector

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
        ``synthetic``, ``mnist`` or ``fashion-mnist``.
    n_partitions : int
        Gradient partitions per round.
    batch_size : int
        Samples per partition per round.
    seed : int
        Seeds the initial parameters and the sampler's shuffling.
    data_dir : str, optional
        Where to look for the IDX files first (see ``draco.train.data``).
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
        self._dim = int(self._grad.flat.numel())
        self._train_x = _as_tensor(self.data.train_images)
        self._train_y = _as_tensor(self.data.train_labels)
        self._test_x = _as_tensor(self.data.test_images)
        self._test_y = _as_tensor(self.data.test_labels)
        # uint8 pixels -> float32 through a 256-entry table: exact, identical everywhere.
        self._lut = (
            torch.from_numpy(normalize_lut(self.data.mean, self.data.std))
            if self.data.train_images.dtype == np.uint8
            else None
        )

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
        """Deterministic initial parameters from the seed: float32, shape (dim,)."""
        return initial_vector(self._grad.model, self.seed)

    def partition_batch(
        self, round_index: int, partition: int, *, flip_labels: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs (B, 784) float32 and labels (B,) int64 of one partition in one round.

        On the task's device (prepared on the CPU, then moved).
        """
        idx = torch.from_numpy(self.sampler.indices(round_index, partition))
        x = self._train_x.index_select(0, idx)
        if self._lut is not None:
            x = self._lut[x.to(torch.int64)]
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
        """Mean cross-entropy gradient of each partition's batch.

        Parameters
        ----------
        params : np.ndarray
            float32, shape (dim,).
        round_index : int
            Round t (selects the samples with the partition index).
        partitions : sequence of int
            Partition ids k, each in [0, n_partitions).
        flip_labels : bool
            Train on y -> C-1-y (the ``label_flip`` attack).

        Returns
        -------
        np.ndarray
            float32, shape (len(partitions), dim); bit-identical for the same arguments.
        """
        w = np.asarray(params)
        if w.shape != (self._dim,):
            raise ValueError(f"expected parameters of shape ({self._dim},), got {w.shape}")
        out = np.empty((len(partitions), self._dim), dtype=np.float32)
        out_t = torch.from_numpy(out)
        eng = self._grad
        with eng.lock:
            with torch.no_grad():
                eng.flat.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            for row, k in enumerate(partitions):
                x, y = self.partition_batch(round_index, int(k), flip_labels=flip_labels)
                loss = F.cross_entropy(eng.model(x), y)  # mean over the batch
                grads = torch.autograd.grad(loss, eng.params)
                if self.device.type == "cpu":
                    torch.cat([g.reshape(-1) for g in grads], out=out_t[row])
                else:
                    out_t[row].copy_(torch.cat([g.reshape(-1) for g in grads]))
        return out

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        """Accuracy and mean cross-entropy on the test split.

        Returns
        -------
        dict
            ``{"test_accuracy": float in [0, 1], "test_loss": float}``.
        """
        w = np.asarray(params)
        if w.shape != (self._dim,):
            raise ValueError(f"expected parameters of shape ({self._dim},), got {w.shape}")
        eng = self._eval
        n = int(self._test_y.numel())
        correct = 0
        loss_sum = 0.0
        with eng.lock, torch.inference_mode():
            eng.flat.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            for start in range(0, n, EVAL_BATCH):
                x = self._test_x[start : start + EVAL_BATCH]
                if self._lut is not None:
                    x = self._lut[x.to(torch.int64)]
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
