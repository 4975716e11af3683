"""Slate policies. A policy is a pure function of the eligible items and a seeded generator.

Every slate carries, per position, the marginal probability that the policy would have put that
item there for this request; offline estimators divide by it, so it must be exact.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from domain.events import SlateEntry


@dataclass(frozen=True, slots=True)
class PolicyId:
    name: str
    version: str


UNIFORM = PolicyId("uniform", "1")


def uniform_slate(eligible: Sequence[str], n: int, rng: random.Random) -> tuple[SlateEntry, ...]:
    """`min(n, len(eligible))` distinct items drawn uniformly without replacement.

    Under this policy each eligible item lands at each position with probability 1/len(eligible),
    whatever the position, so that is the propensity recorded.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    pool = list(dict.fromkeys(eligible))  # callers may repeat ids; a slate never does
    if not pool:
        return ()
    chosen = rng.sample(pool, min(n, len(pool)))
    p = 1.0 / len(pool)
    return tuple(
        SlateEntry(item_id=item, position=i, score=0.0, propensity=p)
        for i, item in enumerate(chosen)
    )


def seed_from(recommendation_id_int: int) -> random.Random:
    """The generator a recommendation is drawn with: the same id always gives the same slate."""
    return random.Random(recommendation_id_int)
