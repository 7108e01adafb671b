"""The cyclic locator's search: which rows to leave out (steps 2-5 of ``locate_cyclic``).

``Search`` works on the whitened rows of step 1 (``Rows``, made by ``draco.core.locator``):
it proposes suspect sets (PGZ ranking, put-back, greedy, peeling, arcs), refines them by
concentration steps and swaps, judges each by ``fit_outside`` (``draco.core.locator_fit``),
and names the liars among the suspects of the set it keeps (``Location``). The step numbers
are those of ``draco.core.locator.locate_cyclic``'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from draco.core.decoder_types import CyclicDecoderConfig
from draco.core.locator_fit import Fit, fit_outside, pgz_ranking
from draco.core.weights import node_powers

__all__ = ["Location", "Rows", "Search"]

#: A locator candidate whose kept rows fit within this many noise units ends the search
#: (``locate_cyclic`` step 4): honest rows fit within about 0.6 whitened units (the noise
#: bound is about sqrt(3) above the rounding's actual spread). A candidate above it is
#: refined by swaps (step 4b): a near-miss that keeps some liars (their lies absorbed by
#: an ill-conditioned cluster of suspects) fits worse than the true set.
_SETTLED = 1.0
#: A candidate this many times past config.factor is not brought back by swapping one row at
#: a time (``locate_cyclic`` step 5b): the lie kept in it is far outside the noise.
_HOPELESS = 1e3
#: Sets kept per size in the last-resort forward selection (``locate_cyclic`` step 4c).
_BEAM = 16


@dataclass(frozen=True)
class Location:
    liars: frozenset[int]  # rows shown to lie beyond the noise level (reported)
    excluded: frozenset[int]  # rows left out of the recovery (liars + unclearable suspects)
    residual: float  # normalised consistency residual of the kept rows (<= factor: consistent)
    within_budget: bool  # |excluded| <= floor((2s - |erasures|) / 2) (the safe bound)


@dataclass(frozen=True)
class Rows:
    """The whitened projections the search works on (step 1 of ``locate_cyclic``)."""

    nodes: np.ndarray  # (n,) all nodes of the code
    s: int
    clean: list[int]  # workers whose rows the search may keep or leave out
    zs: np.ndarray  # (m, L) their whitened projections
    own: np.ndarray  # (m, L) each row's own noise bound, in lane units
    known: list[int]  # erased + set-aside workers
    aside: list[int]  # set aside as huge (named liars)
    level: float  # typical honest |z| (whitened)
    tau: int  # floor((2s - |known|) / 2): how many more rows may lie


Candidate = tuple[list[int], Fit]


class Search:
    """Steps 2-5 of ``locate_cyclic`` over whitened rows. Suspects are indices into
    ``rows.clean``; ``kept_forced`` holds rows a search may not leave out (step 5)."""

    def __init__(self, rows: Rows, config: CyclicDecoderConfig) -> None:
        self.rows = rows
        self.config = config
        self.nodes = rows.nodes
        self.s = rows.s
        self.tau = rows.tau
        self.clean = rows.clean
        self.known = rows.known
        self.m = len(rows.clean)
        parity = node_powers(rows.nodes, np.arange(1, 2 * rows.s + 1))  # (2s, n)
        self.g = parity[:, rows.clean]
        self.g_known = parity[:, rows.known]
        self.sharp_level = config.power * rows.level
        # Suspects that leave exactly n - 2s rows.
        self.wide = min(2 * rows.s - len(rows.known), self.m)
        circle = np.mod(
            np.round(-np.angle(rows.nodes) * rows.nodes.size / (2 * np.pi)), rows.nodes.size
        )
        self.where = circle[rows.clean].astype(int)  # each clean row's place on the circle
        self.kept_forced: set[int] = set()
        self.fits = 0  # fits so far (``name`` bounds its share: config.naming_fits)
        # ``search`` stops proposing sets at this many fits (config.search_fits).
        self.search_stop = config.search_fits

    def fit(self, sus: Sequence[int]) -> Fit:
        self.fits += 1
        f = fit_outside(
            self.g, self.rows.zs, self.g_known, sus, 1.0, self.sharp_level, self.rows.own
        )
        if self.kept_forced:
            f.score[list(self.kept_forced)] = -np.inf  # never proposed as a suspect
        return f

    @staticmethod
    def top(score: np.ndarray, count: int) -> list[int]:
        return [int(i) for i in np.argsort(-score, kind="stable")[:count]]

    @property
    def out_of_fits(self) -> bool:
        """The search has spent its fits (``config.search_fits``): keep the best so far."""
        return self.fits >= self.search_stop

    def concentrate(self, sus: list[int]) -> Candidate:
        # Step 3: each step lowers the trimmed misfit; stop when the set repeats.
        seen: set[tuple[int, ...]] = set()
        f = self.fit(sus)
        start = (sus, f)
        while (
            tuple(sorted(sus)) not in seen and len(seen) < 4 * self.tau + 8 and not self.out_of_fits
        ):
            seen.add(tuple(sorted(sus)))
            nxt = self.top(f.score, len(sus))
            if set(nxt) == set(sus):
                break
            f2 = self.fit(nxt)
            if f2.residual >= f.residual:
                break
            sus, f = nxt, f2
        if f.residual <= self.config.factor:
            return sus, f
        return min((sus, f), self.persist(*start), key=lambda c: c[1].residual)

    def persist(self, sus: list[int], f: Fit) -> Candidate:
        # Step 3b, only when step 3 ends inconsistent: carry on even when a step does not
        # lower the residual (one liar left among the kept rows dominates it however many
        # others were removed, yet the next step may reach it), keep the best set seen;
        # when the sets cycle, a wide step: fit without the ``wide`` worst rows (the code
        # through the n - 2s best rows) and take the worst rows against that fit.
        seen: set[tuple[int, ...]] = set()
        best = (sus, f)
        while (
            len(seen) < 4 * self.tau + 8
            and f.residual > self.config.factor
            and not self.out_of_fits
        ):
            seen.add(tuple(sorted(sus)))
            nxt = self.top(f.score, len(sus))
            if tuple(sorted(nxt)) in seen and self.wide > len(sus):
                nxt = self.top(self.fit(self.top(f.score, self.wide)).score, len(sus))
            if tuple(sorted(nxt)) in seen:
                break
            sus, f = nxt, self.fit(nxt)
            if f.residual < best[1].residual:
                best = (sus, f)
        return best

    def greedy(self) -> list[int]:
        sus: list[int] = []
        f = self.fit(sus)
        while f.residual > self.config.factor and len(sus) < self.tau and not self.out_of_fits:
            cand = np.argsort(-f.score, kind="stable")
            sus.append(next(int(i) for i in cand if int(i) not in sus))
            f = self.fit(sus)
        return sus

    def backward(self, sus: list[int]) -> list[int]:
        # Put back the suspects that agree best with the codeword fitted without them.
        while len(sus) > self.tau:
            f = self.fit(sus)
            drop = max(1, (len(sus) - self.tau) // 2)
            keep = np.argsort(-f.score[sus], kind="stable")[: len(sus) - drop]
            sus = [sus[int(i)] for i in keep]
        return sus

    def ranking(self, rest: list[int], erased: list[int], count: int) -> list[int]:
        # The PGZ ranking of the rows ``rest`` (indices into clean) with ``erased`` (nodes
        # of rows left out) as erasures; rows forced in are never proposed.
        order = pgz_ranking(
            self.nodes[[self.clean[i] for i in rest]],
            self.g[:, rest],
            self.rows.zs[rest],
            self.nodes[erased],
            self.s,
            count,
        )
        return [rest[int(i)] for i in order if rest[int(i)] not in self.kept_forced]

    def peel(self, sus: list[int], rounds: int) -> list[int]:
        # Treat the suspects as erasures and locate again with the budget they leave
        # (liars next to a long erased arc are swamped in the first syndromes by the
        # visible ones), up to ``rounds`` times, then put back down to tau rows (backward).
        for _ in range(rounds):
            taken = set(sus)
            rest = [i for i in range(self.m) if i not in taken]
            more = (2 * self.s - len(self.known) - len(sus)) // 2
            if more <= 0 or not rest:
                break
            sus = sus + self.ranking(rest, self.known + [self.clean[i] for i in sus], more)[:more]
        return self.backward(sus)

    def swaps(
        self,
        sus: list[int],
        f: Fit,
        rounds: int,
        rows: Sequence[int] | None = None,
        stop_at: int | None = None,
    ) -> Candidate:
        # Step 4b: swap one suspect for a kept row next to a suspect on the circle (or
        # among the worst-fitting kept rows) while that lowers the residual. With ``rows``:
        # only suspects among ``rows`` for kept rows among ``rows`` (a local search). With
        # ``stop_at``: return the best set so far once ``self.fits`` reaches it.
        for _ in range(rounds):
            pool = self._swap_pool(sus, f) if rows is None else [i for i in rows if i not in sus]
            best = (sus, f)
            for a in range(len(sus)):
                if rows is not None and sus[a] not in rows:
                    continue
                for b in pool:
                    if stop_at is not None and self.fits >= stop_at:
                        return best
                    trial = [*sus[:a], b, *sus[a + 1 :]]
                    ft = self.fit(trial)
                    if ft.residual < best[1].residual:
                        best = (trial, ft)
            if best[0] is sus:
                break
            sus, f = best
            if f.residual <= _SETTLED:
                break
        return sus, f

    def _swap_pool(self, sus: list[int], f: Fit) -> list[int]:
        """Kept rows within 2 places of a suspect on the circle, then the worst-fitting."""
        n_nodes = self.nodes.size
        near = {int((self.where[i] + d) % n_nodes) for i in sus for d in (-2, -1, 1, 2)}
        pool = [
            i
            for i in range(self.m)
            if i not in sus and i not in self.kept_forced and int(self.where[i]) in near
        ]
        pool += [i for i in self.top(f.score, 2 * self.tau) if i not in sus and i not in pool]
        return pool

    def search(self, rounds: int) -> Candidate:
        # Steps 2-4: the most consistent candidate of size <= tau that keeps kept_forced.
        # No suspect at all when every row fits (most rounds): the decode then depends on
        # the payloads only, not on the secret projection (reproducible bit for bit).
        # Every step below stops at config.search_fits fits (``out_of_fits``): swaps and the
        # beam cost O(tau^3) fits at worst, and liars choose their lies.
        self.search_stop = self.fits + self.config.search_fits
        nobody: Candidate = ([], self.fit([]))
        if nobody[1].residual <= _SETTLED:
            return nobody
        tau, factor = self.tau, self.config.factor
        # Step 4: the most consistent refined candidate; stop early at one within the noise.
        chosen: Candidate | None = None
        for start in self._starts():
            cand = self.concentrate(start())
            if chosen is None or cand[1].residual < chosen[1].residual:
                chosen = cand
            if chosen[1].residual <= _SETTLED or self.out_of_fits:
                break
        assert chosen is not None
        if chosen[1].residual > factor and 0 < tau < self.m and not self.out_of_fits:
            arc = self._best_arc()
            if arc is not None and arc[1].residual < chosen[1].residual:
                chosen = arc
        if chosen[1].residual > _SETTLED and 0 < tau < self.m:
            chosen = self.swaps(*chosen, rounds, stop_at=self.search_stop)
        if chosen[1].residual > factor and 0 < tau < self.m and not self.out_of_fits:
            chosen = min(chosen, self.beam(chosen[0]), key=lambda c: c[1].residual)
        return chosen

    def _starts(self) -> list[Callable[[], list[int]]]:
        """Step 2 a-d: the candidate suspect sets, cheapest first."""
        tau, wide = self.tau, self.wide
        starts: list[Callable[[], list[int]]] = []
        if tau > 0 and self.clean:
            ranked = self.ranking(list(range(self.m)), list(self.known), tau)
            starts.append(lambda: ranked[:tau])
            if wide > tau:
                starts.append(lambda: self.backward(ranked[:wide]))
            starts.append(self.greedy)
            if wide > tau:
                starts.append(lambda: self.peel(ranked[:tau], 1))
                starts.append(lambda: self.peel(ranked[:tau], tau))
        if not starts:
            starts.append(list)
        return starts

    def _best_arc(self) -> Candidate | None:
        """Step 2e. Liars adjacent on the circle are the ill-conditioned case for every
        locator above; try every arc of tau consecutive nodes as the suspect set."""
        by_angle = np.argsort(self.where, kind="stable")
        m, tau = self.m, self.tau
        arcs = [[int(by_angle[(a + i) % m]) for i in range(tau)] for a in range(m)]
        best: Candidate | None = None
        for arc in arcs:
            if self.kept_forced.intersection(arc):
                continue
            if self.out_of_fits:
                break
            f = self.fit(arc)
            if best is None or f.residual < best[1].residual:
                best = (arc, f)
        return None if best is None else self.concentrate(best[0])

    def beam(self, seed: list[int]) -> Candidate:
        # Step 4c, the last resort: forward selection by the residual itself (not by the
        # misfit scores, which a contaminated fit spreads over honest rows), keeping the
        # _BEAM best sets, over a pool of the rows every other step pointed at.
        tau = self.tau
        f0 = self.fit([])
        pool = set(seed) | set(self.top(f0.score, 2 * tau))
        pool |= set(self.ranking(list(range(self.m)), list(self.known), tau)[: 2 * tau])
        pool |= {int(i) for i in self.top(self.fit(seed).score, 2 * tau)}
        pool -= self.kept_forced
        layer: list[Candidate] = [([], f0)]
        best = layer[0]
        for _ in range(tau):
            grown: dict[tuple[int, ...], Candidate] = {}
            for sus, _f in layer:
                for i in pool - set(sus):
                    key = tuple(sorted([*sus, i]))
                    if key not in grown and not self.out_of_fits:
                        grown[key] = (list(key), self.fit(list(key)))
            layer = sorted(grown.values(), key=lambda c: c[1].residual)[:_BEAM]
            if not layer:
                break
            if layer[0][1].residual < best[1].residual:
                best = layer[0]
            if best[1].residual <= _SETTLED or self.out_of_fits:
                break
        return best

    def certainly_lies(self, sus: list[int], i: int, stop_at: int) -> bool:
        # Step 5: suspect i is named only if no candidate that keeps it is consistent.
        # Naming is bounded: once ``self.fits`` reaches ``stop_at`` the proof is left
        # unfinished and the suspect is not named (False), never named without proof.
        # The rows whose lies an ill-conditioned fit can absorb and push onto an honest
        # suspect are its neighbours on the circle (a codeword within the noise on the kept
        # rows can be 1e8 times larger at a node inside a gap of 2s adjacent nodes, n = 45,
        # s = 5). a. Quick proof: the code cannot fit row i even with its tau nearest kept
        # rows left out as well. b. Else a local search with row i kept: the suspects but i
        # plus one of its 2 tau nearest kept rows, then swaps.
        tau, factor, n_nodes = self.tau, self.config.factor, self.nodes.size
        gap = np.abs(((self.where - self.where[i]) + n_nodes / 2) % n_nodes - n_nodes / 2)
        near = [int(k) for k in np.argsort(gap, kind="stable") if k != i and k not in sus]
        others = [k for k in sus if k != i]
        if self.fits >= stop_at:
            return False
        if self.fit(others + near[:tau]).residual > factor:
            return True
        self.kept_forced.add(i)
        try:
            local = near[: 2 * tau]
            trials = [[*others, k] for k in local] if len(sus) == tau else [others]
            if self.fits + len(trials) > stop_at:
                return False
            best = min(((t, self.fit(t)) for t in trials), key=lambda c: c[1].residual)
            if best[1].residual > _HOPELESS * factor:
                return True
            # The region: the local kept rows and the suspects among them on the circle.
            reach = max(float(gap[k]) for k in local) if local else 0.0
            region = local + [k for k in others if gap[k] <= reach]
            local_best = self.swaps(*best, rounds=2, rows=region, stop_at=stop_at)
            return self.fits < stop_at and local_best[1].residual > factor
        finally:
            self.kept_forced.discard(i)

    def name(self, sus: list[int], f: Fit) -> Location:
        """Step 5: name the liars among the suspects; put back the sharp unnamed ones."""
        # A gross lie (a deviation as large as a typical honest projection) is named at once;
        # a subtler one only once the search that keeps it fails (``certainly_lies``), within
        # config.naming_fits fits for all suspects together, strongest evidence first: the
        # proofs cost O(tau^2) fits each, and liars choose how subtle they are (tiny lies
        # from tau adjacent liars made one decode take 475 s at n = 100, s = 35). A suspect
        # left unproven is not named; it stays out of the sum unless put back below.
        stop_at = self.fits + self.config.naming_fits
        liars = [
            i
            for i in sorted(sus, key=lambda k: -float(f.evidence[k]))
            if f.evidence[i] > self.config.clear_factor
            and (f.deviation[i] >= self.rows.level or self.certainly_lies(sus, i, stop_at))
        ]
        back = [i for i in sus if i not in liars and f.sharp[i]]
        excluded = [i for i in sus if i not in back]
        if back:
            f2 = self.fit(excluded)
            if f2.residual <= self.config.factor:
                f = f2
            else:
                excluded = list(sus)
        # Every set-aside row is named: it exceeds every honest row by config.huge.
        aside = frozenset(self.rows.aside)
        return Location(
            aside | frozenset(self.clean[i] for i in liars),
            aside | frozenset(self.clean[i] for i in excluded),
            f.residual,
            len(excluded) <= self.tau,
        )
