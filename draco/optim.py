"""The parameter server's optimizer: SGD with momentum and weight decay on a flat vector.

Same update rule as ``torch.optim.SGD`` (dampening 0, no Nesterov), in numpy float32 so the
server stays task-agnostic:

1. g <- g + weight_decay * w
2. b <- g on the first step, else b <- momentum * b + g
3. w <- w - lr * b

Batch-norm running statistics (``RunningStats``): a model with batch-norm travels as its
*state*, the parameters followed by its buffers. Those entries are not trained: a worker's
payload carries, in the same places, each partition's batch statistics (per BN layer: the
batch mean (C), the unbiased batch variance (C), and 0 in the counter's place), so the code
decodes them exactly like the gradient and a liar cannot poison them. The decoded sum / P is
the mean of the P partitions' statistics, and ``SGD.step`` applies torch's rule to them
(``torch.nn.modules.batchnorm``, CPU kernel, float32):

    num_batches_tracked <- num_batches_tracked + 1       (once per round)
    f = momentum, or 1 / num_batches_tracked when momentum is None (cumulative average)
    running <- f * batch_stat + (1 - f) * running         (mean and variance alike)

For one partition per round this is bit-for-bit torch's own update for the same batches
(tests/train/test_batchnorm.py, torch 2.13 on x86-64: the rounding order, including the
fused multiply-add torch's variance line compiles to, is reproduced; another torch build may
differ in the last bit). For P partitions it is torch's update with the mean of the P batch
statistics (DDP without SyncBatchNorm keeps rank 0's instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from draco.errors import ConfigError


@dataclass(frozen=True)
class StatSegment:
    """One batch-norm layer's buffers in the state vector.

    ``[offset, offset+C)`` running mean, ``[offset+C, offset+2C)`` running variance,
    ``offset+2C`` num_batches_tracked (a float32 count: exact up to 2**24 rounds).
    """

    offset: int
    channels: int  # C
    momentum: float | None  # torch's BN momentum; None = cumulative moving average


@dataclass(frozen=True)
class RunningStats:
    """Which entries of a state vector are running statistics rather than parameters.

    ``[0, n_params)`` are parameters (SGD); the segments cover the rest, in order.
    """

    n_params: int
    segments: tuple[StatSegment, ...]

    @property
    def dim(self) -> int:
        """Length of the whole state vector."""
        last = self.segments[-1] if self.segments else None
        return self.n_params if last is None else last.offset + 2 * last.channels + 1

    def update(self, buffers: np.ndarray, batch_stats: np.ndarray) -> np.ndarray:
        """New buffers from the mean batch statistics (both float32, (dim - n_params,))."""
        out = np.array(buffers, dtype=np.float32, copy=True)
        for seg in self.segments:
            lo = seg.offset - self.n_params
            hi = lo + 2 * seg.channels
            out[hi] += np.float32(1.0)
            f = np.float32(seg.momentum if seg.momentum is not None else 1.0 / float(out[hi]))
            keep = np.float32(1.0) - f
            c = seg.channels
            # torch's CPU kernel in float32 (momentum cast to float first). The mean is
            # rounded after each product; the variance line is compiled to a fused
            # multiply-add, fma(f, var, round(keep * running)): emulated in float64, where
            # f * var is exact (24 + 24 bits). Measured bit-identical to torch 2.13 here.
            mean, var = slice(lo, lo + c), slice(lo + c, hi)
            out[mean] = f * batch_stats[mean] + keep * out[mean]
            fused = np.float64(f) * batch_stats[var].astype(np.float64)
            out[var] = (fused + (keep * out[var]).astype(np.float64)).astype(np.float32)
        return out


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
