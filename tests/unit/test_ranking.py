"""The ranking policy: diversity, determinism, and propensities that are exact."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from domain.ranking import (
    Candidate,
    PolicyParams,
    blend_greedy,
    draw_slate,
    greedy,
    propensity,
    score,
)

CANDIDATES = [
    Candidate(f"i{k}", group=f"artist{k % 3}", affinity=1.0 - k / 20, reward_mean=0.1 * (k % 4))
    for k in range(12)
]


def test_greedy_respects_the_diversity_limit_and_fills_up() -> None:
    p = PolicyParams(max_per_group=2)
    top = greedy(CANDIDATES, 6, p)
    groups = Counter(c.group for c, _ in top)
    assert len(top) == 6
    assert max(groups.values()) <= 2
    # Scores are non-increasing among the items the limit let through.
    assert all(top[i][1] >= top[i + 1][1] for i in range(5))
    # With only three artists and a limit of two, a slate of eight must relax the limit.
    assert len(greedy(CANDIDATES, 8, p)) == 8


def test_score_rewards_uncertainty_through_optimism() -> None:
    sure = Candidate("a", reward_mean=0.5, reward_sd=0.0)
    unsure = Candidate("b", reward_mean=0.4, reward_sd=0.5)
    assert score(unsure, PolicyParams(optimism=0.5)) > score(sure, PolicyParams(optimism=0.5))
    assert score(unsure, PolicyParams(optimism=0.0)) < score(sure, PolicyParams(optimism=0.0))


def test_same_generator_same_slate() -> None:
    p = PolicyParams(epsilon=0.5)
    a = [draw_slate(CANDIDATES, 5, p, random.Random(s)) for s in range(20)]
    b = [draw_slate(CANDIDATES, 5, p, random.Random(s)) for s in range(20)]
    assert a == b


@pytest.mark.parametrize(
    "p",
    [
        PolicyParams(epsilon=0.0, tail_epsilon=0.0),
        PolicyParams(),
        PolicyParams(epsilon=0.2, tail_epsilon=0.3, tail=2),
        PolicyParams(epsilon=1.0, tail_epsilon=0.0),
        PolicyParams(epsilon=0.0, tail_epsilon=1.0, tail=10),
    ],
    ids=["greedy", "default", "mixed", "uniform", "all-tail"],
)
@pytest.mark.parametrize("n", [1, 4, 12])
def test_propensities_sum_to_one_per_position(p: PolicyParams, n: int) -> None:
    greedy_ids = [c.item_id for c, _ in greedy(CANDIDATES, n, p)]
    for k in range(len(greedy_ids)):
        total = sum(propensity(c.item_id, k, greedy_ids, len(CANDIDATES), p) for c in CANDIDATES)
        assert total == pytest.approx(1.0)


@pytest.mark.parametrize(
    "p", [PolicyParams(epsilon=0.3), PolicyParams(epsilon=0.1, tail_epsilon=0.4, tail=2)]
)
def test_propensities_match_empirical_frequencies(p: PolicyParams) -> None:
    rng = random.Random(7)
    draws = 30_000
    seen: Counter[tuple[str, int]] = Counter()
    logged: dict[tuple[str, int], float] = {}
    for _ in range(draws):
        for s in draw_slate(CANDIDATES, 4, p, rng):
            seen[(s.item_id, s.position)] += 1
            logged[(s.item_id, s.position)] = s.propensity
    for key, count in seen.items():
        expected = logged[key]
        # Five binomial standard errors: loose enough never to flake, tight enough to catch a
        # propensity off by a factor.
        tolerance = 5 * (expected * (1 - expected) / draws) ** 0.5
        assert count / draws == pytest.approx(expected, abs=tolerance), key


def test_a_slate_never_repeats_an_item_and_duplicates_are_ignored() -> None:
    doubled = CANDIDATES + CANDIDATES[:3]
    p = PolicyParams(epsilon=0.3, tail_epsilon=0.3)
    greedy_ids = [c.item_id for c, _ in greedy(CANDIDATES, 10, p)]
    for seed in range(50):
        slate = draw_slate(doubled, 10, p, random.Random(seed))
        assert len({s.item_id for s in slate}) == len(slate) == 10
        # Duplicates do not count twice: the pool has 12 items, not 15.
        for s in slate:
            assert s.propensity == pytest.approx(
                propensity(s.item_id, s.position, greedy_ids, 12, p)
            )


def test_short_pool_and_empty_pool() -> None:
    assert draw_slate([], 5, PolicyParams(), random.Random(0)) == ()
    greedy_only = PolicyParams(epsilon=0.0, tail_epsilon=0.0)
    slate = draw_slate(CANDIDATES[:2], 5, greedy_only, random.Random(0))
    assert [s.propensity for s in slate] == [1.0, 1.0]


def test_blend_gives_every_member_their_own_favourites() -> None:
    alice = [Candidate(f"a{k}", affinity=1 - k / 10) for k in range(5)] + [
        Candidate("shared", affinity=0.5)
    ]
    bob = [Candidate(f"b{k}", affinity=1 - k / 10) for k in range(5)] + [
        Candidate("shared", affinity=0.5)
    ]
    slate = [c.item_id for c, _ in blend_greedy([alice, bob], 4, PolicyParams())]
    assert slate == ["a0", "b0", "a1", "b1"]
    # An item both like is taken once.
    both = [c.item_id for c, _ in blend_greedy([alice, alice], 3, PolicyParams())]
    assert both == ["a0", "a1", "a2"]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        PolicyParams(epsilon=1.5)
    with pytest.raises(ValueError, match="tail_epsilon"):
        PolicyParams(epsilon=0.5, tail_epsilon=0.6)
    with pytest.raises(ValueError, match="n must"):
        draw_slate(CANDIDATES, 0, PolicyParams(), random.Random(0))
    with pytest.raises(ValueError, match="optimism"):
        PolicyParams(optimism=-1.0)
    with pytest.raises(ValueError, match="tail must"):
        PolicyParams(tail=0)


def test_the_version_names_the_defaults() -> None:
    # The policy version is logged with every slate, so a change of any default must come with
    # a new version: change both here together.
    p = PolicyParams()
    assert (p.version, p.logged_version) == ("3", "3")
    assert (p.epsilon, p.tail_epsilon, p.tail, p.optimism, p.max_per_group) == (
        0.03,
        0.07,
        3,
        2.0,
        2,
    )
    assert (p.w_affinity, p.w_reward, p.w_long_term) == (1.0, 1.0, 0.2)
    assert (p.recency_blend, p.recency_decay, p.recency_floor, p.recency_items) == (
        0.6,
        3.0,
        0.0,
        50,
    )


def test_other_settings_log_a_version_of_their_own() -> None:
    tuned = PolicyParams(optimism=0.5)
    assert tuned.logged_version.startswith("3+")
    assert tuned.logged_version == PolicyParams(optimism=0.5).logged_version
    assert tuned.logged_version != PolicyParams(optimism=1.0).logged_version
    assert PolicyParams(epsilon=0.05).logged_version != PolicyParams(tail=2).logged_version
    # The name is not a tunable: a renamed default policy keeps its version.
    assert PolicyParams(name="other").logged_version == "3"
    # The recency terms are tunables like the others.
    assert PolicyParams(recency_blend=0.0).logged_version.startswith("3+")
    assert (
        PolicyParams(recency_decay=5.0).logged_version
        != PolicyParams(recency_floor=0.2).logged_version
    )
