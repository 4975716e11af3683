"""Off-policy estimators over logged slates, position by position.

Segue logs, for every position of every slate, the marginal probability that the logging policy
put that item there (docs/decisions.md 6). So a slate is evaluated as the Open Bandit Pipeline
evaluates the Open Bandit Dataset: each (slate, position) is one bandit *round* whose action is
the item served there, whose `pscore` is the logged propensity, and whose target probability is
the probability the target policy puts that item at that position of that request. Every
estimate is the value of one served position (the mean reward per round); a slate's value is
that times its length.

The formulas are those of obp 0.4.1 (`obp/ope/estimators.py`), with w = pi_e(a|x,k) / pscore:

    replay     mean(m * r) / mean(m), m = [pi_e(a|x,k) = 1] (the rejection method)
    ipw        mean(min(w, lambda) * r)             (clipping as obp >= 0.5's `lambda_`)
    snipw      mean(w * r) / mean(w)
    dm         mean(sum_a pi_e(a|x,k) q(a,k) / sum_a pi_e(a|x,k))
    dr         dm + mean(w * (r - q(a_t,k)))
    switch_dr  dm + mean([w <= tau] * w * (r - q(a_t,k)))

Confidence intervals are percentile bootstraps of the mean of the per-round terms, as obp's
`estimate_confidence_interval_by_bootstrap` (the self-normalising constants of replay and snipw
are those of the whole sample, as there). Unlike obp the resampling unit is the slate, not the
position: positions of one slate share a listener and a moment, so resampling them apart would
make the intervals too narrow. With one round per slate (the Open Bandit Dataset) the two are
the same.

The reward model q of the direct method needs no fitting library: per (item, position), the
empirical mean reward shrunk towards the item's mean, itself shrunk towards the global mean,
each with `prior_strength` pseudo-observations. With `folds` > 1 it is cross-fitted: the rounds
of slate s are predicted by a model fitted on the slates whose index differs from s modulo
`folds`.

Everything here is a pure function of numpy arrays; nothing is drawn without the seed given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from domain.ranking import PolicyParams

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

ESTIMATORS = ("replay", "ipw", "snipw", "dm", "dr", "switch_dr")
# pi_e = 1 is how the rejection method recognises a deterministic target agreeing with the log;
# targets computed as a sum of parts may miss 1.0 by rounding only.
DETERMINISTIC = 1.0 - 1e-9


@dataclass(frozen=True, slots=True)
class OpeConfig:
    """Estimator settings. `clip` is IPW's lambda (weights above it are cut to it), `tau` the
    switch-DR threshold, `prior_strength` and `folds` shape the reward model, and `n_bootstrap`,
    `alpha` and `seed` the percentile bootstrap."""

    clip: float = math.inf
    tau: float = 1.0
    prior_strength: float = 10.0
    folds: int = 1
    n_bootstrap: int = 1000
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if math.isnan(self.clip) or self.clip <= 0:
            raise ValueError("clip must be a positive number (inf: no clipping)")
        if not math.isfinite(self.tau) or self.tau < 0:
            raise ValueError("tau must be a finite number >= 0")
        if not math.isfinite(self.prior_strength) or self.prior_strength < 0:
            raise ValueError("prior_strength must be a finite number >= 0")
        if self.folds < 1:
            raise ValueError("folds must be at least 1")
        if self.n_bootstrap < 1:
            raise ValueError("n_bootstrap must be at least 1")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be between 0 and 1")


@dataclass(frozen=True, slots=True)
class LoggedRounds:
    """The log as rounds: one per (slate, position) served. Items are dense indices < n_items;
    `slate` says which slate each round came from (the bootstrap's resampling unit; the
    cross-fitting fold of a round is its slate number modulo the folds)."""

    slate: IntArray
    item: IntArray
    position: IntArray
    pscore: FloatArray
    reward: FloatArray
    n_items: int

    def __post_init__(self) -> None:
        n = self.item.shape[0]
        for name in ("slate", "position", "pscore", "reward"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have one value per round")
        if n and (self.item.min() < 0 or self.item.max() >= self.n_items):
            raise ValueError("item indices must be in [0, n_items)")
        if n and self.position.min() < 0:
            raise ValueError("positions must not be negative")
        if n and not np.all((self.pscore > 0) & (self.pscore <= 1)):
            raise ValueError("every logged propensity must be in (0, 1]")
        if n and not np.all(np.isfinite(self.reward)):
            raise ValueError("rewards must be finite")

    @property
    def n_rounds(self) -> int:
        return int(self.item.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.position.max()) + 1 if self.n_rounds else 1


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """The target's distribution over items at each round's position:
    pi_e(a) = density[r] * [a in supports[support[r]]] + sum of extra_prob[j] over the round's
    extras j (extra_ptr[r] <= j < extra_ptr[r + 1]) with extra_item[j] = a.

    A support (support -1: none) carries uniform mass compactly; extras carry point masses, and
    may be negative where they take mass back from a support item. Build it with
    `TargetBuilder`."""

    supports: tuple[IntArray, ...]
    support: IntArray
    density: FloatArray
    extra_ptr: IntArray
    extra_item: IntArray
    extra_prob: FloatArray


@dataclass
class TargetBuilder:
    """Collects a target round by round, sharing identical supports."""

    _supports: list[IntArray] = field(default_factory=list)
    _support_ids: dict[tuple[int, ...], int] = field(default_factory=dict)
    _rounds: list[int] = field(default_factory=list)
    _density: list[float] = field(default_factory=list)
    _ptr: list[int] = field(default_factory=lambda: [0])
    _items: list[int] = field(default_factory=list)
    _probs: list[float] = field(default_factory=list)

    def support(self, items: Iterable[int]) -> int:
        """The id of the support made of `items` (identical supports share one), -1 if empty."""
        key = tuple(sorted(set(items)))
        if not key:
            return -1
        sid = self._support_ids.get(key, -1)
        if sid < 0:
            sid = len(self._supports)
            self._support_ids[key] = sid
            self._supports.append(np.array(key, dtype=np.int64))
        return sid

    def add(
        self,
        support: int = -1,
        density: float = 0.0,
        items: Iterable[int] = (),
        probs: Iterable[float] = (),
    ) -> None:
        """The next round: `density` on every item of support `support` (from `support()`),
        plus `probs` on `items`."""
        if not -1 <= support < len(self._supports):
            raise ValueError("unknown support id")
        self._rounds.append(support)
        self._density.append(float(density) if support >= 0 else 0.0)
        new_items = [int(i) for i in items]
        new_probs = [float(p) for p in probs]
        if len(new_items) != len(new_probs):
            raise ValueError("items and probs must have the same length")
        self._items.extend(new_items)
        self._probs.extend(new_probs)
        self._ptr.append(len(self._items))

    def build(self) -> TargetPolicy:
        return TargetPolicy(
            supports=tuple(self._supports),
            support=np.array(self._rounds, dtype=np.int64),
            density=np.array(self._density, dtype=np.float64),
            extra_ptr=np.array(self._ptr, dtype=np.int64),
            extra_item=np.array(self._items, dtype=np.int64),
            extra_prob=np.array(self._probs, dtype=np.float64),
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimator's estimate of the value of a served position, with its bootstrap interval.
    `estimate` is None where the estimator is undefined (replay with no round where the target
    is deterministic and agrees with the log; snipw with no weight)."""

    estimator: str
    estimate: float | None
    ci: tuple[float, float] | None
    rounds: int
    note: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "estimate": self.estimate,
            "ci": list(self.ci) if self.ci is not None else None,
            "rounds": self.rounds,
        }
        if self.note:
            out["note"] = self.note
        return out


# --- the pieces ---------------------------------------------------------------------------------


def _rounds_by_support(target: TargetPolicy) -> list[IntArray]:
    """The rounds of each support, found with one sort (a request-specific support per slate,
    as in rerank mode, must not cost a pass over every round)."""
    order = np.argsort(target.support, kind="stable")
    ids = np.arange(len(target.supports))
    starts = np.searchsorted(target.support[order], ids, side="left")
    ends = np.searchsorted(target.support[order], ids, side="right")
    return [order[a:b] for a, b in zip(starts, ends, strict=True)]


def _extra_round(target: TargetPolicy) -> IntArray:
    counts = np.diff(target.extra_ptr)
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


def target_probability(log: LoggedRounds, target: TargetPolicy) -> FloatArray:
    """pi_e(a_t | x_t, k_t): the target's probability of the logged item at the logged position."""
    _check(log, target)
    pi = np.zeros(log.n_rounds, dtype=np.float64)
    for items, rounds in zip(target.supports, _rounds_by_support(target), strict=True):
        inside = np.isin(log.item[rounds], items)
        pi[rounds] += target.density[rounds] * inside
    owner = _extra_round(target)
    hit = target.extra_item == log.item[owner]
    np.add.at(pi, owner[hit], target.extra_prob[hit])
    return pi


def fit_reward_model(
    item: IntArray,
    position: IntArray,
    reward: FloatArray,
    n_items: int,
    n_positions: int,
    prior_strength: float,
) -> FloatArray:
    """q[a, k]: the mean reward of item a at position k, shrunk to the item's mean, shrunk to
    the global mean (each by `prior_strength` pseudo-observations). Unseen items get the global
    mean; no data at all gives zeros."""
    m = prior_strength
    mu = float(reward.mean()) if reward.shape[0] else 0.0
    n_a = np.bincount(item, minlength=n_items).astype(np.float64)
    s_a = np.bincount(item, weights=reward, minlength=n_items).astype(np.float64)
    q_a = _shrunk(s_a, n_a, m, np.full(n_items, mu))
    cell = item * n_positions + position
    n_ak = np.bincount(cell, minlength=n_items * n_positions).astype(np.float64)
    s_ak = np.bincount(cell, weights=reward, minlength=n_items * n_positions).astype(np.float64)
    prior = np.repeat(q_a, n_positions)
    return _shrunk(s_ak, n_ak, m, prior).reshape(n_items, n_positions)


def _shrunk(total: FloatArray, count: FloatArray, m: float, prior: FloatArray) -> FloatArray:
    weight = count + m
    safe = np.where(weight > 0, weight, 1.0)
    return np.where(weight > 0, (total + m * prior) / safe, prior)


def folds_of(log: LoggedRounds, folds: int) -> IntArray:
    """The cross-fitting fold of each round: its slate number modulo `folds`."""
    return log.slate % folds


def reward_models(log: LoggedRounds, config: OpeConfig) -> FloatArray:
    """q per fold, shape (folds, n_items, n_positions): fold f's model is fitted on the rounds of
    the other folds (on every round when there is one fold)."""
    fold = folds_of(log, config.folds)
    out = np.empty((config.folds, log.n_items, log.n_positions))
    for f in range(config.folds):
        train = fold != f if config.folds > 1 else np.ones(log.n_rounds, dtype=bool)
        out[f] = fit_reward_model(
            log.item[train],
            log.position[train],
            log.reward[train],
            log.n_items,
            log.n_positions,
            config.prior_strength,
        )
    return out


def expected_reward(log: LoggedRounds, target: TargetPolicy, q: FloatArray) -> FloatArray:
    """sum_a pi_e(a|x,k) q(a,k) / sum_a pi_e(a|x,k) per round (obp's `np.average` over actions),
    with each round's q taken from its fold; 0 where the target puts no mass at all (it would
    leave that position empty)."""
    _check(log, target)
    folds = q.shape[0]
    fold = folds_of(log, folds)
    num = np.zeros(log.n_rounds)
    mass = np.zeros(log.n_rounds)
    for items, rounds in zip(target.supports, _rounds_by_support(target), strict=True):
        sums = q[:, items, :].sum(axis=1)  # (folds, positions)
        num[rounds] += target.density[rounds] * sums[fold[rounds], log.position[rounds]]
        mass[rounds] += target.density[rounds] * items.shape[0]
    owner = _extra_round(target)
    values = q[fold[owner], target.extra_item, log.position[owner]]
    np.add.at(num, owner, target.extra_prob * values)
    np.add.at(mass, owner, target.extra_prob)
    positive = mass > 1e-12
    return np.where(positive, num / np.where(positive, mass, 1.0), 0.0)


def _check(log: LoggedRounds, target: TargetPolicy) -> None:
    if target.support.shape[0] != log.n_rounds:
        raise ValueError("the target must describe every logged round")
    if target.extra_item.shape[0] and (
        target.extra_item.min() < 0 or target.extra_item.max() >= log.n_items
    ):
        raise ValueError("target item indices must be in [0, n_items)")


# --- the estimators -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundTerms:
    """Each estimator's per-round terms (their mean is the estimate), or None where undefined."""

    terms: dict[str, FloatArray | None]
    notes: dict[str, str]


def round_terms(log: LoggedRounds, target: TargetPolicy, config: OpeConfig) -> RoundTerms:
    """The per-round terms of every estimator in `ESTIMATORS` (see the module docstring)."""
    r = log.reward
    pi = target_probability(log, target)
    w = pi / log.pscore
    q = reward_models(log, config)
    fold = folds_of(log, config.folds)
    q_logged = q[fold, log.item, log.position]
    dm = expected_reward(log, target, q)
    terms: dict[str, FloatArray | None] = {}
    notes: dict[str, str] = {}

    match = (pi >= DETERMINISTIC).astype(np.float64)
    if match.sum() > 0:
        terms["replay"] = match * r / match.mean()
        notes["replay"] = f"{int(match.sum())} of {log.n_rounds} rounds agree with the target"
    else:
        terms["replay"] = None
        notes["replay"] = "no logged round where the target is deterministic and agrees"
    terms["ipw"] = r * np.minimum(w, config.clip)
    if w.mean() > 0:
        terms["snipw"] = r * w / w.mean()
    else:
        terms["snipw"] = None
        notes["snipw"] = "the target gives no logged item any probability"
    terms["dm"] = dm
    terms["dr"] = dm + w * (r - q_logged)
    terms["switch_dr"] = dm + (w <= config.tau) * w * (r - q_logged)
    return RoundTerms(terms, notes)


def bootstrap_ci(
    slate: IntArray, samples: FloatArray, config: OpeConfig
) -> list[tuple[float, float]]:
    """Percentile intervals of the mean of each row of `samples` (estimators x rounds) under a
    bootstrap that resamples the S slates with replacement (numbered 0..S-1 in the order of their
    numbers in `slate`): replicate b draws S slate numbers with
    `numpy.random.default_rng(seed).integers(0, S, size=S)` (one call per replicate, in order),
    and its mean is the sum of the terms of the drawn slates' rounds over their number of rounds.
    All rows share the same draws, so differences between rows are paired."""
    k = samples.shape[0]
    if not slate.shape[0]:
        return [(math.nan, math.nan)] * k
    # Number the slates that have rounds 0..S-1, so a slate without any is never drawn.
    _, slate = np.unique(slate, return_inverse=True)
    slates = int(slate.max()) + 1
    sums = np.zeros((k, slates))
    for row in range(k):
        sums[row] = np.bincount(slate, weights=samples[row], minlength=slates)
    sizes = np.bincount(slate, minlength=slates).astype(np.float64)
    rng = np.random.default_rng(config.seed)
    means = np.empty((k, config.n_bootstrap))
    for b in range(config.n_bootstrap):
        idx = rng.integers(0, slates, size=slates)
        means[:, b] = sums[:, idx].sum(axis=1) / sizes[idx].sum()
    low = np.percentile(means, 100 * (config.alpha / 2), axis=1)
    high = np.percentile(means, 100 * (1 - config.alpha / 2), axis=1)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]


def _summarise(
    log: LoggedRounds, terms: dict[str, FloatArray | None], notes: dict[str, str], c: OpeConfig
) -> dict[str, Estimate]:
    defined = [name for name in ESTIMATORS if terms[name] is not None]
    rows = np.array([terms[name] for name in defined]).reshape(len(defined), log.n_rounds)
    cis = bootstrap_ci(log.slate, rows, c) if defined and log.n_rounds else []
    out: dict[str, Estimate] = {}
    for name in ESTIMATORS:
        note = notes.get(name, "")
        if name in defined and log.n_rounds:
            row = defined.index(name)
            out[name] = Estimate(name, float(rows[row].mean()), cis[row], log.n_rounds, note)
        else:
            out[name] = Estimate(name, None, None, log.n_rounds, note or "no logged rounds")
    return out


def evaluate(log: LoggedRounds, target: TargetPolicy, config: OpeConfig) -> dict[str, Estimate]:
    """Every estimator's estimate of the target's value per served position, keyed by name in
    the order of `ESTIMATORS`."""
    t = round_terms(log, target, config)
    return _summarise(log, t.terms, t.notes, config)


def on_policy(log: LoggedRounds, config: OpeConfig) -> Estimate:
    """The logging policy's own value per served position: the mean logged reward."""
    if not log.n_rounds:
        return Estimate("logged", None, None, 0, "no logged rounds")
    (ci,) = bootstrap_ci(log.slate, log.reward.reshape(1, -1), config)
    return Estimate("logged", float(log.reward.mean()), ci, log.n_rounds)


def evaluate_difference(
    log: LoggedRounds, target: TargetPolicy, config: OpeConfig
) -> dict[str, Estimate]:
    """Each estimator's estimate of (target value - logged value) per served position, the logged
    value being the on-policy mean reward; intervals from the same paired slate bootstrap."""
    t = round_terms(log, target, config)
    diffs = {
        name: (terms - log.reward if terms is not None else None) for name, terms in t.terms.items()
    }
    return _summarise(log, diffs, t.notes, config)


def policy_marginals(
    greedy_ids: Sequence[str], pool_size: int, position: int, params: PolicyParams
) -> tuple[float, dict[str, float]]:
    """Segue's exploring policy (`domain.ranking.explore`) at one position, as a target: the
    probability on every item of the pool (`density`) plus point masses, so that
    density * [i in pool] + extras.get(i, 0) = `domain.ranking.propensity(i, position, ...)`.
    An explored slate is as long as the greedy one; past it the position stays empty."""
    m = len(greedy_ids)
    if position >= m or pool_size < 1:
        return 0.0, {}
    head = max(0, m - params.tail)
    exploit = 1.0 - params.epsilon - params.tail_epsilon
    here = greedy_ids[position]
    density = params.epsilon / pool_size
    if position < head:
        return density, {here: params.tail_epsilon + exploit}
    # The tail draws uniformly from the pool less the kept head: spread it over the whole pool
    # and take it back from the head items.
    share = params.tail_epsilon / (pool_size - head)
    extras = dict.fromkeys(greedy_ids[:head], -share)
    extras[here] = extras.get(here, 0.0) + exploit
    return density + share, extras
