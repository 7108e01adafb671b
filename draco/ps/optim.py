"""The parameter server's optimizer: SGD with momentum and weight decay on a flat vector.

Same update rule as ``torch.optim.SGD`` (dampening 0, no Nesterov), in numpy float32 so the
server stays task-agnostic:

1. g <- g + weight_decay * w
2. b <- g on the first step, else b <- momentum * b + g
3. w <- w - lr * b

Batch-norm running statistics: ``SGD.step`` trains only the parameters and hands the buffers
to the task's ``RunningStats`` (``draco.tasks.running_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from draco.errors import ConfigError
from draco.tasks.running_stats import RunningStats


@dataclass(frozen=True)
class SGDConfig:
    lr: float = 0.01  # the original DRACO code's learning rate
    momentum: float = 0.9  # ... and momentum
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--momentum must lie in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and np.isfinite(self.weight_decay)):
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")


class SGD:
    """Stateful SGD on a float32 vector of shape (d,).

    With ``running_stats``, only its ``n_params`` leading entries are trained; the rest are
    batch-norm buffers updated from the decoded batch statistics (module docstring).
    """

    def __init__(
        self, config: SGDConfig, dim: int, running_stats: RunningStats | None = None
    ) -> None:
        if running_stats is not None and running_stats.dim != dim:
            raise ValueError(f"running statistics cover {running_stats.dim} entries, not {dim}")
        self.config = config
        self.momentum_buffer: np.ndarray | None = None
        self.dim = dim
        self.running_stats = running_stats

    def step(self, params: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """Return the updated parameters (a new float32 array of shape (d,)).

        ``gradient`` is the mean gradient over the global batch (the decoded sum divided by
        the number of partitions), shape (d,).
        """
        if params.shape != (self.dim,) or gradient.shape != (self.dim,):
            raise ValueError(f"expected shape ({self.dim},), got {params.shape}, {gradient.shape}")
        rs = self.running_stats
        if rs is not None:
            n = rs.n_params
            head = self._sgd(params[:n], gradient[:n])
            return np.concatenate([head, rs.update(params[n:], gradient[n:])])
        return self._sgd(params, gradient)

    def _sgd(self, params: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        cfg = self.config
        g = gradient.astype(np.float32, copy=True)
        if cfg.weight_decay:
            g += np.float32(cfg.weight_decay) * params
        if cfg.momentum:
            if self.momentum_buffer is None:
                self.momentum_buffer = g
            else:
                self.momentum_buffer *= np.float32(cfg.momentum)
                self.momentum_buffer += g
            g = self.momentum_buffer
        return (params - np.float32(cfg.lr) * g).astype(np.float32, copy=False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint (empty before the first step)."""
        if self.momentum_buffer is None:
            return {}
        return {"momentum_buffer": self.momentum_buffer.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        buf = state.get("momentum_buffer")
        self.momentum_buffer = None if buf is None else np.asarray(buf, np.float32).copy()
