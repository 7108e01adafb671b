"""Where a worker computes (``draco-worker --device cpu|cuda|mps``) and torch's determinism.

DRACO's exact (bitwise) repetition vote needs every replica of a partition to compute the
same bits. On the CPU, one torch thread and ``torch.use_deterministic_algorithms(True)``
give that (draco.tasks.torch.task). On a GPU the deterministic settings make a run repeatable on
*one* device model and software stack, but a GPU and a CPU, or two GPU models, still round
differently (other kernels, fused multiply-adds, reduction orders). So a worker computing on
``cuda`` or ``mps`` refuses a repetition run with the exact vote and asks for the PS's
``--vote tolerance`` (draco.net.worker); see docs/tasks.md, "Devices".
"""

from __future__ import annotations

import os

import torch

from draco.errors import ConfigError
from draco.tasks.contract import DEVICES


def check_device(device: str) -> torch.device:
    """The torch device for ``device``; ``ConfigError`` if unknown or not present here."""
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda
        why = (
            f"this torch {torch.__version__} was built without CUDA"
            if built is None
            else f"torch {torch.__version__} (CUDA {built}) finds no usable GPU"
        )
        raise ConfigError(f"--device cuda: {why}; use --device cpu, or a host with a GPU")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(
                f"--device mps: torch {torch.__version__} finds no Apple Metal (MPS) device "
                "here; use --device cpu"
            )
    return torch.device(device)


def configure_torch(device: str = "cpu") -> None:
    """One torch thread and deterministic algorithms, process-wide; GPU settings for ``cuda``.

    One CPU thread: a multi-threaded reduction could sum in another order from run to run.
    On CUDA additionally: cuBLAS's fixed workspace (its deterministic mode needs it, and it
    must be set before the first cuBLAS call), deterministic cuDNN without autotuning, and
    no TF32 (it would round matrix products to 10 mantissa bits).
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True)
