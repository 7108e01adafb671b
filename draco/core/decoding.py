"""Decoders of the DRACO codes: exact majority vote and the cyclic (DFT) syndrome decoder.

Both decoders return the SUM over all partitions of the partition gradients, name the workers
located as lying, and raise :class:`draco.errors.DecodeError` instead of returning a sum they
cannot vouch for. The codes themselves (assignment, encoding) are built by
``draco.core.codes.make_code``.

References
----------
.. [CWCP18] L. Chen, H. Wang, Z. Charles, D. Papailiopoulos, "DRACO: Byzantine-resilient
   Distributed Training via Redundant Gradients", ICML 2018, sections 4-5.
.. [Bla03] R. E. Blahut, *Algebraic Codes for Data Transmission*, Cambridge University
   Press 2003, ch. 6 (Reed-Solomon codes, the Peterson-Gorenstein-Zierler locator, Chien
   search) and section 7.4 (decoding errors and erasures; Forney's modified syndromes).
.. [For65] G. D. Forney, "On decoding BCH codes", IEEE Trans. Inf. Theory 11(4), 1965.
.. [Fre97] R. Freivalds' randomised check, in R. Motwani, P. Raghavan, *Randomized
   Algorithms*, section 7.1: a secret random projection detects a nonzero error with
   probability one.

Numerics and measured accuracy: ``docs/numerics.md`` (made by ``benchmarks/cyclic_numerics.py``).

The implementation is split by job; this module gathers the public API:

- ``draco.core.decoder_types``: ``DecodeResult``, ``CyclicDecoderConfig``;
- ``draco.core.vote``: the repetition code's majority vote;
- ``draco.core.projection``: secret projections of the cyclic payloads;
- ``draco.core.locator``: the cyclic locator (PGZ, refits, naming; its search in
  ``draco.core.locator_search``, its linear algebra in ``draco.core.locator_fit``);
- ``draco.core.weights``: recovery and check weights, node powers;
- ``draco.core.cyclic_decoder``: the cyclic decode (fast path, full path, recovery pass).
"""

from __future__ import annotations

from draco.core.cyclic_decoder import decode_cyclic
from draco.core.decoder_types import CyclicDecoderConfig, DecodeResult
from draco.core.locator import locate_cyclic
from draco.core.projection import PROJECTIONS, WEIGHTS, Projections, project_rows
from draco.core.vote import (
    bitwise_equal,
    decode_repetition,
    repetition_ready,
    sum_group_values,
)
from draco.core.weights import (
    check_weights,
    extended_roots,
    node_powers,
    recovery_weights,
    roots_of_unity,
)

__all__ = [
    "PROJECTIONS",
    "WEIGHTS",
    "CyclicDecoderConfig",
    "DecodeResult",
    "Projections",
    "bitwise_equal",
    "check_weights",
    "decode_cyclic",
    "decode_repetition",
    "extended_roots",
    "locate_cyclic",
    "node_powers",
    "project_rows",
    "recovery_weights",
    "repetition_ready",
    "roots_of_unity",
    "sum_group_values",
]
