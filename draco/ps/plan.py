"""Who lies in a round and how: the seeded liar choice, the attack seeds, ``RoundPlan``.

Pure functions of the run's seed and the round index, so a retried attempt, a resumed run
and every worker agree on them without talking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from draco.errors import ConfigError

# Domain-separation tags for the seeded choices (so they never share a stream).
_LIAR_TAG = 0x11A5
_ATTACK_TAG = 0xA77AC


def choose_liars(
    n_workers: int, n_liars: int, round_index: int, seed: int, schedule: str
) -> frozenset[int]:
    """The workers that lie in ``round_index``: a seeded choice of ``n_liars`` ids.

    ``schedule="random"``: a fresh choice every round, a pure function of (seed, round).
    ``schedule="fixed"``: one choice for the whole run, a pure function of seed.
    """
    if schedule == "random":
        rng = np.random.default_rng([seed, round_index, _LIAR_TAG])
    elif schedule == "fixed":
        rng = np.random.default_rng([seed, _LIAR_TAG])
    else:
        raise ConfigError(f"adversary schedule must be 'random' or 'fixed', got {schedule!r}")
    return frozenset(int(j) for j in rng.choice(n_workers, size=n_liars, replace=False))


def attack_seed(seed: int, round_index: int, worker: int) -> int:
    """Seed of worker ``worker``'s attack randomness in ``round_index`` (63-bit int)."""
    ss = np.random.SeedSequence([seed, round_index, worker, _ATTACK_TAG])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class RoundPlan:
    """Who lies in a round and how.

    Attributes
    ----------
    round_index : int
        The round (= number of completed rounds before it).
    liars : frozenset[int]
        Scheduled liars (empty without an attack).
    attack : str or None
        The attack's name (None: an honest round).
    simulated_at_ps : bool
        The attack is omniscient and applied by the PS to the liars' payloads.
    seed : int
        The run's seed (attack seeds derive from it).
    """

    round_index: int
    liars: frozenset[int]
    attack: str | None
    simulated_at_ps: bool
    seed: int

    def instruction(self, worker: int) -> tuple[str | None, int]:
        """(attack, attack_seed) for worker's RoundStart: attack None = compute honestly."""
        lie = worker in self.liars and not self.simulated_at_ps
        return (self.attack if lie else None), attack_seed(self.seed, self.round_index, worker)
