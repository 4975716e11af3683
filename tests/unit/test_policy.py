"""The uniform logging policy: exact propensities, deterministic given the recommendation id."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest

from domain.policy import seed_from, uniform_slate


def test_slate_is_distinct_and_positions_are_zero_based() -> None:
    slate = uniform_slate([f"i{k}" for k in range(20)], 5, random.Random(3))
    assert [s.position for s in slate] == [0, 1, 2, 3, 4]
    assert len({s.item_id for s in slate}) == 5


def test_short_pool_gives_short_slate_and_duplicates_are_ignored() -> None:
    slate = uniform_slate(["a", "b", "a"], 10, random.Random(0))
    assert sorted(s.item_id for s in slate) == ["a", "b"]
    assert all(s.propensity == pytest.approx(0.5) for s in slate)


def test_empty_pool_gives_empty_slate() -> None:
    assert uniform_slate([], 3, random.Random(0)) == ()


def test_n_must_be_positive() -> None:
    with pytest.raises(ValueError, match="n must be"):
        uniform_slate(["a"], 0, random.Random(0))


def test_same_recommendation_id_same_slate() -> None:
    rid = uuid.uuid4()
    pool = [f"i{k}" for k in range(50)]
    assert uniform_slate(pool, 10, seed_from(rid.int)) == uniform_slate(
        pool, 10, seed_from(rid.int)
    )


def test_propensities_match_empirical_frequencies() -> None:
    pool = [f"i{k}" for k in range(8)]
    draws = 40_000
    counts: Counter[tuple[str, int]] = Counter()
    recorded: dict[tuple[str, int], float] = {}
    rng = random.Random(42)
    for _ in range(draws):
        for s in uniform_slate(pool, 3, rng):
            counts[(s.item_id, s.position)] += 1
            recorded[(s.item_id, s.position)] = s.propensity
    assert len(counts) == 8 * 3
    for key, count in counts.items():
        # 4 standard errors of a binomial frequency with p = 1/8 over 40k draws is about 0.0066.
        assert count / draws == pytest.approx(recorded[key], abs=0.0066)
    # Per position, the propensities over all items sum to one.
    for position in range(3):
        assert sum(p for (_, pos), p in recorded.items() if pos == position) == pytest.approx(1)
