"""Online experiments: what one is, who is in which arm, and what the log says about the arms.

Pure, as the rest of `domain`: the definition and its checks, the assignment of a listener to an
arm, and the statistics of the analysis. The gateway records definitions and assignments as
events and folds outcomes into per-listener values; everything it concludes is computed here.

Assignment
----------
A listener's arm is a function of the experiment's salt, its name and the listener's pseudonym
only: blake2b of the three gives a number in [0, 1), and the arms' cumulative weights cut [0, 1)
into intervals. It needs no table to be sticky (the same listener always lands in the same arm),
every surface and every process computes the same arm, and two experiments with different salts
split the listeners independently of each other (docs/decisions.md, experiments).

The unit is the listener
------------------------
A listener sees many slates, and their slates are not independent: treating slates as the unit
makes intervals too narrow. Every metric is first reduced to one value per listener (the mean
reward per slate they were served within the experiment), and the arms are compared on those
values.

Always-valid intervals
----------------------
Teams look at a running experiment every day and stop when it looks decided. A fixed-sample
interval checked every day covers far less often than it says. The interval for the difference
of arm means is the normal-mixture (mixture sequential probability ratio test) confidence
sequence: with D the difference of the arms' means, V its estimated variance and a N(0, tau^2)
mixing distribution over the true difference,

    D +- sqrt( V (V + tau^2) / tau^2 * ( log((V + tau^2) / V) + 2 log(1 / alpha) ) )

contains the true difference at every look simultaneously with probability at least 1 - alpha
(exactly for Gaussian means with known variance; asymptotically when V is estimated, which is
what the simulation in bench/experiments.py measures). tau is the experiment's minimum detectable
effect: the mixture then spends its power where the team said effects matter.

CUPED
-----
Where a listener has a value of the same metric from before the experiment (X), the arms are
compared on Y - theta (X - mean X), theta = cov(X, Y) / var(X) over both arms pooled. The
adjustment does not move the expected difference (X is from before assignment, so independent
of the arm) and removes the share of the variance that X explains. Listeners without a pre-period
value are given the mean of those with one, which leaves them unadjusted.

Sample-ratio mismatch
---------------------
The counts of listeners in each arm are checked against the configured split with Pearson's
chi-square; p below 0.001 flags the split as broken (a strict threshold, because the check is
repeated at every look and a broken split is usually far off, not marginally).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2

from domain.events import (
    DomainEvent,
    ExperimentShipped,
    ExperimentStarted,
    ExperimentStopped,
    OutcomeKind,
)
from domain.ranking import PolicyParams
from domain.reward_fold import CLOCK_SKEW
from domain.rewards import DEFAULT, RewardDefinition

FloatArray = NDArray[np.float64]

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SRM_THRESHOLD = 0.001
# The tunables an arm may set: every PolicyParams field but the two that name the policy, which
# an arm's params derive (`logged_version` tells its slates apart).
# The recency terms are left out: the listener vector they turn is computed for the request
# before an arm is chosen, so an arm setting them would change nothing it draws.
TUNABLES = frozenset(f.name for f in fields(PolicyParams)) - {
    "name",
    "version",
    "recency_blend",
    "recency_decay",
    "recency_floor",
    "recency_items",
}
INTEGER_TUNABLES = frozenset(k for k in TUNABLES if isinstance(getattr(PolicyParams(), k), int))
# Named policy versions an arm can ask for instead of (or under) its overrides. Only the current
# default exists as code; older versions are not kept runnable.
POLICY_VERSIONS: Mapping[str, PolicyParams] = {PolicyParams().version: PolicyParams()}


class InvalidExperiment(ValueError):
    """A definition that cannot run; `field` names the offending part."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm: a share of the traffic and the policy it is served with (the named version's
    parameters, then the overrides)."""

    name: str
    weight: float
    params: Mapping[str, float | int] = field(default_factory=dict)
    policy_version: str | None = None

    def policy(self) -> PolicyParams:
        base = POLICY_VERSIONS[self.policy_version or PolicyParams().version]
        # JSON has one number type: a count (tail, max_per_group) arrives as 3.0 and must be
        # served as 3, or slicing by it fails.
        overrides: dict[str, Any] = {
            k: int(v) if k in INTEGER_TUNABLES else float(v) for k, v in self.params.items()
        }
        return replace(base, **overrides)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight": self.weight,
            "params": dict(self.params),
            "policy_version": self.policy_version,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Arm:
        return Arm(
            name=str(data["name"]),
            weight=float(data["weight"]),
            params=dict(data.get("params") or {}),
            policy_version=data.get("policy_version"),
        )


@dataclass(frozen=True, slots=True)
class Metric:
    """A named reward definition: the primary metric or a guardrail."""

    name: str
    reward: RewardDefinition = DEFAULT

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "reward": self.reward.to_json()}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Metric:
        return Metric(name=str(data["name"]), reward=RewardDefinition.from_json(data["reward"]))


@dataclass(frozen=True, slots=True)
class Experiment:
    """What `ExperimentStarted` records. `salt` is drawn when it starts, so that a name used
    again later does not split listeners the way it did before."""

    name: str
    hypothesis: str
    arms: tuple[Arm, ...]
    surfaces: tuple[str, ...]
    primary: Metric
    minimum_detectable_effect: float
    salt: str
    guardrails: tuple[Metric, ...] = ()
    alpha: float = 0.05

    def __post_init__(self) -> None:
        validate(self)

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def covers(self, surface: str) -> bool:
        return surface in self.surfaces

    def weights(self) -> FloatArray:
        w = np.array([a.weight for a in self.arms], dtype=np.float64)
        out: FloatArray = w / w.sum()
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hypothesis": self.hypothesis,
            "arms": [a.to_json() for a in self.arms],
            "surfaces": list(self.surfaces),
            "primary": self.primary.to_json(),
            "guardrails": [g.to_json() for g in self.guardrails],
            "minimum_detectable_effect": self.minimum_detectable_effect,
            "salt": self.salt,
            "alpha": self.alpha,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Experiment:
        """Parse and check a definition; raises `InvalidExperiment` (a ValueError) naming the
        offending field."""
        try:
            arms = tuple(Arm.from_json(a) for a in data["arms"])
            primary = Metric.from_json(data["primary"])
            guardrails = tuple(Metric.from_json(g) for g in data.get("guardrails") or ())
            return Experiment(
                name=str(data["name"]),
                hypothesis=str(data.get("hypothesis", "")),
                arms=arms,
                surfaces=tuple(str(s) for s in data["surfaces"]),
                primary=primary,
                minimum_detectable_effect=float(data["minimum_detectable_effect"]),
                salt=str(data["salt"]),
                guardrails=guardrails,
                alpha=float(data.get("alpha", 0.05)),
            )
        except InvalidExperiment:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidExperiment("experiment", f"invalid definition: {exc!r}") from None


def validate(e: Experiment) -> None:
    if not NAME.match(e.name):
        raise InvalidExperiment("name", "1-63 lower-case letters, digits, '-' or '_'")
    if len(e.arms) < 2:
        raise InvalidExperiment("arms", "an experiment needs at least two arms")
    names = [a.name for a in e.arms]
    if len(set(names)) != len(names):
        raise InvalidExperiment("arms", "arm names must be distinct")
    for i, a in enumerate(e.arms):
        where = f"arms[{i}]"
        if not NAME.match(a.name):
            raise InvalidExperiment(f"{where}.name", "1-63 lower-case letters, digits, '-' or '_'")
        if not (math.isfinite(a.weight) and a.weight > 0):
            raise InvalidExperiment(f"{where}.weight", "must be a positive number")
        if a.policy_version is not None and a.policy_version not in POLICY_VERSIONS:
            known = ", ".join(sorted(POLICY_VERSIONS))
            raise InvalidExperiment(f"{where}.policy_version", f"unknown (known: {known})")
        unknown = set(a.params) - TUNABLES
        if unknown:
            raise InvalidExperiment(f"{where}.params", f"unknown parameters {sorted(unknown)}")
        for k, v in a.params.items():
            # bool is an int to Python, and NaN passes every range check by failing comparisons.
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InvalidExperiment(f"{where}.params.{k}", "must be a finite number")
            if k in INTEGER_TUNABLES and v != int(v):
                raise InvalidExperiment(f"{where}.params.{k}", "must be a whole number")
        try:
            a.policy()
        except (ValueError, TypeError) as exc:
            raise InvalidExperiment(f"{where}.params", str(exc)) from None
    if not e.surfaces or len(set(e.surfaces)) != len(e.surfaces):
        raise InvalidExperiment("surfaces", "at least one surface, each named once")
    if not (math.isfinite(e.minimum_detectable_effect) and e.minimum_detectable_effect > 0):
        raise InvalidExperiment("minimum_detectable_effect", "must be a positive number")
    if not 0.0 < e.alpha < 0.5:
        raise InvalidExperiment("alpha", "must be in (0, 0.5)")
    if not e.salt:
        raise InvalidExperiment("salt", "must not be empty")
    metric_names = [e.primary.name, *(g.name for g in e.guardrails)]
    if len(set(metric_names)) != len(metric_names):
        raise InvalidExperiment("guardrails", "metric names must be distinct")


# --- lifecycle ----------------------------------------------------------------------------------

RUNNING, STOPPED, SHIPPED = "running", "stopped", "shipped"


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """An experiment as the `experiments` stream tells it."""

    experiment: Experiment
    started_at: datetime
    status: str = RUNNING
    ended_at: datetime | None = None
    shipped_arm: str | None = None
    reason: str = ""

    @property
    def running(self) -> bool:
        return self.status == RUNNING


def fold_lifecycles(events: Iterable[DomainEvent]) -> dict[str, Lifecycle]:
    """Every experiment of the `experiments` stream, by name, in the order they started.
    Events the stream should not hold (a stop of an unknown or ended experiment) change nothing:
    the services refuse to write them, and a fold must not fail on history."""
    out: dict[str, Lifecycle] = {}
    for e in events:
        if isinstance(e, ExperimentStarted) and e.name not in out:
            out[e.name] = Lifecycle(Experiment.from_json(e.definition), e.started_at)
        elif isinstance(e, ExperimentStopped) and e.name in out and out[e.name].running:
            out[e.name] = replace(
                out[e.name], status=STOPPED, ended_at=e.stopped_at, reason=e.reason
            )
        elif isinstance(e, ExperimentShipped) and e.name in out and out[e.name].running:
            out[e.name] = replace(
                out[e.name], status=SHIPPED, ended_at=e.shipped_at, shipped_arm=e.arm
            )
    return out


def covering(lifecycles: Iterable[Lifecycle], surface: str) -> Experiment | None:
    """The running experiment that covers `surface`: at most one does (starting an experiment
    on a surface another running one covers is refused), so a slate has one policy."""
    for lc in lifecycles:
        if lc.running and lc.experiment.covers(surface):
            return lc.experiment
    return None


def overlapping(lifecycles: Iterable[Lifecycle], e: Experiment) -> list[str]:
    """The surfaces of `e` that a running experiment already covers."""
    taken = {s for lc in lifecycles if lc.running for s in lc.experiment.surfaces}
    return [s for s in e.surfaces if s in taken]


# --- assignment ---------------------------------------------------------------------------------


def unit_hash(salt: str, experiment: str, listener: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, experiment, listener). The parts are
    length-prefixed so that no two different triples hash the same bytes."""
    data = "".join(f"{len(p)}:{p}" for p in (salt, experiment, listener)).encode()
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign(e: Experiment, listener: str) -> Arm:
    """The arm `listener` (a pseudonym) is in: sticky, and the same in every process."""
    u = unit_hash(e.salt, e.name, listener)
    edges = np.cumsum(e.weights())
    k = int(np.searchsorted(edges, u, side="right"))
    return e.arms[min(k, len(e.arms) - 1)]  # u < 1 = edges[-1] up to rounding


# --- analysis -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    """An always-valid interval for (treatment mean - control mean)."""

    difference: float
    low: float
    high: float
    variance: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def mixture_half_width(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the normal-mixture confidence sequence for an estimate of variance
    `variance`, mixing N(0, tau^2) over the true difference."""
    if variance <= 0.0:
        return 0.0
    t2 = tau * tau
    return math.sqrt(
        variance
        * (variance + t2)
        / t2
        * (math.log((variance + t2) / variance) - 2 * math.log(alpha))
    )


def fixed_half_width(variance: float, alpha: float) -> float:
    """The fixed-sample normal interval's half-width: valid at one look only (shown for
    comparison, never used to decide)."""
    return NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(max(variance, 0.0))


def cuped(y: FloatArray, x: FloatArray) -> tuple[FloatArray, float]:
    """`y` adjusted by the pre-period covariate `x` (NaN where a listener has none), and theta.
    Unchanged where `x` has fewer than two distinct values."""
    x = np.asarray(x, dtype=np.float64)
    known = ~np.isnan(x)
    if known.sum() < 2:
        return y, 0.0
    filled = np.where(known, x, x[known].mean())
    var = float(filled.var())
    if var <= 0.0:
        return y, 0.0
    theta = float(np.mean((filled - filled.mean()) * (y - y.mean())) / var)
    adjusted: FloatArray = y - theta * (filled - filled.mean())
    return adjusted, theta


def difference(
    control: FloatArray,
    treatment: FloatArray,
    tau: float,
    alpha: float,
    control_pre: FloatArray | None = None,
    treatment_pre: FloatArray | None = None,
) -> Interval | None:
    """The always-valid interval for mean(treatment) - mean(control), one value per listener;
    CUPED-adjusted when pre-period values are given (NaN for a listener without one). None with
    fewer than two listeners in an arm."""
    a = np.asarray(control, dtype=np.float64)
    b = np.asarray(treatment, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return None
    if control_pre is not None and treatment_pre is not None:
        both, _ = cuped(np.concatenate([a, b]), np.concatenate([control_pre, treatment_pre]))
        a, b = both[: len(a)], both[len(a) :]
    d = float(b.mean() - a.mean())
    v = float(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    h = mixture_half_width(v, tau, alpha)
    return Interval(d, d - h, d + h, v)


@dataclass(frozen=True, slots=True)
class SampleRatio:
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_THRESHOLD


def sample_ratio(counts: Sequence[int], weights: Sequence[float]) -> SampleRatio:
    """Pearson's chi-square of the arms' listener counts against the configured split."""
    n = np.asarray(counts, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = float(n.sum())
    expected = total * w / w.sum()
    if total == 0:
        return SampleRatio(tuple(int(c) for c in counts), tuple(expected.tolist()), 0.0, 1.0)
    stat = float(np.sum((n - expected) ** 2 / expected))
    p = float(chi2.sf(stat, len(n) - 1))
    return SampleRatio(tuple(int(c) for c in counts), tuple(expected.tolist()), stat, p)


# --- the analysis of an experiment's log ----------------------------------------------------------

PRE_PERIOD_DAYS = 14  # how far before the start a listener's slates count as their covariate


@dataclass(frozen=True, slots=True)
class Slate:
    recommendation_id: str
    user: str
    arm: str | None  # None for a slate from before the experiment (the CUPED pre-period)
    requested_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    recommendation_id: str
    kind: OutcomeKind
    value: float | None
    occurred_at: datetime


@dataclass
class ListenerRecord:
    """One listener's exposures and attributed rewards, per metric, in the experiment and in
    the pre-period."""

    arm: str
    slates: int = 0
    rewards: dict[str, float] = field(default_factory=dict)
    pre_slates: int = 0
    pre_rewards: dict[str, float] = field(default_factory=dict)


def listener_records(
    e: Experiment, slates: Iterable[Slate], outcomes: Iterable[Outcome]
) -> dict[str, ListenerRecord]:
    """Per listener in the experiment: slates and the reward of each metric attributed to them
    (an outcome counts for the slate it names, inside the metric's window for its kind, with
    the clock skew the rewards projection allows). Pre-period slates count for listeners in
    the experiment only."""
    metrics = (e.primary, *e.guardrails)
    slate_list = list(slates)
    by_id = {s.recommendation_id: s for s in slate_list}
    out: dict[str, ListenerRecord] = {}
    for s in slate_list:
        if s.arm is not None:
            record = out.setdefault(s.user, ListenerRecord(s.arm))
            record.slates += 1
    for s in slate_list:
        if s.arm is None and s.user in out:
            out[s.user].pre_slates += 1
    for o in outcomes:
        slate = by_id.get(o.recommendation_id)
        if slate is None or slate.user not in out:
            continue
        record = out[slate.user]
        rewards = record.rewards if slate.arm is not None else record.pre_rewards
        for m in metrics:
            start, end = slate.requested_at - CLOCK_SKEW, slate.requested_at
            if start <= o.occurred_at <= end + m.reward.window(o.kind):
                weight = float(m.reward.weight(o.kind, o.value))
                rewards[m.name] = rewards.get(m.name, 0.0) + weight
    return out


@dataclass(frozen=True, slots=True)
class ArmSummary:
    name: str
    weight: float
    listeners: int
    slates: int
    means: Mapping[str, float]  # per metric: the mean over listeners of reward per slate


@dataclass(frozen=True, slots=True)
class Comparison:
    """One arm against the control (the first arm) on one metric."""

    metric: str
    arm: str
    interval: Interval | None
    guardrail: bool
    cuped: bool

    @property
    def verdict(self) -> str:
        if self.interval is None:
            return "too few listeners"
        if self.interval.low > 0:
            return "better"
        if self.interval.high < 0:
            return "guardrail breached" if self.guardrail else "worse"
        return "undecided"


@dataclass(frozen=True, slots=True)
class Analysis:
    arms: tuple[ArmSummary, ...]
    sample_ratio: SampleRatio
    comparisons: tuple[Comparison, ...]
    method: str = (
        "normal-mixture always-valid interval (mSPRT), tau = minimum detectable effect; "
        "listener-level means; CUPED on the pre-period's reward per slate"
    )


def analyse(e: Experiment, records: Mapping[str, ListenerRecord]) -> Analysis:
    """Per arm: listeners, slates, metric means; every other arm against the first, per metric,
    with always-valid intervals; the sample-ratio check."""
    metrics = (e.primary, *e.guardrails)
    by_arm: dict[str, list[ListenerRecord]] = {a.name: [] for a in e.arms}
    for r in records.values():
        if r.arm in by_arm and r.slates > 0:
            by_arm[r.arm].append(r)

    def values(rs: list[ListenerRecord], metric: str) -> tuple[FloatArray, FloatArray]:
        y = np.array([r.rewards.get(metric, 0.0) / r.slates for r in rs], dtype=np.float64)
        x = np.array(
            [
                r.pre_rewards.get(metric, 0.0) / r.pre_slates if r.pre_slates else math.nan
                for r in rs
            ],
            dtype=np.float64,
        )
        return y, x

    arms = tuple(
        ArmSummary(
            a.name,
            float(w),
            len(by_arm[a.name]),
            sum(r.slates for r in by_arm[a.name]),
            {
                m.name: float(values(by_arm[a.name], m.name)[0].mean()) if by_arm[a.name] else 0.0
                for m in metrics
            },
        )
        for a, w in zip(e.arms, e.weights(), strict=True)
    )
    control = e.arms[0].name
    comparisons = []
    for a in e.arms[1:]:
        for m in metrics:
            ya, xa = values(by_arm[control], m.name)
            yb, xb = values(by_arm[a.name], m.name)
            with_pre = bool(np.any(~np.isnan(xa)) or np.any(~np.isnan(xb)))
            interval = difference(
                ya,
                yb,
                e.minimum_detectable_effect,
                e.alpha,
                xa if with_pre else None,
                xb if with_pre else None,
            )
            comparisons.append(Comparison(m.name, a.name, interval, m is not e.primary, with_pre))
    srm = sample_ratio([s.listeners for s in arms], [s.weight for s in arms])
    return Analysis(arms, srm, tuple(comparisons))


def daily(
    e: Experiment, slates: Sequence[Slate], outcomes: Sequence[Outcome], until: datetime
) -> list[tuple[date, Analysis]]:
    """The analysis as it stood at the end of each UTC day from the first experiment slate's
    day to `until`'s: what a team looking every evening saw (the always-valid intervals are
    valid at all of these looks at once)."""
    served = [s.requested_at for s in slates if s.arm is not None]
    if not served:
        return []
    first = min(served).astimezone(UTC).date()
    last = until.astimezone(UTC).date()
    out = []
    day = first
    while day <= last:
        cutoff = datetime.combine(day + timedelta(days=1), time(), UTC)
        seen = [s for s in slates if s.arm is None or s.requested_at < cutoff]
        known = [o for o in outcomes if o.occurred_at < cutoff]
        out.append((day, analyse(e, listener_records(e, seen, known))))
        day += timedelta(days=1)
    return out
