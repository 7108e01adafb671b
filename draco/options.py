"""``KEY=VALUE`` option lists of the command line (``--task-option``, ``--aggregator-option``,
``--attack-option``) as typed dicts: one parser for every flag that takes them."""

from __future__ import annotations

from typing import Any

from draco.errors import ConfigError

__all__ = ["parse_options", "parse_value"]


def parse_value(text: str) -> Any:
    """A ``key=value`` option's value: int, float, true/false, none, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["tau=10", "iters=1"]`` -> ``{"tau": 10, "iters": 1}``; ConfigError if malformed."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"an option is KEY=VALUE (e.g. tau=10), got {item!r}")
        out[key] = parse_value(value)
    return out
