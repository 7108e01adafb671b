"""ModuleTask vs. the built-in TorchTask: milliseconds per partition gradient, same model.

    python benchmarks/module_task_overhead.py

Both tasks train ``logreg`` and ``fc`` on the synthetic set (P = 15 partitions, B = 32); the
ModuleTask gets the same float32 inputs as arrays. 7 repetitions of 3 rounds x 15 partitions
each; prints the median, min and max of the per-partition time.
"""

import statistics
import time

from draco.tasks.contract import CUSTOM_MODEL, TaskContext
from draco.tasks.registry import make_task
from draco.tasks.torch.models import FC, LogReg
from draco.tasks.torch.module_task import ModuleTask

P, B = 15, 32
for name, cls in (("logreg", LogReg), ("fc", FC)):
    t = make_task(
        {
            "model": name,
            "dataset": "synthetic",
            "data_dir": None,
            "n_partitions": P,
            "batch_size": B,
            "seed": 0,
        }
    )
    x = t.data.train_images
    y = t.data.train_labels
    assert t._lut is None  # the synthetic set is float32 already
    base = {"n_partitions": P, "batch_size": B, "seed": 0}
    ctx = TaskContext(spec={"model": CUSTOM_MODEL, **base}, **base)
    mt = ModuleTask(ctx, model=cls, data=lambda x=x, y=y: ((x, y), None))
    w = t.initial_params()
    res = {}
    for label, task in (("TorchTask", t), ("ModuleTask", mt)):
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for r in range(3):
                task.partition_gradients(w, r, range(P))
            runs.append((time.perf_counter() - t0) / (3 * P) * 1e3)
        res[label] = runs
    for label, runs in res.items():
        print(
            f"{name:6s} {label:10s} ms/partition median {statistics.median(runs):.3f} "
            f"min {min(runs):.3f} max {max(runs):.3f}"
        )
