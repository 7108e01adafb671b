"""The part of a code the PS's round logic uses (a typed seam).

Every ``draco.core.codes.Code`` satisfies ``CodeLike``; tests may pass smaller fakes or
wrappers. ``GroupedCode`` is the repetition code's extra: its groups of workers. (Attacks
are typed with the core's own base class, ``draco.core.attacks.Attack``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from draco.core.decoder_types import DecodeResult

__all__ = ["CodeLike", "GroupedCode"]


class CodeLike(Protocol):
    """The part of ``draco.core.codes.Code`` the engine uses."""

    name: str
    n_workers: int
    n_adversaries: int
    n_partitions: int
    payload_dtype: np.dtype

    def ready(self, received: Mapping[int, np.ndarray]) -> bool: ...

    def decode(
        self, received: Mapping[int, np.ndarray], rng: np.random.Generator | None = None
    ) -> DecodeResult: ...


@runtime_checkable
class GroupedCode(Protocol):
    """A code whose workers form groups that all send the same payload (repetition)."""

    groups: tuple[tuple[int, ...], ...]
