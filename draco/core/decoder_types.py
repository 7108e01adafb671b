"""What the codes and decoders share: the ``Code`` interface, its argument checks, the
decode result, the payload check, the cyclic decoder's tolerances."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from draco.core.projection import PROJECTION_CHUNK
from draco.errors import ConfigError

__all__ = [
    "Code",
    "CyclicDecoderConfig",
    "DecodeResult",
    "all_finite",
    "check_counts",
    "check_grads",
    "check_worker",
    "well_formed",
]


@dataclass(frozen=True)
class DecodeResult:
    """What a decoder hands back to the parameter server.

    Attributes
    ----------
    gradient : ndarray, shape (d,), float32
        The sum over ALL partitions of the partition gradients.
    adversaries : frozenset of int
        Workers located as lying (their payload was usable but wrong).
    erasures : frozenset of int
        Workers whose payload was missing or unusable (wrong shape or dtype, NaN/Inf).
    """

    gradient: np.ndarray
    adversaries: frozenset[int]
    erasures: frozenset[int]


@runtime_checkable
class Code(Protocol):
    """The interface every code offers (docs/architecture.md, "Codes")."""

    name: str
    n_workers: int
    n_adversaries: int
    n_partitions: int
    redundancy: int
    assignment: np.ndarray
    payload_dtype: np.dtype
    options: dict[str, Any]

    def partitions_of(self, worker: int) -> tuple[int, ...]: ...

    def encode(self, worker: int, grads: np.ndarray) -> np.ndarray: ...

    def ready(self, received: Mapping[int, np.ndarray]) -> bool: ...

    def decode(
        self, received: Mapping[int, np.ndarray], rng: np.random.Generator | None = None
    ) -> DecodeResult: ...


def check_worker(code: Code, worker: int) -> None:
    """ValueError unless ``worker`` is one of ``code``'s ids 0..n-1 (a caller's bug)."""
    if not 0 <= int(worker) < code.n_workers:
        raise ValueError(f"worker {worker} out of range 0..{code.n_workers - 1}")


def check_counts(name: str, n_workers: object, n_adversaries: object) -> tuple[int, int]:
    """(n, s) as ints; ConfigError unless they are integers with s >= 0 and n >= 2s+1."""
    for label, value in (("n_workers", n_workers), ("n_adversaries", n_adversaries)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"code {name!r}: {label} must be an integer, got {value!r}")
    n, s = int(n_workers), int(n_adversaries)  # type: ignore[call-overload]
    if s < 0:
        raise ConfigError(f"code {name!r}: n_adversaries must be >= 0, got {s}")
    if n < 2 * s + 1 or n < 1:
        raise ConfigError(
            f"code {name!r} with {s} adversaries needs at least 2s+1 = {2 * s + 1} workers, "
            f"got {n}: add workers or lower --adversaries"
        )
    return n, s


def check_grads(code: Code, worker: int, grads: np.ndarray) -> np.ndarray:
    """``grads`` as an array of shape (len(partitions_of(worker)), d); ValueError if not."""
    check_worker(code, worker)
    grads = np.asarray(grads)
    r = len(code.partitions_of(worker))
    if grads.ndim != 2 or grads.shape[0] != r:
        raise ValueError(
            f"worker {worker} must encode {r} partition gradients of shape ({r}, d), "
            f"got shape {grads.shape}"
        )
    return grads


def all_finite(x: np.ndarray) -> bool:
    """True iff ``x`` holds no NaN/Inf: one read of it (a pairwise sum, ~4x cheaper than
    ``isfinite().all()``, which only runs when the sum is non-finite: NaN/Inf, or finite
    values whose sum overflows)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = x.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(x).all())


def well_formed(payload: object, dtype: np.dtype) -> np.ndarray | None:
    """The payload as a C-contiguous 1-D array of ``dtype``, or None if it is not one."""
    if not isinstance(payload, np.ndarray) or payload.ndim != 1 or payload.dtype != dtype:
        return None
    if payload.size == 0:
        return None
    return np.ascontiguousarray(payload)


@dataclass(frozen=True)
class CyclicDecoderConfig:
    """Tolerances of the cyclic decoder. Noise is measured, not guessed: see ``unit``.

    Attributes
    ----------
    unit : float
        Bound on the relative rounding error of one payload coordinate: the honest
        projection z = sum_i r_i y_i (r_i uniform in [-1, 1)) is off from the exact codeword
        by at most ``unit`` x sqrt(sum_i |y_i|^2 / 3) in standard deviation over the secret r
        (``project_rows`` returns the sums of squares). complex64: 2**-24 (round to
        nearest); complex128: ``for_dtype`` adds the float64 arithmetic of encoding and
        projection.
    factor : float
        Kept rows are consistent while their residual is <= ``factor`` noise units
        (whitened: an honest component has standard deviation <= 1).
    clear_factor : float
        A suspect is named a liar when its projection deviates from the codeword predicted
        by the kept rows by more than ``clear_factor`` x (its own noise bound + the
        prediction's), in some lane. Between ``factor`` and this a suspect is left out of
        the sum but not named.
    power : float
        A suspect that is not named goes back into the recovery only if its prediction is
        sharp (std <= ``power`` x the typical honest |z|) and the kept rows stay consistent;
        otherwise it stays out of the sum (a lie up to the prediction's noise could hide
        in it).
    huge : float
        A projection more than ``huge`` x the (s+1)-th largest one is set aside before the
        locator runs (it would swamp the syndromes in float64); it is named a liar.
    check_factor : float
        The recovery pass's check (``_recover``) passes while its 2-norm is <=
        ``check_factor`` x its noise bound (``check_unit`` x the kept rows' energy).
    check_unit : float
        Bound on the relative error of one coordinate of a weighted sum of payload rows in
        the payload precision (rounding of the rows plus the gemv's accumulation).
    rounding : float
        Relative error of the decoded sum per unit of recovery amplification
        sqrt(n) ||w||_2 (payload rounding): 2.2e-8 for complex64, the largest measured
        over the sweep of docs/numerics.md (2s adjacent erasures, n <= 128); 3e-17 for
        complex128.
    max_error : float
        The decoder refuses (DecodeError) a sum whose expected relative error,
        rounding x amplification, exceeds this: the missing and lying workers sit so close
        together on the circle that the other rows cannot pin the sum down in the payload
        precision. ``payload_dtype="auto"`` picks complex128 wherever some pattern inside
        the budget would hit this (``COMPLEX64_MAX_ERASURE_AMPLIFICATION``).
    naming_fits : int
        Most least-squares fits the locator spends proving that subtle suspects lie
        (``locate_cyclic`` step 5; a gross lie needs none). A proof left unfinished names
        nobody: the suspect stays out of the sum (or goes back in if its prediction is sharp
        and the kept rows stay consistent), so the sum's error bound and the rule that no
        honest worker is named hold whatever its value; it decides how many subtle liars
        get named (and, through the put-back, the sum's rounding).
        It bounds what a liar can make the PS spend on one decode (each fit costs about
        1 ms at n = 45 and 5 ms at n = 100 on one core).
    search_fits : int
        Most least-squares fits the locator's search for a consistent suspect set may spend
        (``locate_cyclic`` steps 2-4; step 5 has ``naming_fits`` of its own). Its swaps and
        beam cost O(tau^3) fits in the worst case (about 10^6 at n = 100, s = 35); no lie
        family in ``draco.core.lies`` needs more than about 330 (n = 45, s = 5) or 100
        (n = 100, s = 35). A search cut short keeps the best set found so far: it is
        accepted only if it is consistent (step 4's safety argument holds for any set of at
        most tau suspects), otherwise the decode fails and the round is retried. So the
        bound can cost a round, never a wrong sum.
    """

    unit: float = 2.0**-24
    factor: float = 8.0
    clear_factor: float = 30.0
    power: float = 1e-3
    huge: float = 1e6
    check_factor: float = 3.0
    check_unit: float = 4 * 2.0**-24
    rounding: float = 2.2e-8
    max_error: float = 1e-5
    naming_fits: int = 200
    search_fits: int = 2000

    @classmethod
    def for_dtype(cls, dtype: np.dtype, s: int) -> CyclicDecoderConfig:
        """The defaults for payloads of ``dtype`` of a code with s adversaries.

        complex128: the payload's own rounding (2**-53) is no longer the largest error; the
        float64 encoding (2s+1 products with coefficients rounded once) and the float64
        projection (sums of ``PROJECTION_CHUNK`` products) add about (2s + 2) and
        sqrt(chunk) units of 2**-53; the bound takes twice their sum.
        """
        if np.dtype(dtype) == np.complex64:
            return cls()
        eps = 2.0**-53
        arithmetic = 2 * (2 * s + 2 + float(np.sqrt(PROJECTION_CHUNK)))
        return cls(unit=eps * arithmetic, check_unit=4 * eps * arithmetic, rounding=3e-17)
