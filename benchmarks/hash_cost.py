"""Worker-side cost of the digest-first vote: one keyed BLAKE2b of the payload per round,
against the gradients the worker computes in that round (issue 13, item 3).

    python benchmarks/hash_cost.py --repeats 5

- d = 1,033,510: the project's ``fc`` model (784-800-500-10) on MNIST-shaped synthetic data,
  ``TorchTask.partition_gradients`` for one partition of ``--batch-size`` samples.
- d = 11,173,962: a CIFAR-10 ResNet-18 (the standard 3x3-stem variant; the model is built
  here, the package has no ResNet), forward + backward on ``--batch-size`` 32x32x3 images.

A worker of the repetition code at P = 45, s = 5 computes its group's m = 11 (or 12)
partitions per round and hashes its payload once, so the fraction reported is
``hash / (m x one partition's gradient)``; the per-partition fraction is given too. One
torch thread (as a draco worker runs). Prints one JSON object with medians and [min, max]
over ``--repeats`` and the load average.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from draco.core.digests import payload_digest


def _basic_block(cin: int, cout: int, stride: int) -> nn.Module:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short: nn.Module = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(out)) + self.short(x))

    return Block()


def resnet18_cifar(n_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 11,173,962 parameters."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 3, 1, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_basic_block(cin, cout, stride), _basic_block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, n_classes)]
    return nn.Sequential(*layers)


def _timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        out.append(time.thread_time() - t0)
    return out


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _fc_gradient(batch: int) -> tuple[int, Callable[[], Any]]:
    from draco.tasks.registry import make_task

    task = make_task(
        {
            "model": "fc",
            "dataset": "synthetic",
            "batch_size": batch,
            "n_partitions": 45,
            "seed": 0,
        }
    )
    params = task.initial_params()
    return task.dim, lambda: task.partition_gradients(params, 0, [0])


def _resnet_gradient(batch: int) -> tuple[int, Callable[[], Any]]:
    model = resnet18_cifar()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        model.zero_grad()
        loss_fn(model(x), y).backward()

    return sum(p.numel() for p in model.parameters()), step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="samples per partition")
    p.add_argument("--partitions", type=int, default=11, help="m: partitions per worker round")
    args = p.parse_args()
    torch.set_num_threads(1)
    with open("/proc/loadavg") as f:
        load_before = " ".join(f.read().split()[:3])
    out: dict[str, Any] = {"benchmark": "hash_cost", "batch_size": args.batch_size}
    for name, make in (("fc", _fc_gradient), ("resnet18_cifar", _resnet_gradient)):
        dim, grad = make(args.batch_size)
        payload = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
        key = secrets.token_bytes(32)
        hashes = _timed(
            lambda payload=payload, key=key: payload_digest(payload, key, 32), args.repeats
        )
        grads = _timed(grad, args.repeats)
        h, g = statistics.median(hashes), statistics.median(grads)
        out[name] = {
            "dim": dim,
            "hash_seconds": _stats(hashes),
            "hash_gbps": round(dim * 4 / h / 1e9, 3),
            "partition_gradient_seconds": _stats(grads),
            "fraction_of_one_partition": round(h / g, 4),
            "fraction_of_round": round(h / (args.partitions * g), 4),
        }
    with open("/proc/loadavg") as f:
        out["load"] = [load_before, " ".join(f.read().split()[:3])]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
