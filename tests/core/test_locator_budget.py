"""The cyclic locator's naming step is bounded (``CyclicDecoderConfig.naming_fits``).

Tiny lies from s liars adjacent on the code's circle make every suspect subtle: proving that
one lies costs O(tau^2) least-squares fits, so all of them O(tau^3). Before the bound, one
decode at n = 100, s = 35 took 475 s (86,606 fits): a liar could stall every round for
minutes. These tests count fits, never seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from draco.core import locator_search
from draco.core.codes import CyclicCode, adjacent_workers
from draco.core.decoder_types import CyclicDecoderConfig
from draco.core.lies import ERROR_BOUND, run_trial


def count_naming_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, per decode, how many fits the naming step (``Search.name``) made."""
    spent: list[int] = []
    real_name = locator_search.Search.name

    def name(self: locator_search.Search, *args: object) -> locator_search.Location:
        before = self.fits
        out = real_name(self, *args)  # type: ignore[arg-type]
        spent.append(self.fits - before)
        return out

    monkeypatch.setattr(locator_search.Search, "name", name)
    return spent


def cyclic(n: int, s: int, **changes: int) -> CyclicCode:
    base = CyclicCode(n, s)
    return CyclicCode(n, s, decoder=dataclasses.replace(base.decoder, **changes))


def adjacent_liars(code: CyclicCode, rng: np.random.Generator) -> list[int]:
    n, s = code.n_workers, code.n_adversaries
    return sorted(adjacent_workers(n, code.stride, s, int(rng.integers(n))))


@pytest.mark.parametrize("family", ["tiny1e-6", "tiny1e-3", "scale_down"])
def test_subtle_adjacent_liars_cannot_stall_the_decode(
    monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    """The worst case found (seed 0, n = 100, s = 35): the sum is right, nobody honest is
    named, and naming stopped at its budget (one fit of overshoot at most)."""
    spent = count_naming_fits(monkeypatch)
    code = cyclic(100, 35)
    rng = np.random.default_rng(0)
    outcome = run_trial(code, family, 512, rng, liars=adjacent_liars(code, rng))
    assert outcome.refused is None, outcome.refused
    assert outcome.error <= ERROR_BOUND
    assert not outcome.framed
    assert spent and max(spent) <= code.decoder.naming_fits + 1
    # The case needs the bound: without it the proofs go on far past it.
    assert max(spent) >= code.decoder.naming_fits


@pytest.mark.parametrize("family", ["tiny1e-5", "structured", "scale_up", "copy"])
@pytest.mark.parametrize("seed", range(3))
def test_no_naming_budget_changes_the_sum_not_the_safety(family: str, seed: int) -> None:
    """naming_fits = 0 (no proof at all) against the default: the same kept rows give a sum
    within the bound, no honest worker is named either way, and the budget can only name
    fewer liars (the gross ones need no proof)."""
    outcomes = {}
    for budget in (0, CyclicDecoderConfig().naming_fits):
        code = cyclic(45, 5, naming_fits=budget)
        rng = np.random.default_rng(seed)
        outcomes[budget] = run_trial(code, family, 512, rng, liars=adjacent_liars(code, rng))
    for outcome in outcomes.values():
        assert outcome.refused is None, outcome.refused
        assert outcome.error <= ERROR_BOUND
        assert not outcome.framed
    none, default = outcomes[0], outcomes[CyclicDecoderConfig().naming_fits]
    assert none.located <= default.located


def count_search_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, per decode, how many fits the search (``Search.search``, steps 2-4) made."""
    spent: list[int] = []
    real_search = locator_search.Search.search

    def search(self: locator_search.Search, rounds: int) -> locator_search.Candidate:
        before = self.fits
        out = real_search(self, rounds)
        spent.append(self.fits - before)
        return out

    monkeypatch.setattr(locator_search.Search, "search", search)
    return spent


#: Lie families whose decodes need a real search at n = 45, s = 5 (tens to ~330 fits);
#: the others settle in 2 fits.
SEARCHED = ["tiny1e-6", "tiny1e-5", "structured"]


@pytest.mark.parametrize("budget", [1, 8, 40])
def test_a_search_cut_short_costs_the_round_never_the_sum(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """search_fits far below what these lies need: every decode either refuses (the round
    is retried) or returns a sum within the bound, never names an honest worker, and the
    search stops within two fits of its budget, which it does reach."""
    spent = count_search_fits(monkeypatch)
    code = cyclic(45, 5, search_fits=budget)
    refused = 0
    for family in SEARCHED:
        for seed in range(2):
            rng = np.random.default_rng(seed)
            liars = adjacent_liars(code, rng) if seed == 0 else sorted(rng.choice(45, 5, False))
            outcome = run_trial(code, family, 512, rng, liars=[int(j) for j in liars])
            assert outcome.refused is not None or outcome.error <= ERROR_BOUND
            assert not outcome.framed
            refused += outcome.refused is not None
    assert budget <= max(spent) <= budget + 2
    if budget <= 8:  # too few fits to find the liars of the tiny lies: refused, not wrong
        assert refused


def test_the_default_search_budget_is_far_above_what_any_lie_family_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound is a guard, not a tuning knob: at the paper's size no family comes within
    a quarter of it, so it never turns a decodable round into a failed one."""
    spent = count_search_fits(monkeypatch)
    code = CyclicCode(45, 5)
    for family in SEARCHED:
        rng = np.random.default_rng(1)
        outcome = run_trial(code, family, 512, rng, liars=sorted(rng.choice(45, 5, False)))
        assert outcome.refused is None and outcome.error <= ERROR_BOUND
    assert spent and max(spent) < code.decoder.search_fits / 4
    # The budget does bind somewhere when lowered: the search above did real work.
    assert max(spent) > 8
