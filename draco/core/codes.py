"""DRACO's codes: who computes which partitions, and what each worker sends.

Two codes from Chen et al., "DRACO" (ICML 2018), plus the uncoded baseline:

``repetition``
    The n workers form G = n // (2s+1) groups of consecutive ids, sizes differing by at most
    one (each >= 2s+1; no divisibility needed). A group of m workers holds the m partitions
    with its members' ids; every member sends the float32 sum of those m partition gradients,
    summed in partition order so honest members agree bit for bit. Decoding: a majority vote
    per group (``draco.core.vote.decode_repetition``).

``cyclic``
    Worker j computes partitions j, j+1, ..., j+2s (mod n) and sends ONE complex vector
    y_j = sum_k A[j, k] g_k. Row j of A is the value at the DFT node x_j of the polynomials
    p_k (degree < n-2s, p_k(0) = 1, p_k vanishing at every node outside partition k's
    window), so every column of Y = A G is a Reed-Solomon codeword over the n-th roots of
    unity whose constant coefficient is the wanted sum [CWCP18, section 5]. Departure from
    the paper (docs/numerics.md, "Construction"): worker j sits at
    x_j = exp(-2 pi i a j / n) with the stride a coprime to n that minimises the condition
    number of a window's Vandermonde matrix, instead of a = 1 (a contiguous arc: condition
    numbers up to 1e17 at n = 100).
    Decoding: ``draco.core.cyclic_decoder.decode_cyclic``.

``none``
    No redundancy; robust aggregation (``draco.core.baseline.UncodedCode``).

Example::

    code = make_code("cyclic", 15, 3)
    payloads = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(15)}
    result = code.decode(payloads)        # result.gradient == grads.sum(axis=0) (to ~1e-7)

Where each part lives: ``Code`` (the interface) in ``draco.core.decoder_types``;
``RepetitionCode`` in ``draco.core.repetition_code``; ``CyclicCode`` in
``draco.core.cyclic_code``, its construction (nodes, stride, encoding row, condition numbers)
in ``draco.core.cyclic_construction``; ``UncodedCode`` in ``draco.core.baseline``. This
module builds them by name (``make_code``) and re-exports their public names.

References: see ``draco.core.decoding``. Numerics: ``docs/numerics.md``.
"""

from __future__ import annotations

from typing import Any

from draco.core.cyclic_code import CyclicCode
from draco.core.cyclic_construction import (
    COMPLEX64_MAX_AMPLIFICATION,
    COMPLEX64_MAX_ERASURE_AMPLIFICATION,
    COMPLEX64_MAX_LOCATOR_CONDITION,
    COMPLEX64_MAX_PGZ_CONDITION,
    adjacent_workers,
    best_stride,
    circle_nodes,
    gap_amplification,
    locator_condition,
    pgz_condition,
    window_coefficients,
    window_condition,
)
from draco.core.decoder_types import Code
from draco.core.repetition_code import RepetitionCode
from draco.errors import ConfigError

__all__ = [
    "CODES",
    "COMPLEX64_MAX_AMPLIFICATION",
    "COMPLEX64_MAX_ERASURE_AMPLIFICATION",
    "COMPLEX64_MAX_LOCATOR_CONDITION",
    "COMPLEX64_MAX_PGZ_CONDITION",
    "Code",
    "CyclicCode",
    "RepetitionCode",
    "adjacent_workers",
    "best_stride",
    "circle_nodes",
    "gap_amplification",
    "locator_condition",
    "make_code",
    "pgz_condition",
    "window_coefficients",
    "window_condition",
]

CODES: tuple[str, ...] = ("repetition", "cyclic", "none")


def make_code(name: str, n_workers: int, n_adversaries: int, **options: Any) -> Code:
    """Build a code by name.

    Parameters
    ----------
    name : {"repetition", "cyclic", "none"}
    n_workers, n_adversaries : int
        n and s; the DRACO codes need n >= 2s+1.
    **options
        repetition: ``rtol``. cyclic: ``stride``, ``payload_dtype``. none: ``aggregator`` and
        the aggregator's options (see ``draco.core.baseline.UncodedCode``). ``code.options``
        holds what a worker passes back here to rebuild the same code.

    Raises
    ------
    ConfigError
        Unknown name or option, impossible parameters.
    """
    if name == "repetition":
        unknown = set(options) - {"rtol"}
        cls: Any = RepetitionCode
    elif name == "cyclic":
        unknown = set(options) - {"stride", "payload_dtype"}
        cls = CyclicCode
    elif name == "none":
        from draco.core.baseline import UncodedCode  # only the baseline needs the aggregators

        return UncodedCode(n_workers, n_adversaries, **options)
    else:
        raise ConfigError(f"unknown code {name!r}; choose one of {', '.join(CODES)}")
    if unknown:
        raise ConfigError(f"code {name!r} has no option(s) {', '.join(sorted(unknown))}")
    code: Code = cls(n_workers, n_adversaries, **options)
    return code
