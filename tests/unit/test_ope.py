"""The off-policy estimators on small logs whose answers are worked out by hand."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.ope import (
    ESTIMATORS,
    LoggedRounds,
    OpeConfig,
    TargetBuilder,
    bootstrap_ci,
    evaluate,
    evaluate_difference,
    fit_reward_model,
    on_policy,
    policy_marginals,
    round_terms,
    target_probability,
)
from domain.ranking import Candidate, PolicyParams, draw_slate, greedy, propensity


def rounds(
    items: list[int],
    positions: list[int],
    pscores: list[float],
    rewards: list[float],
    n_items: int,
    slates: list[int] | None = None,
) -> LoggedRounds:
    return LoggedRounds(
        slate=np.array(slates if slates is not None else range(len(items)), dtype=np.int64),
        item=np.array(items, dtype=np.int64),
        position=np.array(positions, dtype=np.int64),
        pscore=np.array(pscores, dtype=np.float64),
        reward=np.array(rewards, dtype=np.float64),
        n_items=n_items,
    )


# Four rounds, two items, one position; the logging policy was uniform (p = 1/2).
LOG = rounds([0, 1, 0, 1], [0, 0, 0, 0], [0.5] * 4, [1.0, 0.0, 1.0, 1.0], 2)


def always(item: int, n: int) -> TargetBuilder:
    b = TargetBuilder()
    for _ in range(n):
        b.add(items=[item], probs=[1.0])
    return b


def test_deterministic_target_by_hand() -> None:
    target = always(0, 4).build()
    config = OpeConfig(prior_strength=0.0, n_bootstrap=50)
    est = evaluate(LOG, target, config)
    assert list(est) == list(ESTIMATORS)
    # replay: rounds 0 and 2 agree, both rewarded.
    assert est["replay"].estimate == pytest.approx(1.0)
    # ipw: w = 2 on rounds 0 and 2: (2 + 2) / 4.
    assert est["ipw"].estimate == pytest.approx(1.0)
    # snipw: mean(w) = 1, so the same.
    assert est["snipw"].estimate == pytest.approx(1.0)
    # dm with no shrinkage: q(0) = 1 (item 0 always rewarded).
    assert est["dm"].estimate == pytest.approx(1.0)
    assert est["dr"].estimate == pytest.approx(1.0)
    assert on_policy(LOG, config).estimate == pytest.approx(0.75)
    diff = evaluate_difference(LOG, target, config)
    assert diff["ipw"].estimate == pytest.approx(0.25)


def test_clipping_switch_and_self_normalisation() -> None:
    # pscore 0.1 for round 0 makes its weight 10.
    log = rounds([0, 1, 0], [0, 0, 0], [0.1, 0.5, 0.5], [1.0, 1.0, 0.0], 2)
    target = always(0, 3).build()
    plain = round_terms(log, target, OpeConfig(prior_strength=0.0)).terms
    ipw = plain["ipw"]
    assert ipw is not None
    assert ipw.tolist() == pytest.approx([10.0, 0.0, 0.0])
    clipped = round_terms(log, target, OpeConfig(prior_strength=0.0, clip=4.0)).terms["ipw"]
    assert clipped is not None
    assert clipped.tolist() == pytest.approx([4.0, 0.0, 0.0])
    snipw = plain["snipw"]
    assert snipw is not None  # w = (10, 0, 2): mean 4
    assert snipw.tolist() == pytest.approx([2.5, 0.0, 0.0])
    # q(0) = 0.5 without shrinkage; dm = 0.5 everywhere.
    dr = plain["dr"]
    sw = round_terms(log, target, OpeConfig(prior_strength=0.0, tau=5.0)).terms["switch_dr"]
    assert dr is not None
    assert sw is not None
    assert dr.tolist() == pytest.approx([0.5 + 10 * 0.5, 0.5, 0.5 + 2 * -0.5])
    # tau = 5 drops the correction of the weight-10 round only.
    assert sw.tolist() == pytest.approx([0.5, 0.5, 0.5 + 2 * -0.5])


def test_undefined_estimators_say_so() -> None:
    b = TargetBuilder()
    sid = b.support([0, 1])
    for _ in range(4):
        b.add(sid, 0.5)
    est = evaluate(LOG, b.build(), OpeConfig(n_bootstrap=10))
    assert est["replay"].estimate is None
    assert "deterministic" in est["replay"].note
    nothing = TargetBuilder()
    for _ in range(4):
        nothing.add(items=[], probs=[])
    est = evaluate(LOG, nothing.build(), OpeConfig(n_bootstrap=10))
    assert est["snipw"].estimate is None
    assert est["ipw"].estimate == 0.0
    assert est["dm"].estimate == 0.0  # an empty position is worth nothing


def test_support_and_extras_combine() -> None:
    b = TargetBuilder()
    sid = b.support([0, 1, 2])
    b.add(sid, 0.2, items=[1, 0], probs=[0.5, -0.1])
    b.add(sid, 0.2, items=[1, 0], probs=[0.5, -0.1])
    log = rounds([0, 1], [0, 0], [0.5, 0.5], [0.0, 1.0], 3)
    pi = target_probability(log, b.build())
    assert pi.tolist() == pytest.approx([0.1, 0.7])


def test_reward_model_shrinks_to_item_then_global() -> None:
    item = np.array([0, 0, 1], dtype=np.int64)
    position = np.array([0, 1, 0], dtype=np.int64)
    reward = np.array([1.0, 0.0, 1.0])
    q = fit_reward_model(item, position, reward, 3, 2, prior_strength=1.0)
    mu = 2 / 3
    q0 = (1.0 + mu) / 3
    assert q[0, 0] == pytest.approx((1.0 + q0) / 2)
    assert q[0, 1] == pytest.approx((0.0 + q0) / 2)
    q1 = (1.0 + mu) / 2
    assert q[1, 1] == pytest.approx(q1)  # never seen at position 1: the item's mean
    assert q[2, 0] == pytest.approx(mu)  # never seen: the global mean


def test_cross_fitting_predicts_each_fold_from_the_others() -> None:
    # Item 0 rewarded in slate 0 only; with two folds slate 0 is predicted from slate 1.
    log = rounds([0, 0], [0, 0], [1.0, 1.0], [1.0, 0.0], 1)
    target = always(0, 2).build()
    terms = round_terms(log, target, OpeConfig(prior_strength=0.0, folds=2)).terms
    dm = terms["dm"]
    assert dm is not None
    assert dm.tolist() == pytest.approx([0.0, 1.0])


def test_bootstrap_resamples_slates_and_is_seeded() -> None:
    slate = np.array([0, 0, 1, 1], dtype=np.int64)
    samples = np.array([[1.0, 1.0, 0.0, 0.0]])
    config = OpeConfig(n_bootstrap=500, seed=3)
    (ci,) = bootstrap_ci(slate, samples, config)
    # Each replicate is 0, 0.5 or 1 (slates drawn whole).
    assert ci[0] in (0.0, 0.5)
    assert ci[1] in (0.5, 1.0)
    assert bootstrap_ci(slate, samples, config) == [ci]
    # The same draws as written in the docstring.
    rng = np.random.default_rng(3)
    means = []
    for _ in range(500):
        idx = rng.integers(0, 2, size=2)
        means.append(np.array([2.0, 0.0])[idx].sum() / 4)
    assert ci == (np.percentile(means, 2.5), np.percentile(means, 97.5))
    # Slates numbered with gaps (empty slates have no rounds) are the same two slates.
    gappy = np.array([4, 4, 9, 9], dtype=np.int64)
    assert bootstrap_ci(gappy, samples, config) == [ci]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=10),
    st.floats(min_value=0.0, max_value=0.5),
    st.floats(min_value=0.0, max_value=0.5),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=0, max_value=2**32),
)
def test_policy_marginals_are_the_policys_propensities(
    size: int, n: int, epsilon: float, tail_epsilon: float, tail: int, seed: int
) -> None:
    p = PolicyParams(epsilon=epsilon, tail_epsilon=tail_epsilon, tail=tail)
    rng = random.Random(seed)
    pool = [Candidate(f"i{j}", affinity=rng.random()) for j in range(size)]
    top = [c.item_id for c, _ in greedy(pool, n, p)]
    for k in range(len(top)):
        density, extras = policy_marginals(top, size, k, p)
        total = 0.0
        for c in pool:
            got = density + extras.get(c.item_id, 0.0)
            assert got == pytest.approx(propensity(c.item_id, k, top, size, p), abs=1e-12)
            total += got
        assert total == pytest.approx(1.0)
    assert policy_marginals(top, size, len(top), p) == (0.0, {})


def test_marginals_match_the_served_frequencies() -> None:
    """The marginals agree with what `draw_slate` actually serves, counted over many draws."""
    p = PolicyParams(epsilon=0.2, tail_epsilon=0.3, tail=2)
    pool = [Candidate(f"i{j}", affinity=j / 10) for j in range(6)]
    top = [c.item_id for c, _ in greedy(pool, 4, p)]
    counts: dict[tuple[str, int], int] = {}
    draws = 20_000
    rng = random.Random(5)
    for _ in range(draws):
        for s in draw_slate(pool, 4, p, rng):
            counts[(s.item_id, s.position)] = counts.get((s.item_id, s.position), 0) + 1
    for k in range(4):
        density, extras = policy_marginals(top, 6, k, p)
        for c in pool:
            want = density + extras.get(c.item_id, 0.0)
            seen = counts.get((c.item_id, k), 0) / draws
            assert abs(seen - want) < 4 * math.sqrt(want * (1 - want) / draws) + 1e-9


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="clip"):
        OpeConfig(clip=0.0)
    with pytest.raises(ValueError, match="alpha"):
        OpeConfig(alpha=1.0)
    with pytest.raises(ValueError, match="propensity"):
        rounds([0], [0], [0.0], [1.0], 1)
    with pytest.raises(ValueError, match="every logged round"):
        evaluate(LOG, always(0, 3).build(), OpeConfig())
