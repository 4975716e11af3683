"""Long-term reward, estimated before it is fully observed.

A *trace* starts when a recommendation leads a listener to stream an item (day 0). Day d of the
trace is 1 if the listener came back to that item (or its show) on day d, else 0, for d = 1..H.
An item's long-term reward is the expected number of active days in a trace: the sum of its mean
trace. Traces take H days to complete, so waiting for them makes a bandit learn H days late.

Following "Impatient Bandits" (McDonald, Maystre, Lalmas, Russo, Ciosek; KDD 2023), the mean trace
of an item has a Gaussian prior N(mu0, Sigma0) fitted on items whose traces are complete, and the
days observed so far are treated as noisy observations of it: the per-day mean of n_d traces has
variance sigma_d^2 / n_d. Conditioning on them is one H x H linear solve, and the estimate is the
sum of the posterior mean, with the sum of the posterior covariance as its variance.

Everything here is numpy over plain arrays; the projection keeps per-item, per-day sums and counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float64]
Matrix = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TracePrior:
    """N(mean, cov) over an item's mean daily trace, and the per-day noise of a single trace."""

    mean: Vector
    cov: Matrix
    noise: Vector

    @property
    def horizon(self) -> int:
        return int(self.mean.shape[0])

    def to_json(self) -> dict[str, list[float] | list[list[float]]]:
        return {
            "mean": self.mean.tolist(),
            "cov": self.cov.tolist(),
            "noise": self.noise.tolist(),
        }

    @staticmethod
    def from_json(data: dict[str, list[float] | list[list[float]]]) -> TracePrior:
        return TracePrior(
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["cov"], dtype=np.float64),
            np.asarray(data["noise"], dtype=np.float64),
        )


@dataclass(frozen=True, slots=True)
class LongTermEstimate:
    estimate: float
    variance: float
    observed_traces: int


def uninformed_prior(
    horizon: int, daily_rate: float = 0.1, corr: float = 0.9, level: float = 0.5
) -> TracePrior:
    """A weak prior for when no item has complete traces yet: a flat daily return rate with
    strongly correlated days (an item that brings listeners back does so on every day).

    Half of the between-item variance (`level`) is a level shared by every day of the horizon,
    the rest decays with distance (`corr` per day). A decay alone would not say that: 0.9^59 is
    0.002, so the first days observed would tell nearly nothing about the last ones, and the
    estimate of an item would stay at the prior for most of the horizon until weeks had passed.
    """
    days = np.arange(horizon)
    scale = (daily_rate * 2) ** 2
    cov = scale * (level + (1 - level) * corr ** np.abs(days[:, None] - days[None, :]))
    return TracePrior(
        mean=np.full(horizon, daily_rate),
        cov=cov,
        noise=np.full(horizon, daily_rate * (1 - daily_rate)),
    )


def fit_prior(
    sums: Matrix, counts: Matrix, min_traces: int = 5, shrinkage: float = 0.05
) -> TracePrior | None:
    """Fit the prior from items whose traces are complete.

    `sums[i, d]` / `counts[i, d]`: active traces and observed traces of item i on day d+1. An item
    is used when at least `min_traces` traces reached the last day. The between-item covariance
    of the mean traces, less the part explained by sampling noise, is shrunk towards its diagonal
    so it stays positive definite with few items. None if fewer than three items qualify.
    """
    complete = counts[:, -1] >= min_traces
    if complete.sum() < 3:
        return None
    n = counts[complete]
    means = sums[complete] / n
    mu0 = means.mean(axis=0)
    # Activity is 0/1, so one trace's day-d variance is p(1-p); pooled over items.
    noise = np.clip((means * (1 - means)).mean(axis=0), 1e-6, None)
    centred = means - mu0
    cov = centred.T @ centred / max(int(complete.sum()) - 1, 1)
    # Each item's mean trace carries sampling noise noise/n; remove its expected share.
    cov -= np.diag((noise[None, :] / n).mean(axis=0))
    diag = np.clip(np.diag(cov), 1e-6, None)
    cov = (1 - shrinkage) * cov + shrinkage * np.diag(diag)
    np.fill_diagonal(cov, np.maximum(np.diag(cov), 1e-6))
    # Project onto the positive semi-definite cone (clip eigenvalues), then add jitter.
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    cov = (vecs * np.clip(vals, 1e-8, None)) @ vecs.T
    return TracePrior(mean=mu0, cov=cov, noise=noise)


def posterior(prior: TracePrior, sums: Vector, counts: Vector) -> LongTermEstimate:
    """Condition the prior on one item's observed days (where counts > 0)."""
    observed = counts > 0
    ones = np.ones(prior.horizon)
    if not observed.any():
        return LongTermEstimate(float(prior.mean.sum()), float(ones @ prior.cov @ ones), 0)
    o = np.flatnonzero(observed)
    y = sums[o] / counts[o]
    s_oo = prior.cov[np.ix_(o, o)] + np.diag(prior.noise[o] / counts[o])
    s_ao = prior.cov[:, o]
    # One solve for both the mean update and the covariance update.
    rhs = np.column_stack([y - prior.mean[o], s_ao.T @ ones])
    sol = np.linalg.solve(s_oo, rhs)
    mean = prior.mean + s_ao @ sol[:, 0]
    variance = float(ones @ prior.cov @ ones - (s_ao.T @ ones) @ sol[:, 1])
    return LongTermEstimate(float(mean.sum()), max(variance, 0.0), int(counts[0]))


def full_horizon_baseline(
    prior: TracePrior, complete_sums: Vector, complete_count: int
) -> LongTermEstimate:
    """Wait for complete traces: their average total, or the prior while there are none."""
    ones = np.ones(prior.horizon)
    if complete_count == 0:
        return LongTermEstimate(float(prior.mean.sum()), float(ones @ prior.cov @ ones), 0)
    total = float(complete_sums.sum()) / complete_count
    var = float(prior.noise.sum()) / complete_count
    return LongTermEstimate(total, var, complete_count)


def day_one_proxy(prior: TracePrior, day_one_sum: float, day_one_count: int) -> LongTermEstimate:
    """Scale day-one activity by the prior's ratio of total to day one (a common short-cut)."""
    ones = np.ones(prior.horizon)
    if day_one_count == 0:
        return LongTermEstimate(float(prior.mean.sum()), float(ones @ prior.cov @ ones), 0)
    ratio = float(prior.mean.sum()) / max(float(prior.mean[0]), 1e-9)
    p1 = day_one_sum / day_one_count
    return LongTermEstimate(
        p1 * ratio, ratio**2 * float(prior.noise[0]) / day_one_count, day_one_count
    )


def observed_days(
    starts: dict[int, int], active: dict[tuple[int, int], int], today: int, horizon: int
) -> tuple[Vector, Vector]:
    """Per-day sums and counts of one item's traces as seen on day `today`.

    `starts[start_day]` traces began on that day; `active[(start_day, d)]` of them were active on
    day d. Day d of a trace is observed once it is over (start_day + d < today); activity on a
    day not yet over is left out, so sums and counts always describe the same traces.
    """
    sums = np.zeros(horizon)
    counts = np.zeros(horizon)
    for start, n in starts.items():
        last = min(horizon, today - start - 1)
        if last >= 1:
            counts[:last] += n
    for (start, d), n in active.items():
        if 1 <= d <= horizon and start + d < today:
            sums[d - 1] += n
    return sums, counts
