"""Online experiments on the simulator: does the analysis of `domain.experiments` keep its promises?

    python bench/experiments.py [--quick] [--aa 200] [--ab 200] [--broken 50] [--listeners 1000]
                                [--items 300] [--days 14] [--pre-days 7] [--active 0.4]
                                [--worse-epsilon 0.1] [--mde 0.1] [--seed 0]

Each run is one seeded world (`domain.simulator`) and one experiment with two arms of Segue's
policy (`domain.ranking`: the same greedy slate and exploration, with exact propensities). The
policy does not learn during a run: each listener's candidate scores are their true item values
blurred once by a fixed model error, so what each arm is worth to each listener is known exactly
(the exact per-position propensities give every item's probability at every position, and the
simulator gives each item's expected reward once looked at), and so is the true difference
between the arms: the mean over all listeners of (value under B - value under A).

Listeners are assigned by `domain.experiments.assign` (salted hash of the listener's id). Each
day every listener is active with probability --active; an active listener is served one slate
of 10 by their arm and responds (`domain.simulator.respond`). The primary metric is the
listener's mean reward per slate (streams + saves - skips) over the experiment so far; the
listener is the unit. Before the experiment --pre-days days are served by arm A's policy to
everybody; a listener's mean reward per slate then is their CUPED covariate (missing for those
never active then).

Every evening the analysis is read (daily peeking): the always-valid normal-mixture interval of
B - A (tau = --mde, alpha 0.05) with CUPED, the sample-ratio check, and, for contrast, the
fixed-sample 95% interval, which is only valid at one look.

- A/A: both arms the default policy. A false positive is a run whose interval excludes 0 at any
  of the daily looks; the rate should stay at or below 5%.
- A/B: arm B explores more (epsilon --worse-epsilon instead of 0.03), which is worse. Power is
  the share of runs whose interval is entirely below 0 at some look; coverage the share whose
  interval holds the true difference at every look (and at the last one).
- Broken split: as A/B's A/A, but a quarter of arm B's listeners lose their exposures (a surface
  that fails to log for them): the sample-ratio check should flag it.

For the first A/B run, the offline estimate of arm B's value from arm A's logged slates alone
(`domain.ope`, as `segue evaluate` computes it) is printed beside the online figure.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from domain.experiments import (
    Arm,
    Experiment,
    Metric,
    assign,
    difference,
    fixed_half_width,
    sample_ratio,
    unit_hash,
)
from domain.ope import LoggedRounds, OpeConfig, TargetBuilder, evaluate, policy_marginals
from domain.ranking import PolicyParams, Pool, explore_rows, greedy_rows
from domain.simulator import SimConfig, World, examination, item_values, make_world, respond

ALPHA = 0.05
N = 10
MODEL_NOISE = 0.3  # the blur of each listener's candidate scores, in units of item value


@dataclass(frozen=True)
class Setup:
    listeners: int
    items: int
    days: int
    pre_days: int
    active: float
    mde: float


@dataclass
class Run:
    """One run's daily looks."""

    true_difference: float
    rejected_low: bool = False  # the interval was entirely below 0 at some look
    rejected_high: bool = False
    fixed_rejected: bool = False  # the fixed-sample interval excluded 0 at some look
    covered_always: bool = True
    covered_last: bool = False
    srm_flagged: bool = False
    first_rejection_day: int | None = None
    variance_ratio: float = math.nan  # CUPED variance / unadjusted variance, last look
    last_half_width: float = math.nan
    last_difference: float = math.nan
    counts: tuple[int, int] = (0, 0)
    log: list[tuple[int, int, int, float, float]] = field(default_factory=list)


def listener_pools(
    world: World, rng: np.random.Generator
) -> tuple[list[Pool], NDArray[np.float64]]:
    """Each listener's pool (every item, scored by a blurred copy of their true values) and the
    true values themselves (listeners x items)."""
    values = np.stack([item_values(world, u) for u in range(world.config.listeners)])
    codes: dict[str, int] = {}
    groups = np.array(
        [codes.setdefault(item.group, len(codes) + 1) for item in world.items], dtype=np.int64
    )
    ids = [item.item_id for item in world.items]
    zeros = np.zeros(len(ids))
    pools = []
    for u in range(world.config.listeners):
        estimate = values[u] + MODEL_NOISE * values.std() * rng.normal(size=len(ids))
        pools.append(Pool(ids, groups, estimate, zeros, zeros, zeros, rng.random(len(ids))))
    return pools, values


def slate_value(values: NDArray[np.float64], top: list[int], p: PolicyParams, n: int) -> float:
    """The expected reward of a slate drawn by `explore_rows(top, ...)`: at position k,
    sum_i P(i at k) value_i, with the propensities of `domain.ranking` in closed form."""
    size = len(values)
    head = max(0, len(top) - p.tail)
    rest = np.ones(size, dtype=bool)
    rest[top[:head]] = False
    mean_all, mean_rest = float(values.mean()), float(values[rest].mean())
    exploit = 1.0 - p.epsilon - p.tail_epsilon
    looked = examination(np.arange(len(top), dtype=np.int64), SimConfig())
    total = 0.0
    for k, row in enumerate(top):
        tail_part = float(values[row]) if k < head else mean_rest
        here = p.epsilon * mean_all + p.tail_epsilon * tail_part + exploit * float(values[row])
        total += float(looked[k]) * here
    return total


def run_one(
    seed: int, setup: Setup, arms: tuple[PolicyParams, PolicyParams], drop: float, keep_log: bool
) -> Run:
    config = SimConfig(listeners=setup.listeners, items=setup.items, artists=60, shows=12)
    world = make_world(config, np.random.default_rng([seed, 0]))
    pools, values = listener_pools(world, np.random.default_rng([seed, 1]))
    tops = [[greedy_rows(pools[u], N, p) for p in arms] for u in range(setup.listeners)]
    truth = [
        [slate_value(values[u], tops[u][a], arms[a], N) for a in range(2)]
        for u in range(setup.listeners)
    ]
    true_difference = float(np.mean([t[1] - t[0] for t in truth]))
    experiment = Experiment(
        name="sim",
        hypothesis="",
        arms=(Arm("a", 1.0), Arm("b", 1.0)),
        surfaces=("home",),
        primary=Metric("reward"),
        minimum_detectable_effect=setup.mde,
        salt=f"seed-{seed}",
    )
    arm_of = [
        0 if assign(experiment, world.listener_ids[u]).name == "a" else 1
        for u in range(setup.listeners)
    ]
    lost = [
        arm_of[u] == 1 and unit_hash("lost", str(seed), world.listener_ids[u]) < drop
        for u in range(setup.listeners)
    ]
    row_of = world.item_index()

    def serve(u: int, arm: int, day: int) -> tuple[float, list[tuple[int, int, float, float]]]:
        p = arms[arm]
        entries = explore_rows(tops[u][arm], pools[u], p, random.Random(f"{seed}:{day}:{u}"))
        slate = [row_of[e.item_id] for e in entries]
        responses = respond(world, u, slate, np.random.default_rng([seed, 2, day + 100, u]))
        rounds = [(slate[k], k, entries[k].propensity, responses[k].reward) for k in range(N)]
        return sum(r.reward for r in responses), rounds

    pre_sum = np.zeros(setup.listeners)
    pre_count = np.zeros(setup.listeners)
    for day in range(-setup.pre_days, 0):
        active = np.random.default_rng([seed, 3, day + 100]).random(setup.listeners) < setup.active
        for u in np.flatnonzero(active).tolist():
            reward, _ = serve(u, 0, day)
            pre_sum[u] += reward
            pre_count[u] += 1
    pre = np.where(pre_count > 0, pre_sum / np.maximum(pre_count, 1), np.nan)

    out = Run(true_difference)
    total = np.zeros(setup.listeners)
    count = np.zeros(setup.listeners)
    for day in range(setup.days):
        active = np.random.default_rng([seed, 3, day + 100]).random(setup.listeners) < setup.active
        for u in np.flatnonzero(active).tolist():
            reward, rounds = serve(u, arm_of[u], day)
            if lost[u]:
                continue  # served, but the exposure never reached the log
            total[u] += reward
            count[u] += 1
            if keep_log and arm_of[u] == 0:
                out.log.extend((u, *r) for r in rounds)
        seen = count > 0
        groups = [np.flatnonzero(seen & (np.array(arm_of) == a)) for a in range(2)]
        y = np.where(seen, total / np.maximum(count, 1), 0.0)
        interval = difference(
            y[groups[0]], y[groups[1]], setup.mde, ALPHA, pre[groups[0]], pre[groups[1]]
        )
        srm = sample_ratio([len(g) for g in groups], [1.0, 1.0])
        out.srm_flagged |= srm.mismatch
        if interval is None:
            continue
        if interval.high < 0 or interval.low > 0:
            out.rejected_low |= interval.high < 0
            out.rejected_high |= interval.low > 0
            if out.first_rejection_day is None:
                out.first_rejection_day = day + 1
        out.fixed_rejected |= abs(interval.difference) > fixed_half_width(interval.variance, ALPHA)
        out.covered_always &= interval.covers(true_difference)
        if day == setup.days - 1:
            out.covered_last = interval.covers(true_difference)
            plain = difference(y[groups[0]], y[groups[1]], setup.mde, ALPHA)
            assert plain is not None
            out.variance_ratio = interval.variance / plain.variance
            out.last_half_width = (interval.high - interval.low) / 2
            out.last_difference = interval.difference
            out.counts = (len(groups[0]), len(groups[1]))
    return out


def offline_estimate(run: Run, setup: Setup, b: PolicyParams, seed: int) -> dict[str, float]:
    """Arm B's value per slate estimated from arm A's logged slates alone, as `segue evaluate`
    estimates a candidate policy: per position, B's probability of the logged item over the
    logged propensity."""
    config = SimConfig(listeners=setup.listeners, items=setup.items, artists=60, shows=12)
    world = make_world(config, np.random.default_rng([seed, 0]))
    pools, _ = listener_pools(world, np.random.default_rng([seed, 1]))
    builder = TargetBuilder()
    slate_ids: list[int] = []
    everything = builder.support(range(setup.items))
    greedy_cache: dict[int, list[str]] = {}
    row_of = world.item_index()
    for j, (u, _, position, _, _) in enumerate(run.log):
        if u not in greedy_cache:
            greedy_cache[u] = [pools[u].item_ids[r] for r in greedy_rows(pools[u], N, b)]
        density, extras = policy_marginals(greedy_cache[u], setup.items, position, b)
        builder.add(everything, density, [row_of[i] for i in extras], list(extras.values()))
        slate_ids.append(j // N)
    log = LoggedRounds(
        slate=np.array(slate_ids, dtype=np.int64),
        item=np.array([r[1] for r in run.log], dtype=np.int64),
        position=np.array([r[2] for r in run.log], dtype=np.int64),
        pscore=np.array([r[3] for r in run.log], dtype=np.float64),
        reward=np.array([r[4] for r in run.log], dtype=np.float64),
        n_items=setup.items,
    )
    estimates = evaluate(log, builder.build(), OpeConfig(n_bootstrap=200))
    logged = float(log.reward.mean()) * N
    out = {"logged A per slate": logged}
    for name in ("ipw", "snipw", "dr"):
        e = estimates[name].estimate
        out[f"{name}: B - A per slate"] = (e * N - logged) if e is not None else math.nan
    return out


def rate(hits: int, runs: int) -> str:
    """The share and its 95% Wilson interval (which, unlike p ± 1.96 se, says something at 0
    and 1: 200 runs out of 200 is not certainty)."""
    if not runs:
        return "-"
    p, z = hits / runs, 1.96
    centre = (p + z * z / (2 * runs)) / (1 + z * z / runs)
    half = z * math.sqrt(p * (1 - p) / runs + z * z / (4 * runs * runs)) / (1 + z * z / runs)
    return f"{p:.3f} [{max(0.0, centre - half):.3f}, {min(1.0, centre + half):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 runs each, for a smoke test")
    parser.add_argument("--aa", type=int, default=200)
    parser.add_argument("--ab", type=int, default=200)
    parser.add_argument("--broken", type=int, default=50)
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--pre-days", type=int, default=7)
    parser.add_argument("--active", type=float, default=0.4)
    parser.add_argument("--worse-epsilon", type=float, default=0.1)
    parser.add_argument("--mde", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.aa = args.ab = args.broken = 20
    setup = Setup(args.listeners, args.items, args.days, args.pre_days, args.active, args.mde)
    default, worse = PolicyParams(), PolicyParams(epsilon=args.worse_epsilon)
    started = time.monotonic()
    scenarios = [
        ("A/A", args.aa, (default, default), 0.0),
        (f"A/B (B: epsilon {args.worse_epsilon})", args.ab, (default, worse), 0.0),
        ("A/A, broken split", args.broken, (default, default), 0.25),
    ]
    print(
        f"{setup.listeners} listeners, {setup.items} items, {setup.days} daily looks, "
        f"{setup.pre_days} pre-period days, active {setup.active:.0%} a day, tau = MDE = "
        f"{setup.mde}, alpha {ALPHA}; rates with their 95% Wilson intervals\n"
    )
    print(
        "| scenario | runs | true B - A | rejects at any look (always-valid) | "
        "rejects at any look (fixed 95%, peeked) | covers truth at every look | "
        "covers truth at the last look | SRM flagged | median day of rejection | "
        "CUPED variance ratio | last half-width |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first_ab: Run | None = None
    for k, (label, runs, arms, drop) in enumerate(scenarios):
        results = []
        for r in range(runs):
            seed = args.seed + 1000 * k + r
            keep = k == 1 and r == 0
            results.append(run_one(seed, setup, arms, drop, keep))
            if keep:
                first_ab = results[-1]
        if not results:
            continue
        rejected = sum(x.rejected_low or x.rejected_high for x in results)
        days = [x.first_rejection_day for x in results if x.first_rejection_day is not None]
        print(
            f"| {label} | {runs} | {np.mean([x.true_difference for x in results]):+.3f} | "
            f"{rate(rejected, runs)} | {rate(sum(x.fixed_rejected for x in results), runs)} | "
            f"{rate(sum(x.covered_always for x in results), runs)} | "
            f"{rate(sum(x.covered_last for x in results), runs)} | "
            f"{rate(sum(x.srm_flagged for x in results), runs)} | "
            f"{np.median(days) if days else '-'} | "
            f"{np.mean([x.variance_ratio for x in results]):.2f} | "
            f"{np.mean([x.last_half_width for x in results]):.3f} |"
        )
    if first_ab is not None:
        seed = args.seed + 1000
        print(f"\nOnline and offline, A/B run seed {seed} (per slate):")
        print(f"  true B - A                          {first_ab.true_difference:+.3f}")
        half = first_ab.last_half_width
        print(f"  online B - A (last look)            {first_ab.last_difference:+.3f} ± {half:.3f}")
        for name, value in offline_estimate(first_ab, setup, worse, seed).items():
            print(f"  offline {name:<28}{value:+.3f}")
    print(f"\n{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
