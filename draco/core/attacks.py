"""Adversary strategies: what a lying worker sends instead of its honest payload.

For experiments only. A worker applies an attack to its own encoded payload as
``make_attack(name).apply(payload, rng=np.random.default_rng(attack_seed), n_workers=n,
n_adversaries=s)``. Omniscient attacks (``alie``, ``ipm``, ``colluding``) also need the
honest payloads of the other workers; the parameter server simulates those on the payloads
it received. ``label_flip`` is a data attack: the training side computes the gradient with
flipped labels, and ``apply`` returns the payload unchanged.

Payloads may be real (float32 for the repetition code and the baseline) or complex
(complex64/complex128 for the cyclic code); every attack returns an array of the same shape
and dtype as ``own``. Statistics over honest payloads of complex dtype are taken on the real
and imaginary parts separately (a complex vector of length d is treated as a real vector of
length 2d). Every attack is a pure function of its inputs and the generator ``rng``.

============  ================================================  ========================
attack        payload sent (d,)                                 needs to know
============  ================================================  ========================
constant      value * 1 (default -100)                          nothing
reverse       scale * own (default -100)                        own payload
gaussian      sigma * N(0, I) (complex: CN(0, sigma^2 I))       nothing (uses rng)
sign_flip     -own                                              own payload
alie          mean(H) - z(n, s) * std(H)                        honest payloads H
ipm           -eps * mean(H) (default eps 0.1)                  honest payloads H
label_flip    own, computed on labels y -> C-1-y                own data
colluding     scale * median(H) (default -1), same on all       honest payloads H
sparse        own + value on ``count`` coordinates (default     own payload
              +50 on 5, the same coordinates on every liar)
============  ================================================  ========================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from draco.errors import ConfigError

ATTACKS: tuple[str, ...] = (
    "constant",
    "reverse",
    "gaussian",
    "sign_flip",
    "alie",
    "ipm",
    "label_flip",
    "colluding",
    "sparse",
)


# Coordinates per block of the column-blocked statistics. 8 Ki keeps a block's float64
# temporaries (m x 64 KiB, 2.6 MB at m = 40) near cache size: ALIE over 40 x 1,033,510
# float32 took 0.10 s with 8 Ki blocks, 0.17 s with 64 Ki, 1.2 s unblocked (this VM).
_COLUMN_BLOCK = 8192


def _real_view(A: np.ndarray) -> np.ndarray:
    """View a complex array's last axis as interleaved (re, im) reals; reals unchanged."""
    if np.iscomplexobj(A):
        return np.ascontiguousarray(A).view(A.real.dtype)
    return A


def _from_real(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Inverse of ``_real_view``: cast interleaved reals back to ``like``'s dtype and shape."""
    if np.iscomplexobj(like):
        real_dtype = like.real.dtype
        return np.ascontiguousarray(values, dtype=real_dtype).view(like.dtype)
    return values.astype(like.dtype, copy=False)


@dataclass(frozen=True)
class Attack:
    """Base class: validation around one crafting rule.

    Attributes
    ----------
    name : str
        The attack's name in ``ATTACKS``.
    omniscient : bool
        Needs the honest payloads of the other workers (simulated at the PS).
    data_attack : bool
        Acts on the training data (label_flip); ``apply`` is the identity.
    same_for_every_liar : bool
        The lie is a statistic of the honest payloads alone (``_statistic``), the same
        vector for every liar of a round.
    """

    name: ClassVar[str] = ""
    omniscient: ClassVar[bool] = False
    data_attack: ClassVar[bool] = False
    same_for_every_liar: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """The attack's parameters (msgpack-able), as ``make_attack`` takes them."""
        return dataclasses.asdict(self)

    def apply(
        self,
        own: np.ndarray,
        *,
        rng: np.random.Generator,
        honest: np.ndarray | None = None,
        n_workers: int,
        n_adversaries: int,
    ) -> np.ndarray:
        """Return the payload this liar sends.

        Parameters
        ----------
        own : ndarray, shape (d,), real or complex floating
            This liar's honest payload.
        rng : numpy.random.Generator
            The only source of randomness (used by ``gaussian``).
        honest : ndarray, shape (m, d), optional
            Honest payloads of the other workers; required by omniscient attacks.
        n_workers : int
            n, the number of workers.
        n_adversaries : int
            s (or f), the number of adversaries.

        Returns
        -------
        ndarray, shape (d,), own.dtype
        """
        own, honest = self._checked(own, honest, n_workers, n_adversaries)
        out = self._craft(own, rng, honest, n_workers, n_adversaries)
        assert out.shape == own.shape and out.dtype == own.dtype
        return out

    def apply_all(
        self,
        owns: Sequence[np.ndarray],
        *,
        rngs: Sequence[np.random.Generator],
        honest: np.ndarray | None = None,
        n_workers: int,
        n_adversaries: int,
    ) -> list[np.ndarray]:
        """The payloads of every liar of one round: ``[apply(own_i, rng=rng_i, ...)]``.

        Equal element by element to calling ``apply`` per liar. Attacks whose lie does not
        depend on the liar's own payload (``alie``, ``ipm``, ``colluding``: a statistic of
        H) compute it once instead of once per liar: at n = 45, s = 5, d = 1,033,510 that
        was 5 passes over 40 x d values per round at the PS.

        Parameters
        ----------
        owns : sequence of ndarray, each shape (d,)
            The liars' honest payloads.
        rngs : sequence of numpy.random.Generator, one per liar
        honest, n_workers, n_adversaries
            As for ``apply``.

        Returns
        -------
        list of ndarray, shapes and dtypes of ``owns``
        """
        if len(rngs) != len(owns):
            raise ConfigError(
                f"attack {self.name!r}: {len(owns)} payloads but {len(rngs)} generators"
            )
        if not self.same_for_every_liar or not owns:
            return [
                self.apply(
                    own, rng=rng, honest=honest, n_workers=n_workers, n_adversaries=n_adversaries
                )
                for own, rng in zip(owns, rngs, strict=True)
            ]
        checked = [self._checked(own, honest, n_workers, n_adversaries) for own in owns]
        lie = self._statistic(checked[0][1], n_workers, n_adversaries)
        return [_from_real(lie, own) for own, _ in checked]

    def _checked(
        self, own: Any, honest: Any, n_workers: int, n_adversaries: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Validate ``apply``'s inputs; return them as arrays."""
        own = np.asarray(own)
        if own.ndim != 1 or not np.issubdtype(own.dtype, np.inexact):
            raise ConfigError(
                f"attack {self.name!r}: own payload must be a 1-D float or complex array, "
                f"got shape {own.shape} dtype {own.dtype}"
            )
        if n_workers < 1 or not 0 <= n_adversaries <= n_workers:
            raise ConfigError(
                f"attack {self.name!r}: need n_workers >= 1 and 0 <= n_adversaries <= "
                f"n_workers, got {n_workers} and {n_adversaries}"
            )
        if self.omniscient:
            if honest is None:
                raise ConfigError(
                    f"attack {self.name!r} is omniscient: it needs the honest payloads "
                    f"(honest=, shape (m, d)); run it at the parameter server"
                )
            honest = np.asarray(honest)
            if honest.ndim != 2 or honest.shape[0] < 1 or honest.shape[1] != own.shape[0]:
                raise ConfigError(
                    f"attack {self.name!r}: honest payloads must have shape (m >= 1, "
                    f"{own.shape[0]}), got {honest.shape}"
                )
        return own, honest

    def _statistic(self, honest: Any, n: int, s: int) -> np.ndarray:
        """The lie of a ``same_for_every_liar`` attack, as interleaved float64 reals (2d or d,)."""
        raise NotImplementedError

    def _craft(
        self,
        own: np.ndarray,
        rng: np.random.Generator,
        honest: np.ndarray | None,
        n: int,
        s: int,
    ) -> np.ndarray:
        raise NotImplementedError


def _finite(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"{what} must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class Constant(Attack):
    """Send ``value`` in every coordinate (default -100, as in the original DRACO code).

    payload = value * (1, ..., 1) (imaginary part 0 for complex payloads).
    Source: Chen et al., DRACO, ICML 2018, experiments ("constant attack").
    Knows: nothing.
    """

    name: ClassVar[str] = "constant"
    value: float = -100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _finite(self.value, "constant: value"))

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        return np.full(own.shape, self.value, dtype=own.dtype)


@dataclass(frozen=True)
class Reverse(Attack):
    """Send the honest payload scaled by ``scale`` (default -100: the reversed gradient).

    payload = scale * own.
    Source: Chen et al., DRACO, ICML 2018, experiments ("reverse gradient attack").
    Knows: its own honest payload.
    """

    name: ClassVar[str] = "reverse"
    scale: float = -100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _finite(self.scale, "reverse: scale"))

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        return (own * self.scale).astype(own.dtype, copy=False)


@dataclass(frozen=True)
class Gaussian(Attack):
    """Send pure Gaussian noise with standard deviation ``sigma`` per coordinate.

    payload ~ N(0, sigma^2 I) for real payloads; for complex payloads CN(0, sigma^2 I)
    (real and imaginary parts i.i.d. N(0, sigma^2 / 2)). Drawn from ``rng`` only.
    Default sigma = 200 (the Gaussian attack's variance-200 setting of Xie, Koyejo, Gupta,
    "Generalized Byzantine-tolerant SGD", 2018, taken as a standard deviation).
    Knows: nothing.
    """

    name: ClassVar[str] = "gaussian"
    sigma: float = 200.0

    def __post_init__(self) -> None:
        sigma = _finite(self.sigma, "gaussian: sigma")
        if sigma < 0:
            raise ConfigError(f"gaussian: sigma must be >= 0, got {sigma}")
        object.__setattr__(self, "sigma", sigma)

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        real_dtype = own.real.dtype
        gen_dtype = real_dtype if real_dtype in (np.float32, np.float64) else np.float64
        if np.iscomplexobj(own):
            noise = rng.standard_normal(2 * own.shape[0], dtype=gen_dtype)
            noise *= self.sigma / math.sqrt(2.0)
        else:
            noise = rng.standard_normal(own.shape[0], dtype=gen_dtype)
            noise *= self.sigma
        return _from_real(noise, own)


@dataclass(frozen=True)
class SignFlip(Attack):
    """Send the negated honest payload.

    payload = -own.
    Source: e.g. Damaskinos et al., "Asynchronous Byzantine machine learning", ICML 2018;
    Li et al., "RSA", AAAI 2019 (sign-flipping attack).
    Knows: its own honest payload.
    """

    name: ClassVar[str] = "sign_flip"

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        return np.negative(own)


def alie_z(n_workers: int, n_adversaries: int) -> float:
    """The "a little is enough" shift z (Baruch, Baruch, Goldberg, NeurIPS 2019, section 4).

    1. s = floor(n/2 + 1) - f: workers the attackers must win over to form a majority.
    2. z = Phi^{-1}((n - s) / n), Phi the standard normal CDF.

    Raises ConfigError when (n - s)/n is not in (0, 1) (f at or above a majority).
    """
    n, f = int(n_workers), int(n_adversaries)
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ConfigError(
            f"alie: z is undefined for n={n}, f={f} ((n - s)/n = {p} with s = floor(n/2+1) - f); "
            f"needs f < floor(n/2 + 1)"
        )
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class Alie(Attack):
    """A little is enough: shift the honest mean by z standard deviations, per coordinate.

    payload = mean(H) - z * std(H), over the honest payloads H (population std, ddof 0),
    per real coordinate; z = ``alie_z(n, s)`` unless ``z`` is given.
    Source: Baruch, Baruch, Goldberg, "A little is enough: circumventing defenses for
    distributed learning", NeurIPS 2019.
    Knows: the honest payloads (omniscient). All liars compute the same vector (up to
    float rounding if they see the honest payloads in different orders).
    """

    name: ClassVar[str] = "alie"
    omniscient: ClassVar[bool] = True
    same_for_every_liar: ClassVar[bool] = True
    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is not None:
            object.__setattr__(self, "z", _finite(self.z, "alie: z"))

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        return _from_real(self._statistic(honest, n, s), own)

    def _statistic(self, honest: Any, n: int, s: int) -> np.ndarray:
        z = alie_z(n, s) if self.z is None else self.z
        H = _real_view(honest)
        out = np.empty(H.shape[1], dtype=np.float64)
        # Column blocks keep the float64 temporaries cache-sized (one (m, d) float64 copy
        # was 12x slower at d = 1e6); each column's sums run over the rows in the same
        # order either way, so the bits do not change (tested).
        for lo in range(0, H.shape[1], _COLUMN_BLOCK):
            block = H[:, lo : lo + _COLUMN_BLOCK]
            mu = block.mean(axis=0, dtype=np.float64)
            sd = block.std(axis=0, dtype=np.float64)
            out[lo : lo + _COLUMN_BLOCK] = mu - z * sd
        return out


@dataclass(frozen=True)
class Ipm(Attack):
    """Inner-product manipulation: the negated, scaled honest mean.

    payload = -eps * mean(H). Small eps (default 0.1) defeats Krum-like rules; large eps
    (e.g. 100) defeats mean/median.
    Source: Xie, Koyejo, Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner
    product manipulation", UAI 2020.
    Knows: the honest payloads (omniscient).
    """

    name: ClassVar[str] = "ipm"
    omniscient: ClassVar[bool] = True
    same_for_every_liar: ClassVar[bool] = True
    eps: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", _finite(self.eps, "ipm: eps"))

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        return _from_real(self._statistic(honest, n, s), own)

    def _statistic(self, honest: Any, n: int, s: int) -> np.ndarray:
        mu = _real_view(honest).mean(axis=0, dtype=np.float64)
        return -self.eps * mu


@dataclass(frozen=True)
class LabelFlip(Attack):
    """Label flipping: train on labels y -> C-1-y (C classes); the payload is sent unchanged.

    ``apply`` is the identity: the training side computes the gradient with
    ``flip_labels=True``.
    Source: e.g. Damaskinos et al., "AggregaThor", SysML 2019; Fang et al., USENIX Security
    2020 (label flipping attack).
    Knows: its own data.
    """

    name: ClassVar[str] = "label_flip"
    data_attack: ClassVar[bool] = True

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        return own


@dataclass(frozen=True)
class Colluding(Attack):
    """All liars send one identical vector: the scaled coordinate-wise median of H.

    payload = scale * median(H) per real coordinate (default scale -1).
    Identical vectors form the largest coalition the s liars can muster in any vote
    (repetition groups, tolerance votes) and a zero-diameter cluster that distance-based
    rules (Krum, Bulyan) score well. The coordinate-wise median is exactly invariant to the
    order of the rows of H (it is a selection, or the mean of two selected values), so
    liars that compute it independently from the same honest payloads send bit-identical
    vectors, whatever order they received them in.
    Source: the colluding-adversary model of Chen et al., DRACO, ICML 2018 (section 2:
    adversaries may collude and know everything).
    Knows: the honest payloads (omniscient).
    """

    name: ClassVar[str] = "colluding"
    omniscient: ClassVar[bool] = True
    same_for_every_liar: ClassVar[bool] = True
    scale: float = -1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _finite(self.scale, "colluding: scale"))

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        return _from_real(self._statistic(honest, n, s), own)

    def _statistic(self, honest: Any, n: int, s: int) -> np.ndarray:
        H = np.sort(_real_view(honest), axis=0)
        m = H.shape[0]
        k = m // 2
        med = H[k].astype(np.float64) if m % 2 else (H[k - 1] / 2.0 + H[k] / 2.0)
        return self.scale * np.asarray(med, dtype=np.float64)


@dataclass(frozen=True)
class Sparse(Attack):
    """Add ``value`` to ``count`` coordinates of the honest payload, leave the rest honest.

    payload = own + value * 1_C, |C| = count (real part for complex payloads). ``shared``
    (default): C is the same on every liar (drawn from a generator seeded by the payload
    length, so colluders agree without talking); otherwise each liar draws its own from
    ``rng``. A lie that touches a few coordinates hides from any check that samples
    coordinates, and lands in few lanes of a projection: it broke the cyclic decoder's
    first design (issue 9). Knows: its own honest payload.
    """

    name: ClassVar[str] = "sparse"
    count: int = 5
    value: float = 50.0
    shared: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"sparse: count must be an integer >= 1, got {self.count!r}")
        object.__setattr__(self, "value", _finite(self.value, "sparse: value"))
        if not isinstance(self.shared, bool):
            raise ConfigError(f"sparse: shared must be true or false, got {self.shared!r}")

    def _craft(
        self, own: np.ndarray, rng: np.random.Generator, honest: Any, n: int, s: int
    ) -> np.ndarray:
        d = own.shape[0]
        pick = np.random.default_rng(d) if self.shared else rng
        coords = pick.choice(d, size=min(d, self.count), replace=False)
        out = own.copy()
        (out.real if np.iscomplexobj(out) else out)[coords] += self.value
        return out


_CLASSES: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (Constant, Reverse, Gaussian, SignFlip, Alie, Ipm, LabelFlip, Colluding, Sparse)
}
assert tuple(_CLASSES) == ATTACKS


def make_attack(name: str, **params: Any) -> Attack:
    """Build the attack ``name`` with its parameters.

    Parameters
    ----------
    name : str
        One of ``ATTACKS``.
    **params
        The attack's parameters (see each class); unknown ones raise ConfigError.

    Returns
    -------
    Attack
    """
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"attack {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        )
    return cls(**params)
