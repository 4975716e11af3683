"""Experiments in the domain: definitions are checked, assignment is sticky, splits as configured
and independent across experiments, the always-valid interval covers under peeking, CUPED
narrows it without moving it, and a broken split is flagged."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from domain.events import (
    DomainEvent,
    ExperimentShipped,
    ExperimentStarted,
    ExperimentStopped,
    OutcomeKind,
    RecommendationServed,
)
from domain.experiments import (
    TUNABLES,
    Arm,
    Experiment,
    InvalidExperiment,
    Metric,
    Outcome,
    Slate,
    analyse,
    assign,
    covering,
    cuped,
    difference,
    fixed_half_width,
    fold_lifecycles,
    listener_records,
    mixture_half_width,
    overlapping,
    sample_ratio,
    unit_hash,
)
from domain.ranking import PolicyParams
from gateway.analysis.evaluation_log import Filters
from gateway.serving.requests import PolicyParam


def experiment(**overrides: Any) -> Experiment:
    base: dict[str, Any] = {
        "name": "eps-test",
        "hypothesis": "more exploration costs reward",
        "arms": (Arm("control", 1.0), Arm("treatment", 1.0, {"epsilon": 0.3})),
        "surfaces": ("home",),
        "primary": Metric("reward"),
        "minimum_detectable_effect": 0.1,
        "salt": "s1",
    }
    base.update(overrides)
    return Experiment(**base)


def test_whole_numbers_from_json_are_served_as_integers() -> None:
    arm = Arm("b", 1.0, {"tail": 2.0, "epsilon": 0})
    assert isinstance(arm.policy().tail, int)
    assert isinstance(arm.policy().epsilon, float)


def test_definition_round_trips_through_json() -> None:
    e = experiment(guardrails=(Metric("guard"),))
    assert Experiment.from_json(e.to_json()) == e


def test_arm_policy_applies_overrides_and_changes_the_logged_version() -> None:
    e = experiment()
    assert e.arm("control").policy() == PolicyParams()
    treated = e.arm("treatment").policy()
    assert treated.epsilon == 0.3
    assert treated.logged_version != PolicyParams().logged_version


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"arms": (Arm("only", 1.0),)}, "arms"),
        ({"arms": (Arm("a", 1.0), Arm("a", 1.0))}, "arms"),
        ({"arms": (Arm("a", 1.0), Arm("b", 0.0))}, "arms[1].weight"),
        ({"arms": (Arm("a", 1.0), Arm("b", math.nan))}, "arms[1].weight"),
        ({"arms": (Arm("a", 1.0), Arm("b", 1.0, {"nope": 1}))}, "arms[1].params"),
        ({"arms": (Arm("a", 1.0), Arm("b", 1.0, {"epsilon": 2.0}))}, "arms[1].params"),
        ({"arms": (Arm("a", 1.0), Arm("b", 1.0, {"epsilon": math.nan}))}, "arms[1].params.epsilon"),
        ({"arms": (Arm("a", 1.0), Arm("b", 1.0, {"tail": True}))}, "arms[1].params.tail"),
        ({"arms": (Arm("a", 1.0), Arm("b", 1.0, policy_version="0"))}, "arms[1].policy_version"),
        ({"arms": (Arm("a", 1.0), Arm("b", 1.0, {"tail": 2.5}))}, "arms[1].params.tail"),
        ({"surfaces": ()}, "surfaces"),
        ({"minimum_detectable_effect": 0.0}, "minimum_detectable_effect"),
        ({"alpha": 0.7}, "alpha"),
        ({"salt": ""}, "salt"),
        ({"guardrails": (Metric("reward"),)}, "guardrails"),
    ],
)
def test_invalid_definitions_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidExperiment) as info:
        experiment(**overrides)
    assert info.value.field == field


def test_from_json_refuses_missing_parts() -> None:
    data = experiment().to_json()
    del data["arms"]
    with pytest.raises(InvalidExperiment):
        Experiment.from_json(data)


@given(st.text(min_size=1, max_size=40))
def test_assignment_is_sticky(listener: str) -> None:
    e = experiment()
    assert assign(e, listener) == assign(experiment(), listener)


def test_hash_parts_cannot_run_into_each_other() -> None:
    assert unit_hash("a", "bc", "d") != unit_hash("ab", "c", "d")


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.9, 0.1), (1.0, 2.0, 1.0)])
def test_split_proportions_within_binomial_bounds(weights: tuple[float, ...]) -> None:
    arms = tuple(Arm(f"arm{i}", w) for i, w in enumerate(weights))
    e = experiment(arms=arms)
    n = 20_000
    counts = {a.name: 0 for a in arms}
    for u in range(n):
        counts[assign(e, f"listener-{u}").name] += 1
    for a, p in zip(arms, e.weights(), strict=True):
        # Two-sided 1e-6 bounds: a fixed hash either passes or fails, so keep it far from flaky.
        low, high = binom.ppf(5e-7, n, p), binom.isf(5e-7, n, p)
        assert low <= counts[a.name] <= high, (a.name, counts[a.name], low, high)


def test_assignments_of_two_experiments_are_independent() -> None:
    first, second = experiment(name="first", salt="x"), experiment(name="second", salt="y")
    n = 20_000
    table = np.zeros((2, 2))
    for u in range(n):
        listener = f"listener-{u}"
        i = assign(first, listener).name == "treatment"
        j = assign(second, listener).name == "treatment"
        table[int(i), int(j)] += 1
    expected = np.outer(table.sum(1), table.sum(0)) / n
    stat = float(((table - expected) ** 2 / expected).sum())
    assert stat < 23.9  # chi-square(1) at p = 1e-6


def test_same_name_new_salt_reshuffles() -> None:
    a, b = experiment(salt="one"), experiment(salt="two")
    moved = sum(assign(a, f"u{k}") != assign(b, f"u{k}") for k in range(2000))
    assert 800 < moved < 1200  # about half, as for an independent split


def test_mixture_interval_is_wider_than_fixed_and_shrinks_with_variance() -> None:
    for v in (1.0, 0.1, 0.01, 0.001):
        assert mixture_half_width(v, 0.1, 0.05) > fixed_half_width(v, 0.05)
    widths = [mixture_half_width(v, 0.1, 0.05) for v in (1.0, 0.1, 0.01, 0.001)]
    assert widths == sorted(widths, reverse=True)
    assert mixture_half_width(0.0, 0.1, 0.05) == 0.0


def test_always_valid_interval_under_peeking_keeps_alpha() -> None:
    """Gaussian A/A streams peeked after every 20 listeners: the mixture interval excludes 0 at
    some look in at most about alpha of them; the fixed-sample interval, peeked alike, much
    more often."""
    rng = np.random.default_rng(5)
    runs, looks, step = 400, 25, 20
    mixture_errors = fixed_errors = 0
    for _ in range(runs):
        a, b = rng.normal(size=looks * step), rng.normal(size=looks * step)
        hit_mixture = hit_fixed = False
        for k in range(1, looks + 1):
            i = difference(a[: k * step], b[: k * step], tau=0.2, alpha=0.05)
            assert i is not None
            hit_mixture |= i.excludes_zero
            hit_fixed |= abs(i.difference) > fixed_half_width(i.variance, 0.05)
        mixture_errors += hit_mixture
        fixed_errors += hit_fixed
    assert mixture_errors / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert fixed_errors / runs > 0.12


def test_interval_finds_a_real_effect() -> None:
    rng = np.random.default_rng(6)
    i = difference(rng.normal(size=3000), rng.normal(0.3, size=3000), tau=0.2, alpha=0.05)
    assert i is not None
    assert i.low > 0
    assert i.covers(0.3)


def test_cuped_narrows_without_moving_the_difference() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    x = rng.normal(size=2 * n)
    y = 2.0 * x + rng.normal(size=2 * n)
    y[n:] += 0.1
    plain = difference(y[:n], y[n:], tau=0.1, alpha=0.05)
    adjusted = difference(y[:n], y[n:], tau=0.1, alpha=0.05, control_pre=x[:n], treatment_pre=x[n:])
    assert plain is not None
    assert adjusted is not None
    assert adjusted.variance < plain.variance / 4
    assert adjusted.covers(0.1)
    _, theta = cuped(y, x)
    assert theta == pytest.approx(2.0, abs=0.1)


def test_cuped_leaves_listeners_without_a_pre_period_value_unadjusted() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    x = np.array([0.0, 1.0, math.nan, 3.0])
    adjusted, _ = cuped(y, x)
    assert adjusted[2] == y[2]
    same, theta = cuped(y, np.full(4, math.nan))
    assert theta == 0.0
    assert same is y


def test_difference_needs_two_listeners_per_arm() -> None:
    assert difference(np.array([1.0]), np.array([1.0, 2.0]), 0.1, 0.05) is None


@settings(max_examples=50)
@given(st.integers(min_value=100, max_value=100_000))
def test_a_balanced_split_is_not_flagged(n: int) -> None:
    assert not sample_ratio([n, n], [1.0, 1.0]).mismatch


def test_a_broken_split_is_flagged() -> None:
    assert sample_ratio([5_250, 4_750], [1.0, 1.0]).mismatch
    assert not sample_ratio([5_050, 4_950], [1.0, 1.0]).mismatch
    assert sample_ratio([0, 0], [1.0, 1.0]).p_value == 1.0
    assert not sample_ratio([9_000, 1_000], [0.9, 0.1]).mismatch


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_lifecycle_fold_follows_start_stop_and_ship() -> None:
    a, b = experiment(name="a"), experiment(name="b", surfaces=("music",))
    events: list[DomainEvent] = [
        ExperimentStarted("a", a.to_json(), NOW),
        ExperimentStarted("b", b.to_json(), NOW),
        ExperimentStopped("a", "enough", NOW + timedelta(days=1)),
        ExperimentShipped("a", "treatment", NOW + timedelta(days=2)),  # ended: no effect
        ExperimentStopped("nope", "", NOW),
    ]
    folded = fold_lifecycles(events)
    assert list(folded) == ["a", "b"]
    assert (folded["a"].status, folded["a"].reason) == ("stopped", "enough")
    assert folded["b"].running
    assert covering(folded.values(), "music") == b
    assert covering(folded.values(), "home") is None
    assert overlapping(folded.values(), experiment(name="c", surfaces=("home", "music"))) == [
        "music"
    ]
    shipped = fold_lifecycles([*events[:2], ExperimentShipped("b", "control", NOW)])
    assert (shipped["b"].status, shipped["b"].shipped_arm) == ("shipped", "control")


def _slates_and_outcomes(
    e: Experiment, listeners: int, effect: float, seed: int
) -> tuple[list[Slate], list[Outcome]]:
    """Each listener: two pre-period slates and three in the experiment; a stream on a slate
    with probability 0.3 (+ effect in the treatment), more for listeners who streamed before."""
    rng = np.random.default_rng(seed)
    slates, outcomes = [], []
    for u in range(listeners):
        user = f"p-{u}"
        arm = assign(e, user).name
        keen = rng.random() < 0.5
        for k in range(5):
            rid = f"{user}/{k}"
            pre = k < 2
            at = NOW + timedelta(days=k - 2)
            slates.append(Slate(rid, user, None if pre else arm, at))
            p = 0.2 + 0.3 * keen + (effect if arm == "treatment" and not pre else 0.0)
            if rng.random() < p:
                outcomes.append(Outcome(rid, OutcomeKind.STREAM_30S, None, at + timedelta(hours=1)))
    return slates, outcomes


def test_listener_records_attribute_within_the_window_and_split_the_pre_period() -> None:
    e = experiment()
    user = "p-1"
    arm = assign(e, user).name
    slates = [Slate("r1", user, arm, NOW), Slate("r0", user, None, NOW - timedelta(days=3))]
    outcomes = [
        Outcome("r1", OutcomeKind.STREAM_30S, None, NOW + timedelta(hours=1)),
        Outcome("r1", OutcomeKind.STREAM_30S, None, NOW + timedelta(days=2)),  # past its window
        Outcome("r1", OutcomeKind.SAVE, None, NOW + timedelta(days=2)),
        Outcome("r0", OutcomeKind.SKIP, 1000.0, NOW - timedelta(days=3)),
        Outcome("unknown", OutcomeKind.SAVE, None, NOW),
    ]
    records = listener_records(e, slates, outcomes)
    assert list(records) == [user]
    r = records[user]
    assert (r.arm, r.slates, r.pre_slates) == (arm, 1, 1)
    assert r.rewards == {"reward": 3.0}
    assert r.pre_rewards == {"reward": -0.5}


def test_analysis_finds_the_effect_and_uses_the_pre_period() -> None:
    e = experiment(minimum_detectable_effect=0.05, guardrails=(Metric("guard"),))
    slates, outcomes = _slates_and_outcomes(e, 3000, 0.15, seed=1)
    result = analyse(e, listener_records(e, slates, outcomes))
    assert [a.name for a in result.arms] == ["control", "treatment"]
    assert sum(a.listeners for a in result.arms) == 3000
    assert all(a.slates == 3 * a.listeners for a in result.arms)
    assert not result.sample_ratio.mismatch
    primary = result.comparisons[0]
    assert (primary.metric, primary.arm, primary.cuped, primary.guardrail) == (
        "reward",
        "treatment",
        True,
        False,
    )
    assert primary.verdict == "better"
    assert primary.interval is not None
    assert primary.interval.covers(0.15)
    assert result.comparisons[1].guardrail


def test_analysis_without_listeners_says_so() -> None:
    e = experiment()
    result = analyse(e, {})
    assert [c.verdict for c in result.comparisons] == ["too few listeners"]
    assert result.sample_ratio.p_value == 1.0


def test_the_published_tunables_are_the_policys() -> None:
    assert set(get_args(PolicyParam)) == TUNABLES


def test_evaluation_filters_keep_one_arm_of_one_experiment() -> None:
    served = RecommendationServed(
        recommendation_id=uuid.UUID(int=1),
        user="p-1",
        surface="home",
        context={},
        slate=(),
        policy_name="segue-eps-greedy",
        policy_version="2",
        index_version="none",
        requested_at=NOW,
        experiment="eps-test",
        arm="control",
    )
    assert Filters(experiment="eps-test", arm="control").keeps(served)
    assert not Filters(experiment="eps-test", arm="treatment").keeps(served)
    assert not Filters(experiment="other").keeps(served)
    assert Filters().keeps(served)
    assert (
        "experiment eps-test, arm control"
        in Filters(experiment="eps-test", arm="control").describe()
    )
