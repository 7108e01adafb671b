"""Which entries of a task's state vector are batch-norm running statistics, and their update.

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

__all__ = ["RunningStats", "StatSegment"]


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
