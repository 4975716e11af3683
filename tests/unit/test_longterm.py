"""The long-term estimator against a direct numpy computation of the Gaussian conditioning, and
its prior fit, day bookkeeping and baselines on synthetic populations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.typing import NDArray

from domain.longterm import (
    LongTermEstimate,
    TracePrior,
    day_one_proxy,
    fit_prior,
    full_horizon_baseline,
    observed_days,
    posterior,
    uninformed_prior,
)

Vector = NDArray[np.float64]
Matrix = NDArray[np.float64]
Mask = NDArray[np.bool_]

REL = 1e-9


def random_prior(rng: np.random.Generator, horizon: int) -> TracePrior:
    """A random, well-conditioned prior: a full covariance (every pair of days correlated), so
    that conditioning on any day moves every other day."""
    a = rng.normal(size=(horizon, horizon)) * 0.05
    cov = a @ a.T + np.diag(rng.uniform(0.001, 0.01, horizon))
    return TracePrior(
        mean=rng.uniform(0.02, 0.4, horizon),
        cov=cov,
        noise=rng.uniform(0.05, 0.25, horizon),
    )


def pattern(rng: np.random.Generator, horizon: int, kind: str) -> Mask:
    days = np.arange(horizon)
    match kind:
        case "none":
            return np.zeros(horizon, dtype=bool)
        case "all":
            return np.ones(horizon, dtype=bool)
        case "prefix":  # what a progressive trace looks like: the first days are over
            return np.asarray(days < rng.integers(1, horizon), dtype=np.bool_)
        case "first":
            return np.asarray(days == 0, dtype=np.bool_)
        case "last":
            return np.asarray(days == horizon - 1, dtype=np.bool_)
        case "random":
            mask = rng.random(horizon) < 0.5
            mask[rng.integers(horizon)] = True
            return mask
    raise AssertionError(kind)


def direct_conditioning(prior: TracePrior, sums: Vector, counts: Vector) -> tuple[float, float]:
    """Textbook conditioning of the joint Gaussian of the mean trace m and the observed per-day
    means ybar_o = m_o + e, e ~ N(0, diag(noise_o / n_o)): build the whole joint covariance and
    partition it, with an explicit inverse (deliberately not the module's solve)."""
    h = prior.horizon
    o = np.flatnonzero(counts > 0)
    select = np.eye(h)[o]  # ybar_o = select @ m + e
    noise = np.diag(prior.noise[o] / counts[o])
    joint = np.block(
        [
            [prior.cov, prior.cov @ select.T],
            [select @ prior.cov, select @ prior.cov @ select.T + noise],
        ]
    )
    joint_mean = np.concatenate([prior.mean, select @ prior.mean])
    a, b = slice(0, h), slice(h, h + len(o))
    y = sums[o] / counts[o]
    gain = joint[a, b] @ np.linalg.inv(joint[b, b])
    mean = joint_mean[a] + gain @ (y - joint_mean[b])
    cov = joint[a, a] - gain @ joint[b, a]
    ones = np.ones(h)
    return float(mean.sum()), float(ones @ cov @ ones)


def information_form(prior: TracePrior, sums: Vector, counts: Vector) -> tuple[float, float]:
    """The same posterior from precisions: a second, independent formula."""
    o = np.flatnonzero(counts > 0)
    precision = np.linalg.inv(prior.cov)
    data = np.zeros_like(precision)
    shift = precision @ prior.mean
    data[o, o] = counts[o] / prior.noise[o]
    shift[o] += sums[o] / prior.noise[o]
    cov = np.linalg.inv(precision + data)
    mean = cov @ shift
    return float(mean.sum()), float(cov.sum())


KINDS = ["none", "all", "prefix", "first", "last", "random"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_posterior_matches_direct_gaussian_conditioning(seed: int, kind: str) -> None:
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    horizon = int(rng.choice([1, 2, 7, 30, 60]))
    prior = random_prior(rng, horizon)
    observed = pattern(rng, horizon, kind)
    counts = np.where(observed, rng.integers(1, 200, horizon), 0).astype(np.float64)
    sums = np.floor(counts * rng.uniform(0, 1, horizon))

    got = posterior(prior, sums, counts)
    mean, variance = direct_conditioning(prior, sums, counts)
    assert got.estimate == pytest.approx(mean, rel=REL)
    assert got.variance == pytest.approx(variance, rel=REL)
    assert (got.estimate, got.variance) == pytest.approx(
        information_form(prior, sums, counts), rel=1e-7
    )
    assert got.observed_traces == int(counts[0])


def test_posterior_without_observations_is_the_prior() -> None:
    prior = random_prior(np.random.default_rng(1), 10)
    got = posterior(prior, np.zeros(10), np.zeros(10))
    ones = np.ones(10)
    assert got == LongTermEstimate(float(prior.mean.sum()), float(ones @ prior.cov @ ones), 0)


def test_posterior_variance_shrinks_with_more_traces() -> None:
    rng = np.random.default_rng(2)
    prior = random_prior(rng, 20)
    rate = rng.uniform(0.05, 0.5, 20)
    observed = np.arange(20) < 5
    variances = []
    for n in (1, 4, 16, 64, 256):
        counts = np.where(observed, n, 0).astype(np.float64)
        variances.append(posterior(prior, counts * rate, counts).variance)
    assert all(later < earlier for earlier, later in itertools.pairwise(variances))
    assert variances[0] < float(prior.cov.sum())


def test_posterior_variance_shrinks_as_days_are_observed() -> None:
    rng = np.random.default_rng(3)
    prior = random_prior(rng, 30)
    rate = rng.uniform(0.05, 0.5, 30)
    variances = [float(prior.cov.sum())]
    for days in range(1, 31):
        counts = np.where(np.arange(30) < days, 20, 0).astype(np.float64)
        variances.append(posterior(prior, counts * rate, counts).variance)
    assert all(later < earlier for earlier, later in itertools.pairwise(variances))


def test_posterior_follows_the_data_when_it_is_plentiful() -> None:
    rng = np.random.default_rng(4)
    prior = random_prior(rng, 15)
    rate = rng.uniform(0.05, 0.5, 15)
    counts = np.full(15, 1e7)
    got = posterior(prior, counts * rate, counts)
    assert got.estimate == pytest.approx(rate.sum(), abs=1e-3)
    assert got.variance < 1e-4


def test_early_days_inform_the_late_ones_through_the_prior() -> None:
    # An item whose first week is twice the prior's, with the prior saying days move together,
    # is estimated above the prior on the days not observed yet.
    prior = uninformed_prior(60)
    counts = np.where(np.arange(60) < 7, 100, 0).astype(np.float64)
    got = posterior(prior, counts * 0.2, counts)
    assert got.estimate > float(prior.mean.sum()) + 7 * 0.1 * 0.9
    assert got.estimate < 60 * 0.2


# --- the prior -------------------------------------------------------------------------------


def synthetic_population(
    rng: np.random.Generator, items: int, horizon: int, traces: int
) -> tuple[Matrix, Matrix, Matrix]:
    """Items with known mean traces (a decaying bump over a base rate), and `traces` complete
    traces each whose daily activity is Bernoulli(mean trace): true means, sums, counts."""
    days = np.arange(horizon)[None, :]
    bump = rng.uniform(0.05, 0.4, (items, 1))
    decay = rng.uniform(2, 15, (items, 1))
    base = rng.uniform(0.0, 0.1, (items, 1))
    truth = bump * np.exp(-days / decay) + base
    sums = rng.binomial(traces, truth).astype(np.float64)
    counts = np.full((items, horizon), float(traces))
    return truth, sums, counts


def test_fit_prior_recovers_the_population() -> None:
    rng = np.random.default_rng(5)
    truth, sums, counts = synthetic_population(rng, items=300, horizon=60, traces=40)
    prior = fit_prior(sums, counts)
    assert prior is not None
    assert prior.horizon == 60
    # The mean of 300 items' trace means, each from 40 Bernoulli traces: standard error < 0.005.
    np.testing.assert_allclose(prior.mean, truth.mean(axis=0), atol=0.02)
    np.testing.assert_allclose(prior.noise, (truth * (1 - truth)).mean(axis=0), atol=0.02)
    # Between-item covariance, net of the sampling noise of each item's mean.
    between = np.cov(truth.T)
    assert np.linalg.norm(prior.cov - between) < 0.25 * np.linalg.norm(between)
    ones = np.ones(60)
    assert float(ones @ prior.cov @ ones) == pytest.approx(float(ones @ between @ ones), rel=0.2)


@pytest.mark.parametrize("seed", range(4))
def test_fit_prior_is_symmetric_positive_semidefinite(seed: int) -> None:
    # Few items and few traces: the raw covariance, less the noise, is far from PSD.
    rng = np.random.default_rng(seed)
    _, sums, counts = synthetic_population(rng, items=4, horizon=30, traces=5)
    prior = fit_prior(sums, counts)
    assert prior is not None
    np.testing.assert_allclose(prior.cov, prior.cov.T, atol=1e-12)
    assert np.linalg.eigvalsh(prior.cov).min() >= -1e-12
    assert (prior.noise > 0).all()
    # Usable as a prior: conditioning on it works and gives a non-negative variance.
    assert posterior(prior, sums[0], counts[0]).variance >= 0


def test_fit_prior_uses_complete_items_only() -> None:
    rng = np.random.default_rng(6)
    _truth, sums, counts = synthetic_population(rng, items=50, horizon=20, traces=10)
    prior = fit_prior(sums, counts)
    assert prior is not None
    # Items whose traces have not reached the last day (or too few have) change nothing.
    partial_sums = np.full((5, 20), 3.0)
    partial_counts = np.full((5, 20), 3.0)
    partial_counts[:, -1] = 0
    partial_sums[:, -1] = 0
    few = np.full((1, 20), 4.0)
    again = fit_prior(
        np.vstack([sums, partial_sums, few]), np.vstack([counts, partial_counts, few])
    )
    assert again is not None
    np.testing.assert_array_equal(again.mean, prior.mean)
    np.testing.assert_array_equal(again.cov, prior.cov)


def test_fit_prior_needs_three_complete_items() -> None:
    rng = np.random.default_rng(7)
    _, sums, counts = synthetic_population(rng, items=3, horizon=10, traces=5)
    assert fit_prior(sums, counts) is not None
    assert fit_prior(sums[:2], counts[:2]) is None
    incomplete = counts.copy()
    incomplete[2, -1] = 4  # below min_traces on the last day
    assert fit_prior(sums, incomplete) is None
    assert fit_prior(sums, incomplete, min_traces=4) is not None
    assert fit_prior(np.zeros((0, 10)), np.zeros((0, 10))) is None


def test_uninformed_prior_is_flat_and_positive_definite() -> None:
    prior = uninformed_prior(60, daily_rate=0.1)
    np.testing.assert_array_equal(prior.mean, np.full(60, 0.1))
    assert np.linalg.eigvalsh(prior.cov).min() > 0
    # Days far apart still move together: the first week informs the last one.
    corr = prior.cov[0, -1] / np.sqrt(prior.cov[0, 0] * prior.cov[-1, -1])
    assert corr >= 0.5


def test_prior_json_round_trip() -> None:
    prior = random_prior(np.random.default_rng(8), 5)
    again = TracePrior.from_json(prior.to_json())
    for a, b in ((prior.mean, again.mean), (prior.cov, again.cov), (prior.noise, again.noise)):
        np.testing.assert_array_equal(a, b)


# --- observed days ---------------------------------------------------------------------------


def test_a_day_is_observed_once_it_is_over() -> None:
    starts = {10: 3}
    active = {(10, 1): 2, (10, 2): 1, (10, 3): 3}
    for today, days_over in [(10, 0), (11, 0), (12, 1), (13, 2), (14, 3), (15, 4)]:
        sums, counts = observed_days(starts, active, today, horizon=5)
        np.testing.assert_array_equal(counts, [3] * days_over + [0] * (5 - days_over))
        expected = [2, 1, 3, 0, 0][:days_over] + [0] * (5 - days_over)
        np.testing.assert_array_equal(sums, expected)


def test_activity_on_a_day_not_over_is_left_out() -> None:
    # Day 2 of the trace is today: activity already reported for it must wait with its count.
    sums, counts = observed_days({0: 4}, {(0, 1): 1, (0, 2): 4}, today=2, horizon=3)
    np.testing.assert_array_equal(sums, [1, 0, 0])
    np.testing.assert_array_equal(counts, [4, 0, 0])


def test_days_outside_the_horizon_are_ignored() -> None:
    sums, counts = observed_days({0: 2}, {(0, 0): 2, (0, 3): 1, (0, 4): 2}, today=100, horizon=3)
    np.testing.assert_array_equal(sums, [0, 0, 1])
    np.testing.assert_array_equal(counts, [2, 2, 2])


@pytest.mark.parametrize("seed", range(5))
def test_observed_days_matches_trace_by_trace_counting(seed: int) -> None:
    rng = np.random.default_rng(seed)
    horizon, today = 8, 20
    traces = [(int(rng.integers(0, 22)), rng.random(horizon) < 0.4) for _ in range(60)]
    starts: dict[int, int] = {}
    active: dict[tuple[int, int], int] = {}
    for start, days in traces:
        starts[start] = starts.get(start, 0) + 1
        for day in (np.flatnonzero(days) + 1).tolist():
            active[(start, day)] = active.get((start, day), 0) + 1
    sums, counts = observed_days(starts, active, today, horizon)
    want_sums, want_counts = np.zeros(horizon), np.zeros(horizon)
    for start, days in traces:
        for d in range(1, horizon + 1):
            if start + d < today:
                want_counts[d - 1] += 1
                want_sums[d - 1] += days[d - 1]
    np.testing.assert_array_equal(sums, want_sums)
    np.testing.assert_array_equal(counts, want_counts)
    assert (sums <= counts).all()
    # Counts never grow with the day: a trace that reached day d reached every earlier day.
    assert (np.diff(counts) <= 0).all()


# --- baselines -------------------------------------------------------------------------------


def small_prior() -> TracePrior:
    return TracePrior(
        mean=np.array([0.2, 0.1, 0.1]),
        cov=np.diag([0.01, 0.02, 0.03]),
        noise=np.array([0.16, 0.09, 0.09]),
    )


def test_full_horizon_baseline_uses_the_prior_until_traces_are_complete() -> None:
    prior = small_prior()
    waiting = full_horizon_baseline(prior, np.zeros(3), 0)
    assert (waiting.estimate, waiting.variance) == pytest.approx((0.4, 0.06))
    assert waiting.observed_traces == 0
    done = full_horizon_baseline(prior, np.array([5.0, 2.0, 1.0]), 10)
    assert done.estimate == pytest.approx(0.8)
    assert done.variance == pytest.approx(0.34 / 10)
    assert done.observed_traces == 10


def test_day_one_proxy_scales_day_one_by_the_priors_shape() -> None:
    prior = small_prior()
    nothing = day_one_proxy(prior, 0.0, 0)
    assert (nothing.estimate, nothing.variance) == pytest.approx((0.4, 0.06))
    assert nothing.observed_traces == 0
    got = day_one_proxy(prior, 3.0, 10)
    # Total / day one of the prior is 0.4 / 0.2 = 2.
    assert got.estimate == pytest.approx(0.3 * 2)
    assert got.variance == pytest.approx(4 * 0.16 / 10)
    assert got.observed_traces == 10
