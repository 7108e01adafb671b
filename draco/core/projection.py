"""Secret random projections of the cyclic code's payload rows, with their measured noise.

The locator works on a few hundred numbers per worker instead of d: each payload is
projected on secret random vectors drawn after the payloads arrived [Fre97]; the projected
rows are codewords of the same Reed-Solomon code plus the projected lies [CWCP18, section 5].

.. [CWCP18] L. Chen, H. Wang, Z. Charles, D. Papailiopoulos, "DRACO: Byzantine-resilient
   Distributed Training via Redundant Gradients", ICML 2018.
.. [Fre97] R. Freivalds' randomised check, in R. Motwani, P. Raghavan, *Randomized
   Algorithms*, section 7.1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PROJECTIONS", "WEIGHTS", "Projections", "project_rows"]

#: Payload rows per float64 partial product in ``project_rows`` (rows of the (d/K, 2K) view):
#: each chunk (2 MB in float64) is cast to float64 in cache before the product, so the
#: projection's own arithmetic adds about 1e-16 x sqrt(chunk) relative error, far below
#: complex64 rounding. Measured at n = 45, d = 1,033,510 (full projection, shared machine):
#: 512-2048 rows 157-180 ms, 8192 rows 370 ms (the float64 chunk no longer fits in cache).
PROJECTION_CHUNK = 1 << 11
#: Rows of the (d/K, 2K) view per block of the fast path's secret sample (65,536 coordinates).
SAMPLE_BLOCK = 1 << 10
#: The sample's lane energies are summed over every this-many-th row (``project_rows``).
_SAMPLE_STRIDE = 4
#: Lanes per projection weight vector: coordinate i goes to lane i mod PROJECTIONS.
PROJECTIONS = 64
#: Independent secret weight vectors per lane (every coordinate is seen by this many lanes,
#: so a lie on one coordinate is missed only if all its weights are small: probability
#: ~ eps**WEIGHTS instead of eps).
WEIGHTS = 2


@dataclass(frozen=True)
class Projections:
    """Secret projections of the payload rows and their measured noise.

    Attributes
    ----------
    z : dict int -> ndarray, shape (L,), complex128
        L = WEIGHTS x PROJECTIONS lanes: z[j][a K + k] = sum_m r^(a)_m y_j[m K + k].
    energy : dict int -> ndarray, shape (L,), float64
        sum of |y_j[i]|^2 over the coordinates of each lane: the noise basis (the rounding
        of lane l of row j has standard deviation <= unit x sqrt(energy[j][l] / 3)).
    coordinates : int
        How many coordinates were projected (d, or fewer for a sample).
    arithmetic : float
        Factor on the noise bound for the projection's own arithmetic: 1 when it summed in
        float64; 1 + sqrt(SAMPLE_BLOCK) for the fast path's sample, summed in float32 over
        blocks of SAMPLE_BLOCK rows (the sample only picks the rows to leave out; the
        recovery pass then checks every coordinate against the tight bound).
    """

    z: dict[int, np.ndarray]
    energy: dict[int, np.ndarray]
    coordinates: int
    arithmetic: float = 1.0

    def finite(self) -> Projections:
        """The rows whose projections are finite (NaN/Inf payloads are erasures)."""
        keep = [j for j, v in self.z.items() if np.isfinite(v).all()]
        return Projections(
            {j: self.z[j] for j in keep},
            {j: self.energy[j] for j in keep},
            self.coordinates,
            self.arithmetic,
        )


def _all_complex64(rows: Mapping[int, np.ndarray]) -> bool:
    """True when every payload is complex64 (its real view is float32)."""
    return all(y.dtype == np.complex64 for y in rows.values())


def project_rows(
    rows: Mapping[int, np.ndarray],
    d: int,
    rng: np.random.Generator,
    blocks: Sequence[int] | None = None,
) -> Projections:
    """Project each payload on WEIGHTS x K secret random vectors in one pass.

    Lane (a, k) sees the coordinates i = k (mod K): z_{j,(a,k)} = sum_m r^(a)_m y_j[mK+k],
    with r^(a)_m uniform in [-1, 1) (and extra weights for the d mod K trailing coordinates).
    Each z is complex-linear in y_j, so every lane of the projected payloads is a codeword
    of the same Reed-Solomon code plus the projected errors [CWCP18, section 5]. A nonzero
    error changes some projection with probability one [Fre97]; r is drawn here, after the
    payloads arrived, so a liar cannot aim at its null space.

    Steps, per chunk of ``PROJECTION_CHUNK`` rows of the (d/K, 2K) real view
    -------------------------------------------------------------------------
    1. Cast the chunk to float64 (in cache): the projection adds no float32 accumulation
       error, so the only noise left is the payload's own rounding. (Not for a sample:
       ``Projections.arithmetic``.)
    2. (WEIGHTS, chunk) @ (chunk, 2K): the lanes' partial projections, summed over chunks.
    3. The chunk's sum of squares per column: the lanes' energies (the noise basis).

    Parameters
    ----------
    rows : mapping int -> ndarray, shape (d,), complex64 or complex128, C-contiguous
    d : int
    rng : numpy Generator
    blocks : sequence of int or None
        None: every coordinate. Otherwise only these blocks of ``SAMPLE_BLOCK`` x K
        coordinates (a secret random sample, see ``decode_cyclic``; the tail is skipped).

    Returns
    -------
    Projections
        Non-finite entries when the payload holds NaN/Inf (they propagate through the sums).
    """
    k = PROJECTIONS
    m = d // k
    head = m * k
    r = rng.random((WEIGHTS, m)) * 2 - 1
    r_tail = rng.random((WEIGHTS, d - head)) * 2 - 1
    if blocks is None:
        spans = [(a, min(m, a + PROJECTION_CHUNK)) for a in range(0, m, PROJECTION_CHUNK)]
    else:
        spans = [(b * SAMPLE_BLOCK, min(m, (b + 1) * SAMPLE_BLOCK)) for b in blocks]
    # The sample sums in the payload's precision (no float64 copy: it costs more than the
    # sample's whole read), one BLAS call per block; the noise bound says so (arithmetic).
    exact = blocks is None
    # The sample's weights in the payload's real precision (no per-chunk cast).
    r_low = None if exact else r.astype(np.float32 if _all_complex64(rows) else np.float64)
    coordinates = sum(b - a for a, b in spans) * k
    tail = d - head if blocks is None else 0
    coordinates += tail
    z: dict[int, np.ndarray] = {}
    energy: dict[int, np.ndarray] = {}
    for j, y in rows.items():
        real = y.view(np.float32 if y.dtype == np.complex64 else np.float64)
        acc = np.zeros((WEIGHTS, 2 * k))
        sq = np.zeros(2 * k)
        if m:
            mat = real[: 2 * head].reshape(m, 2 * k)
            for start, stop in spans:
                # Step 1.
                chunk: np.ndarray = mat[start:stop]
                if exact:
                    chunk = chunk.astype(np.float64, copy=False)
                    acc += r[:, start:stop] @ chunk  # Step 2.
                else:
                    assert r_low is not None
                    acc += r_low[:, start:stop] @ chunk
                # Step 3 (a dot per column: no squared temporary). The sample estimates its
                # energies from every _SAMPLE_STRIDE-th row: they only scale its (already
                # loose) bound; the full projection and the recovery check use exact ones.
                part = chunk if exact else chunk[::_SAMPLE_STRIDE]
                scale = 1.0 if exact else chunk.shape[0] / max(part.shape[0], 1)
                sq += scale * np.einsum("ij,ij->j", part, part)
        if tail:
            pairs = real[2 * head : 2 * d].astype(np.float64)  # (2 tail,) re, im, re, ...
            acc[:, : 2 * tail] += np.repeat(r_tail, 2, axis=1) * pairs
            sq[: 2 * tail] += pairs * pairs
        lanes = acc[:, 0::2] + 1j * acc[:, 1::2]  # (WEIGHTS, K)
        z[j] = lanes.reshape(-1)
        energy[j] = np.tile(sq[0::2] + sq[1::2], WEIGHTS)
    arithmetic = 1.0 if exact else 1.0 + float(np.sqrt(SAMPLE_BLOCK))
    return Projections(z, energy, coordinates, arithmetic)
