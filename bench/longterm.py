"""Long-term rewards, estimated early: the regret of a Thompson-sampling bandit that learns each
item's long-term reward (active days in the 60 days after a stream) with

    (a) the progressive estimator (`domain.longterm.posterior`: a Gaussian prior over the mean
        daily trace, conditioned on the days observed so far),
    (b) the wait-for-full-horizon baseline (only complete traces count),
    (c) the day-one proxy (day-one activity scaled by the prior's total / day-one ratio),
    (d) an oracle that knows every item's true long-term reward,

on a seeded synthetic population, against the oracle.

    python bench/longterm.py [--quick] [--seeds N] [--items K] [--rounds T] [--listeners N]

The population: K items, each with a true mean daily return trace m_i(d), d = 1..60, a decaying
curve a_i * exp(-(d-1)/tau_i) + b_i: a launch bump of item-specific size a_i and decay tau_i over
a long-run return rate b_i. Day one is mostly the bump, the 60-day total mostly the long-run rate,
so day one is correlated with the long-term reward but does not determine it (the correlation is
printed). Each round is a day: every one of N listeners is recommended one item; a recommendation
leads to a stream with a fixed probability, and a stream starts a trace whose day d is active with
probability m_i(d), independently, seen by the bandit only once day d is over.

Every variant starts knowing nothing: its prior is `uninformed_prior` until `fit_prior` finds
enough items with complete traces in what the variant itself has observed, then the fitted one,
refitted every round. The regret of a round is what the oracle's recommendations are expected to
be worth minus what the variant's are (expected values, not realised ones, so that the figure
measures the choices and not the dice). Variants share each seed's population; their own random
streams are seeded from (seed, variant) so that reruns print the same numbers.

The plot goes to bench/out/longterm_regret.png (the folder ignores its own contents).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from domain.longterm import (
    LongTermEstimate,
    TracePrior,
    day_one_proxy,
    fit_prior,
    full_horizon_baseline,
    posterior,
    uninformed_prior,
)

Vector = NDArray[np.float64]
Matrix = NDArray[np.float64]

OUT = Path(__file__).resolve().parent / "out"
PROGRESSIVE = "(a) progressive"
FULL_HORIZON = "(b) full horizon"
DAY_ONE = "(c) day-one proxy"
ORACLE = "(d) oracle"
LEARNERS = (PROGRESSIVE, FULL_HORIZON, DAY_ONE)


@dataclass(frozen=True, slots=True)
class Config:
    items: int
    rounds: int
    listeners: int
    seeds: int
    horizon: int = 60
    stream_rate: float = 0.5


@dataclass(frozen=True, slots=True)
class Population:
    traces: Matrix  # items x horizon: the true mean daily return trace m_i(d)

    @property
    def value(self) -> Vector:
        """Expected active days of a trace: each item's true long-term reward."""
        return np.asarray(self.traces.sum(axis=1), dtype=np.float64)


def make_population(rng: np.random.Generator, items: int, horizon: int) -> Population:
    days = np.arange(horizon)[None, :]
    bump = rng.uniform(0.05, 0.45, size=(items, 1))
    decay = np.exp(rng.uniform(np.log(2.0), np.log(20.0), size=(items, 1)))
    # Items with a big launch bump tend to keep a few more listeners, but only loosely.
    base = np.clip(rng.gamma(2.0, 0.025, size=(items, 1)) + 0.1 * bump - 0.02, 0.0, None)
    traces = np.clip(bump * np.exp(-days / decay) + base, 0.0, 0.95)
    return Population(traces)


class Evidence:
    """What one variant has seen: per-item, per-day sums and counts of its traces as of a round,
    kept incrementally (the same numbers `domain.longterm.observed_days` gives from the raw
    starts and activity, without re-summing every trace every round)."""

    def __init__(self, items: int, rounds: int, horizon: int) -> None:
        self.horizon = horizon
        self.started = np.zeros((items, rounds))  # traces started per (item, day)
        self.activity = np.zeros((items, rounds, horizon))  # their active days, per trace day
        self.sums = np.zeros((items, horizon))  # observed days only
        self.counts = np.zeros((items, horizon))
        self.complete_sums = np.zeros((items, horizon))  # complete traces only
        self.complete_counts = np.zeros(items)

    def start(self, day: int, streams: Vector, activity: Matrix) -> None:
        self.started[:, day] = streams
        self.activity[:, day, :] = activity

    def advance(self, today: int) -> None:
        """Reveal what is over at the start of round `today`: trace day d of a trace started on
        day s once s + d < today; a trace is complete once its last day is."""
        for d in range(1, self.horizon + 1):
            s = today - 1 - d
            if s < 0:
                break
            self.sums[:, d - 1] += self.activity[:, s, d - 1]
            self.counts[:, d - 1] += self.started[:, s]
        s = today - 1 - self.horizon
        if s >= 0:
            self.complete_sums += self.activity[:, s, :]
            self.complete_counts += self.started[:, s]


Scorer = Callable[[TracePrior, Evidence, int], LongTermEstimate]


def _progressive(prior: TracePrior, ev: Evidence, i: int) -> LongTermEstimate:
    return posterior(prior, ev.sums[i], ev.counts[i])


def _full_horizon(prior: TracePrior, ev: Evidence, i: int) -> LongTermEstimate:
    return full_horizon_baseline(prior, ev.complete_sums[i], int(ev.complete_counts[i]))


def _day_one(prior: TracePrior, ev: Evidence, i: int) -> LongTermEstimate:
    return day_one_proxy(prior, float(ev.sums[i, 0]), int(ev.counts[i, 0]))


SCORERS: dict[str, Scorer] = {
    PROGRESSIVE: _progressive,
    FULL_HORIZON: _full_horizon,
    DAY_ONE: _day_one,
}


def run_bandit(
    pop: Population, variant: str, cfg: Config, rng: np.random.Generator
) -> tuple[Vector, int]:
    """Per-round regret of one variant, and the first round its prior was a fitted one."""
    items, horizon = pop.traces.shape
    value = pop.value
    best = float(value.max())
    ev = Evidence(items, cfg.rounds, horizon)
    regret = np.zeros(cfg.rounds)
    fitted_from = -1
    for today in range(cfg.rounds):
        ev.advance(today)
        if variant == ORACLE:
            choices = np.full(cfg.listeners, int(value.argmax()))
        else:
            prior = fit_prior(ev.sums, ev.counts)
            if prior is None:
                prior = uninformed_prior(horizon)
            elif fitted_from < 0:
                fitted_from = today
            estimates = [SCORERS[variant](prior, ev, i) for i in range(items)]
            mean = np.array([e.estimate for e in estimates])
            sd = np.sqrt([e.variance for e in estimates])
            # Thompson sampling: one posterior draw per item for every listener.
            draws = mean + sd * rng.standard_normal((cfg.listeners, items))
            choices = draws.argmax(axis=1)
        shown = np.bincount(choices, minlength=items).astype(np.float64)
        regret[today] = cfg.stream_rate * float((best - value[choices]).sum())
        streams = rng.binomial(shown.astype(np.int64), cfg.stream_rate).astype(np.float64)
        # Days of a trace are independent given the item, so the day-d activity of an item's
        # traces started today is one binomial draw per (item, day).
        activity = rng.binomial(streams.astype(np.int64)[:, None], pop.traces).astype(np.float64)
        ev.start(today, streams, activity)
    return regret, fitted_from


@dataclass(frozen=True, slots=True)
class Result:
    cumulative: dict[str, Matrix]  # variant -> seeds x rounds cumulative regret
    oracle_reward: Vector  # per seed: the oracle's expected total long-term reward
    random_regret: Vector  # per seed: the regret of recommending uniformly at random
    day_one_corr: Vector  # per seed: correlation of day one with the 60-day total, over items
    fitted_from: dict[str, list[int]]


def run(cfg: Config) -> Result:
    cumulative: dict[str, list[Vector]] = {v: [] for v in LEARNERS}
    fitted: dict[str, list[int]] = {v: [] for v in LEARNERS}
    oracle, random_regret, corr = [], [], []
    for seed in range(cfg.seeds):
        pop = make_population(np.random.default_rng([seed, 0]), cfg.items, cfg.horizon)
        value = pop.value
        per_round = cfg.listeners * cfg.stream_rate
        oracle.append(per_round * cfg.rounds * float(value.max()))
        random_regret.append(per_round * cfg.rounds * float(value.max() - value.mean()))
        corr.append(float(np.corrcoef(pop.traces[:, 0], value)[0, 1]))
        for k, variant in enumerate((*LEARNERS, ORACLE), start=1):
            regret, fitted_from = run_bandit(pop, variant, cfg, np.random.default_rng([seed, k]))
            if variant == ORACLE:
                assert not regret.any(), "the oracle has no regret by construction"
                continue
            cumulative[variant].append(np.cumsum(regret))
            fitted[variant].append(fitted_from)
    return Result(
        {v: np.array(c) for v, c in cumulative.items()},
        np.array(oracle),
        np.array(random_regret),
        np.array(corr),
        fitted,
    )


def report(cfg: Config, result: Result, elapsed: float) -> None:
    print(
        f"long-term rewards: {cfg.items} items, horizon {cfg.horizon} days, {cfg.rounds} rounds "
        f"(days) x {cfg.listeners} listeners, stream rate {cfg.stream_rate}, {cfg.seeds} seeds"
    )
    print(
        f"corr(day one, 60-day total) over items: mean {result.day_one_corr.mean():.2f}; "
        f"oracle's expected reward {result.oracle_reward.mean():,.0f} active days; "
        f"uniform-random regret {result.random_regret.mean():,.0f}"
    )
    print()
    final = {v: c[:, -1] for v, c in result.cumulative.items()}
    a = final[PROGRESSIVE]
    # Where the regret is made: while no trace can be complete, and after.
    split = min(cfg.horizon + 1, cfg.rounds)
    print(
        f"{'variant':<18} {'cum. regret':>11} {'sd':>7} {'min':>7} {'max':>7} "
        f"{'% oracle':>8} {'/ (a)':>6} {f'days 0-{split - 1}':>10} {'after':>7} "
        f"{'prior fitted on day':>19}"
    )
    for v in LEARNERS:
        f = final[v]
        early = float(result.cumulative[v][:, split - 1].mean())
        share = 100 * f.mean() / result.oracle_reward.mean()
        days = result.fitted_from[v]
        fitted = f"{min(days)}-{max(days)}" if min(days) >= 0 else "never"
        print(
            f"{v:<18} {f.mean():>11,.0f} {f.std(ddof=1) if len(f) > 1 else 0.0:>7,.0f} "
            f"{f.min():>7,.0f} {f.max():>7,.0f} {share:>7.1f}% {f.mean() / a.mean():>6.2f} "
            f"{early:>10,.0f} {f.mean() - early:>7,.0f} {fitted:>19}"
        )
    print(f"{ORACLE:<18} {0:>11,}")
    print()
    wins_b = int((a < final[FULL_HORIZON]).sum())
    wins_c = int((a < final[DAY_ONE]).sum())
    print(
        f"ratios: (a)/(b) = {a.mean() / final[FULL_HORIZON].mean():.2f}, "
        f"(a)/(c) = {a.mean() / final[DAY_ONE].mean():.2f}; (a) lower than (b) in {wins_b}/"
        f"{cfg.seeds} seeds, lower than (c) in {wins_c}/{cfg.seeds}"
    )
    print(f"elapsed {elapsed:.1f} s")


def plot(cfg: Config, result: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    rounds = np.arange(1, cfg.rounds + 1)
    for v in LEARNERS:
        c = result.cumulative[v]
        ax.plot(rounds, c.mean(axis=0), label=v)
        ax.fill_between(rounds, c.min(axis=0), c.max(axis=0), alpha=0.2)
    ax.axhline(0, color="black", linewidth=0.8, label=ORACLE)
    ax.axvline(
        cfg.horizon + 1, color="grey", linestyle=":", linewidth=0.8, label="first traces complete"
    )
    ax.set_xlabel("round (day)")
    ax.set_ylabel("cumulative regret vs oracle (expected active days)")
    ax.set_title(
        f"Thompson sampling on long-term reward: {cfg.items} items, {cfg.listeners} listeners/day,"
        f" {cfg.seeds} seeds (mean, min-max band)",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Outputs are not committed: the folder ignores everything in it.
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, in seconds")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--listeners", type=int)
    parser.add_argument("--output", type=Path, default=OUT / "longterm_regret.png")
    args = parser.parse_args()
    cfg = Config(items=100, rounds=150, listeners=100, seeds=10)
    if args.quick:
        cfg = Config(items=50, rounds=100, listeners=100, seeds=2)
    cfg = Config(
        items=args.items or cfg.items,
        rounds=args.rounds or cfg.rounds,
        listeners=args.listeners or cfg.listeners,
        seeds=args.seeds or cfg.seeds,
    )
    started = time.perf_counter()
    result = run(cfg)
    report(cfg, result, time.perf_counter() - started)
    plot(cfg, result, args.output)
    print(f"plot: {args.output}")


if __name__ == "__main__":
    main()
