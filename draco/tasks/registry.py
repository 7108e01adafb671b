"""The task registry: a task by name or spec, and the task flags of ``draco-ps``/``draco-run``.

Built-in tasks: ``lstsq`` (numpy least squares, no files, no torch: ``draco.tasks.lstsq``) and
the torch models ``fc``, ``lenet``, ``logreg``, ``lenet_bn``, ``resnet18``
(``draco.tasks.torch.task``, imported only when asked for, so the network layer never
imports torch). Plug-in tasks: ``{"model": "custom", "factory": ..., "options": {...},
"n_partitions", "batch_size", "seed", "data_dir"}``, built through ``draco.tasks.plugins``.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from draco.errors import ConfigError
from draco.tasks.contract import CUSTOM_MODEL, DEVICES, Task
from draco.tasks.plugins import (
    TaskOptionLimits,
    check_factory_name,
    check_task_options,
    make_plugin_task,
)
from draco.tasks.torch.datasets import DATASET_NAMES

__all__ = [
    "MODELS",
    "TORCH_MODELS",
    "add_task_arguments",
    "make_task",
    "read_task_file",
    "task_spec_from_args",
]

TORCH_MODELS = ("fc", "lenet", "logreg", "lenet_bn", "resnet18")
MODELS = ("lstsq", *TORCH_MODELS)


def make_task(
    spec: dict[str, Any],
    *,
    allowed: Collection[str] = (),
    device: str = "cpu",
    option_limits: TaskOptionLimits | None = None,
) -> Task:
    """Build the task a spec describes.

    Parameters
    ----------
    spec : dict
        A built-in spec (``model`` in ``MODELS``) or a plug-in one (``model == "custom"``).
    allowed : collection of str
        Plug-in factories this process may import (the built-ins need no listing).
    device : str
        Where a torch task computes: ``cpu``, ``cuda`` or ``mps``.
    option_limits : TaskOptionLimits, optional
        Bounds on a plug-in spec's options.

    Raises
    ------
    ConfigError
        Unknown, malformed or not allowed spec; a factory that fails or returns a non-task.
    """
    if not isinstance(spec, dict) or "model" not in spec:
        raise ConfigError(f"a task spec is a dict with a 'model' key, got {spec!r:.200}")
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    model = spec["model"]
    if model == "lstsq":
        if device != "cpu":
            raise ConfigError(
                f"the lstsq task computes with numpy on the CPU; --device {device} does not "
                "apply (use --device cpu)"
            )
        from draco.tasks.lstsq import LeastSquaresTask

        return LeastSquaresTask.from_spec(spec)
    if model in TORCH_MODELS:
        from draco.tasks.torch.task import TorchTask

        return TorchTask.from_spec(spec, device=device)
    if model == CUSTOM_MODEL:
        return make_plugin_task(spec, allowed, device, option_limits)
    raise ConfigError(
        f"unknown model {model!r:.80}; choose one of {', '.join(MODELS)} "
        "(or name a task factory with --task)"
    )


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """The task's own flags, shared by ``draco-ps`` and ``draco-run``."""
    g = parser.add_argument_group("task")
    g.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="a built-in task (fc = the paper's 784-800-500-10 network, the default; "
        "resnet18 = the CIFAR ResNet-18, with --dataset cifar10; lstsq needs no torch)",
    )
    g.add_argument(
        "--task",
        default=None,
        metavar="PACKAGE.MODULE:FACTORY",
        help="a plug-in task instead of --model (docs/tasks.md); every worker must allow it "
        "with draco-worker --allow-task",
    )
    g.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the --task factory (repeatable; int, float, true/false, none, else "
        "a string); overrides --task-file",
    )
    g.add_argument(
        "--task-file",
        type=Path,
        default=None,
        metavar="TOML",
        help='a TOML file: task = "package.module:factory" and an [options] table',
    )
    g.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default="synthetic",
        help="training data for the torch models (synthetic needs no files)",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder with the IDX / CIFAR-10 files (else $DRACO_DATA, then standard places); a "
        "plug-in task gets it as ctx.data_dir",
    )
    g.add_argument("--batch-size", type=int, default=32, help="samples per partition per round")
    g.add_argument("--lr", type=float, default=0.01, help="learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    g.add_argument(
        "--eval-every",
        type=int,
        default=10,
        help="evaluate on the test split every K rounds; 0 = only at the end",
    )
    g.add_argument("--lstsq-dim", type=int, default=64, help="parameters of the lstsq task")


def read_task_file(path: Path) -> tuple[str | None, dict[str, Any]]:
    """``(factory, options)`` from a TOML task file (``task = "..."``, ``[options]``)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --task-file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--task-file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"task", "options"}
    if unknown:
        raise ConfigError(f"--task-file {path}: unknown keys {sorted(unknown)} (task, options)")
    factory = data.get("task")
    if factory is not None and not isinstance(factory, str):
        raise ConfigError(f"--task-file {path}: task must be a string, got {factory!r:.80}")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"--task-file {path}: options must be a table")
    return factory, options


def task_spec_from_args(args: argparse.Namespace, n_partitions: int, seed: int) -> dict[str, Any]:
    """The spec ``make_task`` takes, from parsed task flags. Validates sizes."""
    from draco.options import parse_options

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {args.eval_every}")
    factory: str | None = getattr(args, "task", None)
    options: dict[str, Any] = {}
    task_file = getattr(args, "task_file", None)
    if task_file is not None:
        file_factory, options = read_task_file(Path(task_file))
        factory = factory or file_factory
    options.update(parse_options(getattr(args, "task_option", None) or []))
    if factory is None:
        if options or task_file is not None:
            raise ConfigError("--task-option / --task-file need a factory: --task or task = ...")
        model = getattr(args, "model", None) or "fc"
    else:
        if getattr(args, "model", None) is not None:
            raise ConfigError(f"give --model or --task, not both (--model {args.model})")
        check_factory_name(factory)
        check_task_options(options)
        return {
            "model": CUSTOM_MODEL,
            "factory": factory,
            "options": options,
            "n_partitions": int(n_partitions),
            "batch_size": int(args.batch_size),
            "seed": int(seed),
            "data_dir": args.data_dir,
        }
    spec: dict[str, Any] = {
        "model": model,
        "n_partitions": int(n_partitions),
        "batch_size": int(args.batch_size),
        "seed": int(seed),
    }
    if model == "lstsq":
        if args.lstsq_dim < 1:
            raise ConfigError(f"--lstsq-dim must be >= 1, got {args.lstsq_dim}")
        spec["dim"] = int(args.lstsq_dim)
    else:
        spec["dataset"] = args.dataset
        spec["data_dir"] = args.data_dir
    return spec
