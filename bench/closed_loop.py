"""Closed loop: simulated listeners (domain.simulator) talk to a real gateway for many rounds;
Segue's cumulative reward beside random, popularity and an oracle, on the same listeners.

    python bench/closed_loop.py [--quick] [--listeners 200] [--items 1000] [--rounds 30]
                                [--active 0.5] [--n 10] [--rebuild-every 1] [--settle 10.5]
                                [--seed 7] [--content-noise X] [--url postgresql://...]

It starts a real `segue serve` on a fresh database (and a fresh data folder for its indexes),
creates a key, and upserts the simulated catalogue: tracks with their artist, episodes with their
show, and no content vectors unless --content-noise is given (then each item's latent direction,
blurred by that much), so by default Segue learns tastes from behaviour alone. 60% of the items
are out on day 1; the rest are released over the run (upserted on their day). A round is a
simulated day:

1. every listener comes back to some of what they streamed on earlier days (long-term returns,
   posted to Segue as organic `stream_30s` outcomes, without a recommendation id);
2. each listener is active with probability --active; every active one asks for a slate of --n
   (`POST /v1/recommendations`, surface `home`), and the simulator decides what they do with it;
   the outcomes (`stream_30s`, `complete`, `save`, and `skip` after 5 s of listening) go back
   through `POST /v1/outcomes` with the recommendation id;
3. the bench waits for the projections to catch up, asks for an index build every
   --rebuild-every rounds (`POST /v1/admin/index/rebuild`, with the scheduled builds switched
   off) and waits until it is served, and lets at least --settle seconds pass after the catch-up
   (the gateway refreshes its in-memory reward posteriors every 10 s), so that each day starts
   from everything the previous ones taught.

The baselines run in the bench itself, each in its own copy of the world, with the same
listeners, the same active listeners each day, and the same dice (a listener's responses on a
given day come from a generator seeded by (seed, day, listener), whichever policy chose the slate):

- random: a uniformly random slate;
- popularity: the items streamed most so far in its own copy of the world (from its slates and
  the returns they led to; counted at the start of the day; ties in random order);
- oracle: the items with the highest true expected reward for the listener.

A fifth line, "pop-all", is popularity counted over the streams of every copy (the chart of the
whole simulated service): a stronger baseline, printed for context, not the goal.
All of them are held to Segue's `home` rule that what a listener streamed is not offered again,
and offer only released items; only Segue also keeps at most two items per artist or show.

The reward is the simulator's realised short-term reward: per slate, streams + saves - skips
(`domain.simulator.slate_reward`). Beside it: the noise-free expected reward of the same slates
(what the choices were worth, without the dice), and the long-term returns they led to. The plot
goes to bench/out/closed_loop.png.

Segue's policy is the gateway's default unless `SEGUE_POLICY_*` variables in the bench's
environment (which the gateway inherits) select another; docs/decisions.md 23 has the figures
of the default and the settings it was chosen over, over several seeds.

The baselines are deterministic given --seed; Segue is not quite: its exploration is drawn from
the recommendation id, a fresh uuid4, and early luck compounds (an item that does well early is
shown more). Runs of the same seed have differed by about +-0.15 reward per slate; compare
settings over several runs and seeds, not one.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from domain.simulator import (
    Response,
    SimConfig,
    World,
    content_vectors,
    expected_reward,
    item_values,
    make_world,
    oracle_slate,
    respond,
    returns,
    slate_reward,
)
from gateway.client import SegueClient, outcome

from _common import OUT, add_url_argument, bench_key, serving, throwaway_database

NAMESPACE = uuid.UUID("3f1c8a52-6e0b-4b9e-9d57-2a4f6c1e8b73")
RANDOM, POPULARITY, POP_ALL, SEGUE, ORACLE = "random", "popularity", "pop-all", "segue", "oracle"
ARMS = (RANDOM, POPULARITY, POP_ALL, SEGUE, ORACLE)
# Independent generator streams: generator(seed, stream, day, listener).
RESPOND, RETURN, SHUFFLE, ACTIVE, CONTENT = 1, 2, 3, 4, 5
SKIP_MS = 5_000.0
STREAM_MS = 95_000.0


def generator(seed: int, stream: int, day: int, listener: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, day, listener])


def active_listeners(world: World, day: int, seed: int, share: float) -> list[int]:
    draws = generator(seed, ACTIVE, day, 0).random(world.config.listeners)
    return [int(u) for u in np.flatnonzero(draws < share)]


@dataclass
class Arm:
    """One policy's copy of the world: what each listener streamed, and what it earned."""

    name: str
    listeners: int
    items: int
    streamed: list[dict[int, int]] = field(default_factory=list)  # item -> day first streamed
    counts: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    reward: list[float] = field(default_factory=list)  # realised, summed over the day's slates
    expected: list[float] = field(default_factory=list)
    returns: list[int] = field(default_factory=list)
    slates: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.streamed = [{} for _ in range(self.listeners)]
        self.counts = np.zeros(self.items, dtype=np.int64)

    def day_returns(self, world: World, day: int, seed: int) -> list[tuple[int, int]]:
        """(listener, item) of every return on `day`; counted as streams of this copy."""
        out = []
        for u in range(self.listeners):
            for item in returns(world, u, self.streamed[u], day, generator(seed, RETURN, day, u)):
                out.append((u, item))
                self.counts[item] += 1
        self.returns.append(len(out))
        return out

    def record(self, day: int, u: int, responses: Sequence[Response]) -> None:
        for r in responses:
            if r.streamed:
                self.streamed[u].setdefault(r.item, day)
                self.counts[r.item] += 1

    def close_day(self, total: float, expected: float, slates: int) -> None:
        self.reward.append(total)
        self.expected.append(expected)
        self.slates.append(slates)

    def per_slate(self, which: slice = slice(None)) -> float:
        return sum(self.reward[which]) / max(1, sum(self.slates[which]))

    def expected_per_slate(self, which: slice = slice(None)) -> float:
        return sum(self.expected[which]) / max(1, sum(self.slates[which]))


Policy = Callable[[int, int, NDArray[np.int64]], list[int]]  # (listener, day, counts) -> slate


def first_eligible(
    world: World, arm: Arm, u: int, day: int, order: NDArray[np.int64], n: int
) -> list[int]:
    """The first `n` of `order` that are released and that `u` has not streamed."""
    out: list[int] = []
    released = world.released(day)
    for i in order.tolist():
        if released[i] and i not in arm.streamed[u]:
            out.append(i)
            if len(out) == n:
                break
    return out


def random_policy(world: World, arm: Arm, n: int, seed: int) -> Policy:
    def choose(u: int, day: int, counts: NDArray[np.int64]) -> list[int]:
        order = generator(seed, SHUFFLE, day, u).permutation(len(world.items))
        return first_eligible(world, arm, u, day, order, n)

    return choose


def popularity_policy(world: World, arm: Arm, n: int, seed: int) -> Policy:
    def choose(u: int, day: int, counts: NDArray[np.int64]) -> list[int]:
        ties = generator(seed, SHUFFLE, day, u).random(len(world.items))
        return first_eligible(world, arm, u, day, np.lexsort((ties, -counts)), n)

    return choose


def oracle_policy(world: World, arm: Arm, n: int) -> Policy:
    def choose(u: int, day: int, counts: NDArray[np.int64]) -> list[int]:
        return oracle_slate(world, u, n, arm.streamed[u], day=day)

    return choose


def run_local_day(
    world: World,
    arm: Arm,
    policy: Policy,
    counts: NDArray[np.int64],
    day: int,
    seed: int,
    active: Sequence[int],
) -> None:
    total = expected = 0.0
    for u in active:
        slate = policy(u, day, counts)
        responses = respond(world, u, slate, generator(seed, RESPOND, day, u))
        total += slate_reward(responses)
        expected += expected_reward(world, u, slate)
        arm.record(day, u, responses)
    arm.close_day(total, expected, len(active))


def outcomes_of(
    world: World, u: int, recommendation_id: str, responses: Sequence[Response], seed: int, day: int
) -> list[dict[str, Any]]:
    out = []
    user = world.listener_ids[u]
    for r in responses:
        item = world.items[r.item].item_id
        kinds: list[tuple[str, float]] = []
        if r.streamed:
            kinds.append(("stream_30s", STREAM_MS))
            if r.completed:
                kinds.append(("complete", STREAM_MS))
            if r.saved:
                kinds.append(("save", 0.0))
        elif r.skipped:
            kinds.append(("skip", SKIP_MS))
        for kind, value in kinds:
            out.append(
                outcome(
                    user,
                    item,
                    kind,
                    recommendation_id=recommendation_id,
                    value=value,
                    event_id=uuid.uuid5(NAMESPACE, f"{seed}/{day}/{u}/{item}/{kind}"),
                )
            )
    return out


@dataclass
class SegueDay:
    repeats: int = 0  # items served that the listener had already streamed
    short: int = 0  # slates shorter than asked
    explored: int = 0  # slates with positions drawn at random
    overlap: float = 0.0  # mean share of the slate that is in the oracle's slate
    fresh: int = 0  # items released today that were served
    seconds: float = 0.0


async def post_all(client: SegueClient, outcomes: list[dict[str, Any]]) -> None:
    for i in range(0, len(outcomes), 1000):
        await client.record_outcomes(outcomes[i : i + 1000])


async def run_segue_day(
    client: SegueClient,
    world: World,
    arm: Arm,
    day: int,
    seed: int,
    n: int,
    active: Sequence[int],
    concurrency: int,
    item_row: dict[str, int],
    vectors: NDArray[np.float64] | None,
) -> SegueDay:
    started = time.perf_counter()
    stats = SegueDay()
    released = [it for it in world.items if it.release_day == day]
    for i in range(0, len(released), 1000):
        await client.upsert_items(
            {"item_id": it.item_id, "kind": it.kind, "attributes": it.attributes()}
            | ({} if vectors is None else {"vector": vectors[item_row[it.item_id]].tolist()})
            for it in released[i : i + 1000]
        )
    back = arm.day_returns(world, day, seed)
    await post_all(
        client,
        [
            outcome(
                world.listener_ids[u],
                world.items[i].item_id,
                "stream_30s",
                value=STREAM_MS,
                event_id=uuid.uuid5(NAMESPACE, f"{seed}/{day}/{u}/{i}/return"),
            )
            for u, i in back
        ],
    )
    gate = asyncio.Semaphore(concurrency)

    async def ask(u: int) -> tuple[int, str, list[int], list[float]]:
        async with gate:
            rec = await client.recommend(world.listener_ids[u], surface="home", n=n)
        slate = [item_row[x["item_id"]] for x in rec["items"]]
        return u, rec["recommendation_id"], slate, [float(x["propensity"]) for x in rec["items"]]

    answers = await asyncio.gather(*(ask(u) for u in active))
    total = expected = 0.0
    outcomes: list[dict[str, Any]] = []
    for u, rid, slate, propensities in answers:
        stats.repeats += sum(i in arm.streamed[u] for i in slate)
        stats.short += len(slate) < n
        # The greedy slate puts every item where its propensity is at least 1 - exploration;
        # a position drawn at random (a uniform slate, or a re-drawn tail) has a small one.
        stats.explored += bool(slate) and min(propensities) < 0.5
        stats.fresh += sum(world.items[i].release_day == day > 0 for i in slate)
        best = set(oracle_slate(world, u, n, arm.streamed[u], day=day))
        stats.overlap += len(best.intersection(slate)) / n
        responses = respond(world, u, slate, generator(seed, RESPOND, day, u))
        total += slate_reward(responses)
        expected += expected_reward(world, u, slate)
        arm.record(day, u, responses)
        outcomes += outcomes_of(world, u, rid, responses, seed, day)
    await post_all(client, outcomes)
    arm.close_day(total, expected, len(active))
    stats.overlap /= max(1, len(active))
    stats.seconds = time.perf_counter() - started
    return stats


async def caught_up(client: SegueClient, timeout: float = 120.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = await client.request("GET", "/v1/admin/status")
        if all(p["lag_events"] == 0 for p in status["projections"] if p["status"] == "live"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"projections did not catch up: {status['projections']}")
        await asyncio.sleep(0.1)  # polling another process's progress


async def index_status(client: SegueClient) -> dict[str, Any]:
    status: dict[str, Any] = await client.request("GET", "/v1/admin/status")
    index: dict[str, Any] = status["index"]
    return index


async def rebuild(client: SegueClient, timeout: float = 120.0) -> dict[str, Any]:  # noqa: ASYNC109
    before = (await index_status(client))["version"]
    await client.request("POST", "/v1/admin/index/rebuild")
    deadline = time.monotonic() + timeout
    while True:
        index = await index_status(client)
        if index["error"]:
            raise RuntimeError(f"index build failed: {index['error']}")
        if index["version"] != before and not index["building"]:
            return index
        if time.monotonic() > deadline:
            raise RuntimeError("index build did not finish")
        await asyncio.sleep(0.1)  # polling the background build


def thirds(rounds: int) -> tuple[slice, slice]:
    k = max(1, rounds // 3)
    return slice(0, k), slice(rounds - k, rounds)


def summarise(arms: dict[str, Arm], rounds: int) -> None:
    early, late = thirds(rounds)
    span = (f"rounds {early.start + 1}-{early.stop}", f"rounds {late.start + 1}-{late.stop}")
    print()
    print("reward = streams + saves - skips, realised by the simulator (summed over all slates)")
    print(
        f"{'policy':<11}{'cumulative':>11}{'per slate':>10}{'expected':>10}"
        f"{'first third':>13}{'last third':>12}{'returns':>9}"
    )
    for name in ARMS:
        a = arms[name]
        print(
            f"{name:<11}{sum(a.reward):>11.0f}{a.per_slate():>10.3f}"
            f"{a.expected_per_slate():>10.3f}{a.per_slate(early):>13.3f}"
            f"{a.per_slate(late):>12.3f}{sum(a.returns):>9}"
        )
    print("(per slate: mean realised reward; expected: mean noise-free expected reward of the same")
    print(" slates; first/last third: realised per slate; returns: long-term returns, all days)")
    seg, pop, pop_all, ora = (sum(arms[k].reward) for k in (SEGUE, POPULARITY, POP_ALL, ORACLE))
    print(
        f"Segue / popularity: {seg / pop:.2f} "
        f"(goal >= 1.5: {'met' if seg >= 1.5 * pop else 'NOT met'})"
        f"   Segue / pop-all: {seg / pop_all:.2f}   Segue / oracle: {seg / ora:.2f}"
    )
    print("gap to the oracle, 1 - policy / oracle, realised (expected in brackets):")
    for name in (RANDOM, POPULARITY, POP_ALL, SEGUE):
        a, o = arms[name], arms[ORACLE]
        parts = [
            f"{1 - sum(a.reward[s]) / sum(o.reward[s]):.2f} "
            f"({1 - sum(a.expected[s]) / sum(o.expected[s]):.2f})"
            for s in (early, late)
        ]
        print(f"  {name:<11} {span[0]}: {parts[0]:<14} {span[1]}: {parts[1]}")
    a, o = arms[SEGUE], arms[ORACLE]
    gaps = [1 - sum(a.expected[s]) / sum(o.expected[s]) for s in (early, late)]
    share = np.array(a.expected) / np.array(o.expected)
    trend = float(np.polyfit(np.arange(rounds), share, 1)[0]) * 10 if rounds > 1 else 0.0
    # Within two points either way is noise between runs, not a trend.
    verdict = (
        "shrinking"
        if gaps[1] < gaps[0] - 0.02
        else "growing"
        if gaps[1] > gaps[0] + 0.02
        else "flat (not shrinking)"
    )
    print(
        f"Segue's gap to the oracle is {verdict}: expected reward, first vs last third "
        f"{gaps[0]:.2f} -> {gaps[1]:.2f}; share of the oracle's per round, least-squares trend "
        f"{trend:+.3f} per 10 rounds"
    )


def plot(arms: dict[str, Arm], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    style: dict[str, dict[str, Any]] = {
        RANDOM: {"color": "grey"},
        POPULARITY: {"color": "tab:orange"},
        POP_ALL: {"color": "tab:orange", "linestyle": "--", "alpha": 0.6},
        SEGUE: {"color": "tab:blue", "linewidth": 2},
        ORACLE: {"color": "tab:green"},
    }
    rounds = np.arange(1, len(arms[ORACLE].reward) + 1)
    for name in ARMS:
        a = arms[name]
        ax1.plot(rounds, np.array(a.reward) / np.array(a.slates), label=name, **style[name])
        ax2.plot(rounds, np.cumsum(a.reward), label=name, **style[name])
        if name != ORACLE:
            share = np.array(a.expected) / np.array(arms[ORACLE].expected)
            ax3.plot(rounds, share, label=name, **style[name])
    ax1.set(xlabel="round (day)", ylabel="realised reward per slate", title="reward per round")
    ax2.set(xlabel="round (day)", ylabel="realised reward", title="cumulative reward")
    ax3.set(xlabel="round (day)", ylabel="policy / oracle", title="share of the oracle's reward")
    ax3.set_title("share of the oracle's expected reward, per round")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title + "   reward = streams + saves - skips")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)


def static_popular_share(world: World, n: int) -> float:
    """How much of the oracle's expected reward the one best non-personal slate would get
    (day 1, nothing streamed yet): how much there is to gain by personalising."""
    values = np.array([item_values(world, u) for u in range(world.config.listeners)])
    values[:, ~world.released(0)] = -np.inf
    looked = (np.arange(n) + 1.0) ** -world.config.position_decay
    best = np.sort(values, axis=1)[:, ::-1][:, :n] @ looked
    popular = np.argsort(-values.mean(axis=0))[:n]
    return float((values[:, popular] @ looked).mean() / best.mean())


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_url_argument(ap)
    ap.add_argument("--quick", action="store_true", help="80 listeners, 300 items, 10 rounds")
    ap.add_argument("--listeners", type=int, default=200)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--active", type=float, default=0.5, help="share of listeners active a day")
    ap.add_argument("--n", type=int, default=10, help="slate size")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rebuild-every", type=int, default=1, help="rounds between index builds")
    ap.add_argument(
        "--settle",
        type=float,
        default=10.5,
        help="least seconds between the projections catching up and the next round",
    )
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--taste-scale", type=float, default=SimConfig().taste_scale)
    ap.add_argument("--quality-sd", type=float, default=SimConfig().quality_sd)
    ap.add_argument(
        "--content-noise",
        type=float,
        default=None,
        help="give items content vectors: their latent direction blurred by this much "
        "(default: none, Segue learns from behaviour alone)",
    )
    ap.add_argument("--plot", type=Path, default=OUT / "closed_loop.png")
    args = ap.parse_args()
    if args.quick:
        args.listeners, args.items, args.rounds = 80, 300, 10

    config = SimConfig(
        listeners=args.listeners,
        items=args.items,
        artists=max(1, args.items // 5),
        shows=max(1, args.items // 25),
        taste_scale=args.taste_scale,
        quality_sd=args.quality_sd,
        released_at_start=0.6,
        release_days=max(1, args.rounds - 1),
    )
    world = make_world(config, np.random.default_rng(args.seed))
    item_row = world.item_index()
    vectors = (
        None
        if args.content_noise is None
        else content_vectors(world, args.content_noise, generator(args.seed, CONTENT, 0, 0))
    )
    print(
        f"world: {config.listeners} listeners ({args.active:.0%} active a day), "
        f"{config.items} items ({int(world.is_episode.sum())} episodes, "
        f"{int(world.released(0).sum())} out on day 1), {config.genres} genres "
        f"(listeners per genre {np.bincount(world.listener_genres, minlength=config.genres)}), "
        f"taste_scale {config.taste_scale}, quality_sd {config.quality_sd}, seed {args.seed}; "
        + (
            "no content vectors"
            if args.content_noise is None
            else f"content vectors with noise {args.content_noise}"
        )
    )
    print(
        "the best non-personal slate is worth "
        f"{static_popular_share(world, args.n):.0%} of the oracle's on day 1"
    )
    arms = {name: Arm(name, config.listeners, config.items) for name in ARMS}
    policies = {
        RANDOM: random_policy(world, arms[RANDOM], args.n, args.seed),
        POPULARITY: popularity_policy(world, arms[POPULARITY], args.n, args.seed),
        POP_ALL: popularity_policy(world, arms[POP_ALL], args.n, args.seed),
        ORACLE: oracle_policy(world, arms[ORACLE], args.n),
    }

    started = time.perf_counter()
    async with throwaway_database(args.url) as url:
        key = await bench_key(url)
        with tempfile.TemporaryDirectory(prefix="segue-closed-loop-") as data_dir:
            settings = {
                "SEGUE_DATA_DIR": data_dir,
                # The bench asks for builds itself, at the end of a day; no scheduled ones.
                "SEGUE_INDEX_BUILD_INTERVAL_SECONDS": "86400",
                "SEGUE_INDEX_MIN_NEW_EVENTS": "1000000000",
                "SEGUE_RATE_LIMIT_PER_SECOND": "100000",
                "SEGUE_RATE_LIMIT_BURST": "100000",
            }
            async with serving(url, key, timeout=120, settings=settings) as client:
                print(
                    "reward per slate, by round; Segue's slates: share in the oracle's slate, "
                    "slates explored (positions drawn at random), items already streamed, short "
                    "slates, items released that day"
                )
                print(
                    f"{'round':>5} " + " ".join(f"{a:>10}" for a in ARMS) + "   "
                    f"{'∩oracle':>7} {'explored':>8} {'repeats':>7} {'short':>5} {'fresh':>5}"
                    f"  {'index':<22} {'s':>5}"
                )
                for day in range(args.rounds):
                    active = active_listeners(world, day, args.seed, args.active)
                    # as at the start of the day
                    everyone = np.sum([a.counts for a in arms.values()], axis=0)
                    for arm_name, policy in policies.items():
                        arm = arms[arm_name]
                        counts = (everyone if arm_name == POP_ALL else arm.counts).copy()
                        arm.day_returns(world, day, args.seed)
                        run_local_day(world, arm, policy, counts, day, args.seed, active)
                    stats = await run_segue_day(
                        client,
                        world,
                        arms[SEGUE],
                        day,
                        args.seed,
                        args.n,
                        active,
                        args.concurrency,
                        item_row,
                        vectors,
                    )
                    await caught_up(client)
                    settled = time.monotonic() + args.settle
                    last = day + 1 == args.rounds
                    served_index = (await index_status(client))["version"]
                    if (day + 1) % args.rebuild_every == 0 and not last:
                        await rebuild(client)
                    if not last:
                        await asyncio.sleep(max(0.0, settled - time.monotonic()))
                    row = " ".join(
                        f"{arms[a].reward[-1] / max(1, len(active)):>10.3f}" for a in ARMS
                    )
                    print(
                        f"{day + 1:>5} {row}   {stats.overlap:>7.2f} {stats.explored:>8} "
                        f"{stats.repeats:>7} {stats.short:>5} {stats.fresh:>5}  "
                        f"{served_index or '-':<22} {stats.seconds:>5.1f}",
                        flush=True,
                    )

    summarise(arms, args.rounds)
    plot(
        arms,
        args.plot,
        f"closed loop: {config.listeners} listeners ({args.active:.0%} a day), "
        f"{config.items} items, {args.rounds} rounds, n={args.n}, seed {args.seed}.",
    )
    print(f"plot: {args.plot}   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
