"""Lie families: payloads shaped against the decoders, to test DRACO's promise.

The promise (docs/numerics.md, "Guarantees"): up to s workers may send anything at all, and
the decoder returns the sum of the partition gradients within its documented bound, or
locates the liars, or refuses with ``DecodeError`` -- never a silently wrong sum, never an
honest worker named. These families are the shapes of "anything at all" the test suite
(tests/core/test_adversarial.py) and ``draco-bench adversary`` try. Numpy only; every
family is a pure function of its inputs and ``rng``.

=====================  ===============================================================
family                 what each liar j sends (y_j = its honest payload, d coordinates)
=====================  ===============================================================
sparse1/5/64_same      y_j + 50 on the same 1 / 5 / 64 coordinates for every colluder
sparse1/5/64_each      y_j + 50 on 1 / 5 / 64 coordinates of its own
tiny1e-3 .. tiny1e-7   y_j + rel x mean|y| on every coordinate (rel = 1e-3 .. 1e-7)
scale_up / scale_down  y_j x (1 +/- 1e-3)
sign_flip              -y_j
copy                   the payload of an honest worker (the next honest id)
consistent             the exact encoding of OTHER partition gradients: the liars'
                       payloads agree with each other (a codeword of their own)
one_lane               y_j + 1e-3 x mean|y| on the coordinates i = 3 (mod K) only: one
                       lane of the decoder's projections (K = ``projection.PROJECTIONS``)
structured             y_j + 1e-3 x mean|y| x x_j^q (cyclic: the q-th parity direction of
                       the code, q drawn in 1..2s; repetition: + 1e-3 x mean|y|)
attack:<name>          ``draco.core.attacks.make_attack(name)`` (omniscient ones get the
                       honest payloads)
=====================  ===============================================================
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from draco.core.attacks import ATTACKS, make_attack
from draco.core.projection import PROJECTIONS
from draco.errors import ConfigError, DecodeError

__all__ = [
    "ERROR_BOUND",
    "LIE_FAMILIES",
    "Outcome",
    "apply_lie",
    "honest_gradients",
    "judge_decode",
    "run_trial",
]

_SHAPED = (
    "sparse1_same",
    "sparse5_same",
    "sparse64_same",
    "sparse1_each",
    "sparse5_each",
    "sparse64_each",
    "tiny1e-3",
    "tiny1e-4",
    "tiny1e-5",
    "tiny1e-6",
    "tiny1e-7",
    "scale_up",
    "scale_down",
    "sign_flip",
    "copy",
    "consistent",
    "one_lane",
    "structured",
)
#: Every family, shaped lies first, then the attacks (label_flip acts on data: not a payload).
LIE_FAMILIES: tuple[str, ...] = _SHAPED + tuple(f"attack:{a}" for a in ATTACKS if a != "label_flip")

#: Offset of the sparse lies (the issue's reproduction: +50 on a few coordinates).
_SPARSE_VALUE = 50.0


def _real(y: np.ndarray) -> np.ndarray:
    """The real part as a writeable view (the real payload itself for float dtypes)."""
    return y.real if np.iscomplexobj(y) else y


def apply_lie(
    family: str,
    code: Any,
    payloads: Mapping[int, np.ndarray],
    liars: Sequence[int],
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    """The payloads with the liars' replaced according to ``family``.

    Parameters
    ----------
    family : str
        One of ``LIE_FAMILIES``.
    code : Code
        The code the payloads were encoded with (``draco.core.codes.make_code``).
    payloads : mapping int -> ndarray, shape (d,)
        Honest payloads of the workers present.
    liars : sequence of int
        Worker ids that lie (present in ``payloads``).
    rng : numpy Generator

    Returns
    -------
    dict int -> ndarray
        A new mapping; honest payloads are the same objects, liars' are new arrays.
    """
    if family not in LIE_FAMILIES:
        raise ConfigError(f"unknown lie family {family!r}; choose one of {LIE_FAMILIES}")
    out = dict(payloads)
    liars = [j for j in liars if j in payloads]
    if not liars:
        return out
    honest_ids = [j for j in sorted(payloads) if j not in set(liars)]
    d = next(iter(payloads.values())).size
    mean_abs = float(np.mean([np.mean(np.abs(payloads[j])) for j in honest_ids or liars]))
    shared = rng.choice(d, size=min(d, 64), replace=False)
    if family.startswith("attack:"):
        attack = make_attack(family.split(":", 1)[1])
        honest = np.stack([payloads[j] for j in honest_ids]) if attack.omniscient else None
        for j in liars:
            out[j] = attack.apply(
                payloads[j],
                rng=rng,
                honest=honest,
                n_workers=code.n_workers,
                n_adversaries=code.n_adversaries,
            )
        return out
    if family == "consistent":
        grads = rng.standard_normal((code.n_partitions, d)).astype(np.float32)
        grads *= np.float32(mean_abs / max(1.0, float(np.sqrt(code.redundancy))))
        for j in liars:
            out[j] = code.encode(j, grads[list(code.partitions_of(j))])
        return out
    q = int(rng.integers(1, 2 * max(1, code.n_adversaries) + 1))
    for j in liars:
        y = payloads[j].copy()
        if family.startswith("sparse"):
            count = int(family[len("sparse") :].split("_")[0])
            coords = shared[:count] if family.endswith("_same") else rng.choice(d, count, False)
            _real(y)[coords] += _SPARSE_VALUE
        elif family.startswith("tiny"):
            _real(y)[:] += float(family[len("tiny") :]) * mean_abs
        elif family == "scale_up":
            y *= 1 + 1e-3
        elif family == "scale_down":
            y *= 1 - 1e-3
        elif family == "sign_flip":
            y = -y
        elif family == "copy":
            # The next honest payload that differs from its own (in a repetition group
            # every honest member sends the same one: copy another group's).
            others = [k for k in honest_ids if not np.array_equal(payloads[k], y)]
            y = (
                payloads[min(others, key=lambda k: (k - j) % len(payloads))].copy()
                if others
                else -y
            )
        elif family == "one_lane":
            _real(y)[3::PROJECTIONS] += 1e-3 * mean_abs
        elif family == "structured":
            nodes = getattr(code, "nodes", None)
            factor = complex(nodes[j] ** q) if nodes is not None else 1.0
            if np.iscomplexobj(y):
                y += (1e-3 * mean_abs * factor) * np.ones(d, dtype=y.dtype)
            else:
                y += np.float32(1e-3 * mean_abs)
        out[j] = y.astype(payloads[j].dtype, copy=False)
    return out


#: The decoders' documented bound on the relative 2-norm error of a returned sum
#: (``CyclicDecoderConfig.max_error``; the repetition code's vote is exact).
ERROR_BOUND = 1e-5


@dataclass(frozen=True)
class Outcome:
    """One decode against one lie, judged by the three rules of the promise.

    Attributes
    ----------
    refused : str or None
        The DecodeError's message, or None when the decode returned a sum.
    error : float
        Relative 2-norm error of the returned sum against the exact float64 sum (nan when
        refused).
    framed : frozenset of int
        Honest workers the decoder named as liars (must be empty).
    located : frozenset of int
        Liars the decoder named.
    seconds : float
        Wall time of ``code.decode``.
    """

    refused: str | None
    error: float
    framed: frozenset[int]
    located: frozenset[int]
    seconds: float

    @property
    def silent(self) -> bool:
        """A returned sum beyond the bound: the one outcome the promise forbids outright."""
        return self.refused is None and not self.error <= ERROR_BOUND


def honest_gradients(n_partitions: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """(n_partitions, d) float32 partition gradients shaped like SGD's: a shared direction
    plus per-partition noise, with coordinates of very different scales (layers)."""
    scale = np.exp(rng.uniform(-4.0, 0.0, size=d)).astype(np.float32)
    common = rng.standard_normal(d).astype(np.float32)
    grads = rng.standard_normal((n_partitions, d)).astype(np.float32)
    grads += common
    grads *= scale
    return grads


def run_trial(
    code: Any,
    family: str,
    d: int,
    rng: np.random.Generator,
    liars: Sequence[int] | None = None,
    missing: Sequence[int] = (),
    grads: np.ndarray | None = None,
) -> Outcome:
    """Encode honest gradients, let ``liars`` (default: s random workers) lie, drop
    ``missing``, decode, and judge the result."""
    n, s = code.n_workers, code.n_adversaries
    if grads is None:
        grads = honest_gradients(code.n_partitions, d, rng)
    missing_set = set(missing)
    present = [j for j in range(n) if j not in missing_set]
    if liars is None:
        liars = sorted(
            int(j) for j in rng.choice(present, size=min(s, len(present)), replace=False)
        )
    payloads = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in present}
    sent = apply_lie(family, code, payloads, liars, rng)
    return judge_decode(code, sent, grads.sum(axis=0, dtype=np.float64), liars, rng)


def judge_decode(
    code: Any,
    sent: Mapping[int, np.ndarray],
    exact: np.ndarray,
    liars: Sequence[int],
    rng: np.random.Generator,
) -> Outcome:
    """Decode ``sent`` (the projection drawn from ``rng``) and judge it against ``exact``
    (shape (d,), float64: the sum of the partition gradients) and the true ``liars``."""
    start = time.perf_counter()
    try:
        result = code.decode(sent, rng=np.random.default_rng(rng.integers(1 << 63)))
    except DecodeError as exc:
        return Outcome(
            str(exc), float("nan"), frozenset(), frozenset(), time.perf_counter() - start
        )
    seconds = time.perf_counter() - start
    scale = max(float(np.linalg.norm(exact)), 1e-300)
    error = float(np.linalg.norm(result.gradient - exact)) / scale
    named = set(result.adversaries)
    return Outcome(
        None, error, frozenset(named - set(liars)), frozenset(named & set(liars)), seconds
    )
