"""Plug-in task factories: the checks that run BEFORE a worker imports anything.

A PS names a factory ``package.module:function`` (``draco-ps --task``) and its options
(``--task-option KEY=VALUE``, ``--task-file``). A worker calls the factory only if its own
operator listed it with ``draco-worker --allow-task``: the name's form and the allowlist are
checked, and the options are bounded (``TaskOptionLimits``) and type-checked against the
factory's signature, before the module is imported (``load_factory``), so a hostile parameter
server cannot make a worker import or run code its operator did not choose.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from draco.errors import ConfigError
from draco.tasks.contract import Task, TaskContext

__all__ = [
    "TaskOptionLimits",
    "check_factory_name",
    "check_task_options",
    "load_factory",
    "make_plugin_task",
]

# ``package.module:function``: dotted identifiers, one attribute (no dotted attribute path,
# so a name cannot reach through a module into another object: ``os:path.join`` is refused).
_FACTORY_NAME = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_MAX_FACTORY_NAME = 200


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


def make_plugin_task(
    spec: dict[str, Any],
    allowed: Collection[str],
    device: str,
    option_limits: TaskOptionLimits | None,
) -> Task:
    """The plug-in task of ``spec`` (``model == "custom"``), built by its allowed factory.

    Everything from the (possibly hostile) spec is checked before ``load_factory`` imports:
    the factory's name, the allowlist, the options' sizes and types, the spec's keys.
    """
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
