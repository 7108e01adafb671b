"""What the round engine trains: the ``Task`` contract, the registry and the task flags.

The parameter server and the workers are task-agnostic. The server builds a task from the
command line, sends its ``spec()`` to every worker in the welcome message, and each worker
rebuilds the identical task with ``make_task(spec)``. Workers call
``partition_gradients``; the server calls ``initial_params`` and ``evaluate`` and applies the
optimizer (``draco.optim``) to the decoded gradient itself.

Built-in tasks: ``lstsq`` (numpy least squares, no files, no torch: ``draco.lstsq``) and the
torch models ``fc``, ``lenet``, ``logreg``, ``lenet_bn``, ``resnet18`` (``draco.train.task``,
imported only when asked for, so the network layer never imports torch).

Plug-in tasks (docs/tasks.md): the PS names a factory ``package.module:function`` with
``draco-ps --task`` and its options with ``--task-option KEY=VALUE`` or ``--task-file``; the
spec is ``{"model": "custom", "factory": ..., "options": {...}, "n_partitions", "batch_size",
"seed", "data_dir"}``. A worker calls the factory only if its own operator listed it with
``draco-worker --allow-task``: the allowlist is checked, and the options are bounded and
type-checked, BEFORE anything is imported (``load_factory``), so a hostile parameter server
cannot make a worker import or run code its operator did not choose.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import re
import tomllib
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from draco.errors import ConfigError

TORCH_MODELS = ("fc", "lenet", "logreg", "lenet_bn", "resnet18")
MODELS = ("lstsq", *TORCH_MODELS)
DATASETS = ("synthetic", "mnist", "fashion-mnist", "cifar10")
#: The ``model`` of a plug-in task's spec; the factory is in ``spec["factory"]``.
CUSTOM_MODEL = "custom"
#: Devices a worker may compute on (``draco-worker --device``).
DEVICES = ("cpu", "cuda", "mps")
# ``package.module:function``: dotted identifiers, one attribute (no dotted attribute path,
# so a name cannot reach through a module into another object: ``os:path.join`` is refused).
_FACTORY_NAME = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_MAX_FACTORY_NAME = 200


@runtime_checkable
class Task(Protocol):
    """One learning problem as both sides of a run see it. Parameters are float32, shape (dim,)."""

    @property
    def dim(self) -> int:
        """Number of float32 parameters."""
        ...

    def spec(self) -> dict[str, Any]:
        """msgpack/JSON-able description; ``make_task(spec)`` rebuilds an identical task."""
        ...

    def initial_params(self) -> np.ndarray:
        """Deterministic initial parameters from the spec's seed: shape (dim,), float32."""
        ...

    def partition_gradients(
        self,
        params: np.ndarray,
        round_index: int,
        partitions: Sequence[int],
        *,
        flip_labels: bool = False,
    ) -> np.ndarray:
        """Gradient of each partition's mean loss: shape (len(partitions), dim), float32.

        Bit-identical on every host for the same arguments. ``flip_labels`` trains on the
        labels y -> C-1-y (the ``label_flip`` attack; classification tasks only).
        """
        ...

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        """Test metrics, e.g. ``{"test_accuracy": 0.97, "test_loss": 0.1}`` (may be empty)."""
        ...


@dataclass(frozen=True)
class TaskContext:
    """What a task factory is given besides its own options.

    Attributes
    ----------
    n_partitions : int
        Gradient partitions per round (P); ``partition_gradients`` gets ids in [0, P).
    batch_size : int
        Samples per partition per round (B), from ``draco-ps --batch-size``.
    seed : int
        The run's seed: initial parameters, data order and any randomness of the task.
    device : str
        ``cpu``, ``cuda`` or ``mps``: where this process computes (the worker's own
        ``--device``; the parameter server always builds its task on ``cpu``).
    data_dir : str or None
        ``draco-ps --data-dir`` (a hint; the factory decides what it means).
    spec : dict
        The whole spec; a task's ``spec()`` returns it unchanged.
    """

    n_partitions: int
    batch_size: int
    seed: int
    device: str = "cpu"
    data_dir: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskOptionLimits:
    """Bounds on a plug-in task's options as received from the parameter server.

    Checked before the factory is imported (``draco-worker --max-task-option-*``). The
    Welcome's own bounds (frame header size, 16 levels) still apply on top.

    Attributes
    ----------
    max_depth : int
        Nesting levels of lists / tables below the options table itself.
    max_items : int
        Values in all, containers and scalars, counted through the nesting.
    max_text : int
        Characters of one string (a key or a value).
    """

    max_depth: int = 4
    max_items: int = 1024
    max_text: int = 4096

    def __post_init__(self) -> None:
        for name, lo, hi in (("max_depth", 0, 16), ("max_items", 1, 10**6), ("max_text", 1, 2**20)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                flag = "--max-task-option-" + name.removeprefix("max_")
                raise ConfigError(f"{flag} must be an int in [{lo}, {hi}], got {value!r}")


def check_factory_name(name: Any) -> tuple[str, str]:
    """``"package.module:function"`` -> ``(module, function)``; ``ConfigError`` if malformed."""
    if (
        not isinstance(name, str)
        or len(name) > _MAX_FACTORY_NAME
        or not _FACTORY_NAME.fullmatch(name)
    ):
        shown = repr(name)[:_MAX_FACTORY_NAME]
        raise ConfigError(
            f"a task factory is named package.module:function (e.g. "
            f"my_tasks.cnn:make_task), got {shown}"
        )
    module, _, attr = name.partition(":")
    return module, attr


def check_task_options(options: Any, limits: TaskOptionLimits | None = None) -> dict[str, Any]:
    """Validate a plug-in task's options (untrusted on a worker); returns them unchanged.

    Top-level keys become keyword arguments of the factory: Python identifiers, none
    starting with ``_``. Values: None, bool, int (64-bit), finite float, str, and lists /
    tables of those, within ``limits``. ``ConfigError`` names the first offending value.
    """
    lim = limits or TaskOptionLimits()
    if not isinstance(options, dict):
        raise ConfigError(f"task options must be a table, got {type(options).__name__}")
    for key in options:
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
            raise ConfigError(
                f"task option names are identifiers not starting with '_', got {key!r:.80}"
            )
    count = 0

    def walk(value: Any, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > lim.max_items:
            raise ConfigError(f"task options hold more than {lim.max_items} values")
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                raise ConfigError(f"task option {path} does not fit in 64 bits")
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(f"task option {path} = {value} is not finite")
            return
        if isinstance(value, str):
            if len(value) > lim.max_text:
                raise ConfigError(f"task option {path} is longer than {lim.max_text} characters")
            return
        if isinstance(value, list | dict):
            if depth >= lim.max_depth:
                raise ConfigError(f"task option {path} nests deeper than {lim.max_depth} levels")
            if isinstance(value, list):
                for i, item in enumerate(value):
                    walk(item, f"{path}[{i}]", depth + 1)
            else:
                for k, item in value.items():
                    if not isinstance(k, str) or len(k) > lim.max_text:
                        raise ConfigError(f"task option {path} has a bad key {k!r:.80}")
                    walk(item, f"{path}.{k}", depth + 1)
            return
        raise ConfigError(
            f"task option {path} is a {type(value).__name__}; options are numbers, strings, "
            "booleans, none, and lists / tables of those"
        )

    for key, value in options.items():
        walk(value, key, 0)
    return options


def load_factory(name: str, allowed: Collection[str]) -> Callable[..., Any]:
    """Import and return the task factory ``name`` if, and only if, ``allowed`` lists it.

    The name's form and the allowlist are checked before any import: a name that is not
    listed exactly imports nothing (``ConfigError``).
    """
    module_name, attr = check_factory_name(name)
    if name not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(
            f"task factory {name!r} is not allowed here (allowed: {listed}); a worker runs "
            f"only the task factories its operator lists: if you trust {module_name!r}, start "
            f"draco-worker with --allow-task {name}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import task module {module_name!r} of factory {name!r}: {exc} "
            "(is it installed, or on PYTHONPATH, on this host?)"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"module {module_name!r} has no callable {attr!r} (factory {name!r})")
    return typing.cast(Callable[..., Any], factory)


_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    bool: (bool,),
    str: (str,),
}


def _check_option_types(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Bind ``(ctx, **options)`` to the factory's signature; check simply annotated types.

    ``int``, ``float`` (an int is accepted), ``bool``, ``str`` and ``X | None`` annotations
    are enforced; other annotations are the factory's to check.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    try:
        sig.bind(None, **options)
    except TypeError as exc:
        takes = [p for p in list(sig.parameters)[1:]]
        raise ConfigError(
            f"task factory {name}: {exc} (its options: {', '.join(takes) or 'none'})"
        ) from None
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: leave the checks to the factory
        return
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None:
            continue
        args = typing.get_args(hint)
        optional = type(None) in args
        base = [a for a in args if a is not type(None)] if args else [hint]
        if len(base) != 1 or base[0] not in _SIMPLE_TYPES:
            continue
        if value is None and optional:
            continue
        ok = isinstance(value, _SIMPLE_TYPES[base[0]]) and (
            base[0] is bool or not isinstance(value, bool)
        )
        if not ok:
            raise ConfigError(
                f"task factory {name}: option {key} must be {getattr(base[0], '__name__', base[0])}"
                f"{' or none' if optional else ''}, got {value!r:.80}"
            )


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
        from draco.lstsq import LeastSquaresTask

        return LeastSquaresTask.from_spec(spec)
    if model in TORCH_MODELS:
        from draco.train.task import TorchTask

        return TorchTask.from_spec(spec, device=device)
    if model == CUSTOM_MODEL:
        return _make_custom_task(spec, allowed, device, option_limits)
    raise ConfigError(
        f"unknown model {model!r:.80}; choose one of {', '.join(MODELS)} "
        "(or name a task factory with --task)"
    )


def _make_custom_task(
    spec: dict[str, Any],
    allowed: Collection[str],
    device: str,
    option_limits: TaskOptionLimits | None,
) -> Task:
    # Everything from the (possibly hostile) spec is checked before load_factory imports.
    name = spec.get("factory")
    check_factory_name(name)
    options = check_task_options(spec.get("options", {}), option_limits)
    try:
        data_dir = spec.get("data_dir")
        ctx = TaskContext(
            n_partitions=_positive_int(spec, "n_partitions"),
            batch_size=_positive_int(spec, "batch_size"),
            seed=_positive_int(spec, "seed", lo=0),
            device=device,
            data_dir=None if data_dir is None else str(data_dir),
            spec=spec,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad task spec: {exc!r:.200}") from None
    extra = set(spec) - {"model", "factory", "options", "n_partitions", "batch_size", "seed"}
    extra.discard("data_dir")
    if extra:
        raise ConfigError(f"a plug-in task spec has unknown keys {sorted(extra)}")
    factory = load_factory(str(name), allowed)
    _check_option_types(str(name), factory, options)
    try:
        task = factory(ctx, **options)
    except ConfigError:
        raise
    except Exception as exc:  # the factory is user code: report it as a configuration error
        raise ConfigError(f"task factory {name} failed: {type(exc).__name__}: {exc}") from exc
    missing = [
        a
        for a in ("dim", "spec", "initial_params", "partition_gradients", "evaluate")
        if not hasattr(task, a)
    ]
    if missing:
        raise ConfigError(f"task factory {name} returned a {type(task).__name__} without {missing}")
    if isinstance(task.dim, bool) or not isinstance(task.dim, int) or task.dim < 1:
        raise ConfigError(f"task factory {name}: dim must be a positive int, got {task.dim!r}")
    if task.spec() != spec:
        raise ConfigError(
            f"task factory {name}: the task's spec() must return ctx.spec unchanged (the "
            "workers rebuild the task from it)"
        )
    return typing.cast(Task, task)


def _positive_int(spec: dict[str, Any], key: str, lo: int = 1) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{key} must be an int >= {lo}, got {value!r}")
    return value


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
        choices=DATASETS,
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
    from draco.config import parse_options

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
