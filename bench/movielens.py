"""MovieLens-100K through the real gateway: HR@10 and NDCG@10 of `POST /v1/recommendations`,
beside a popularity baseline and an exact in-memory factorisation computed in the same run.

    python bench/movielens.py [--url postgresql://...] [--wheel recbole-1.2.1-py3-none-any.whl]

The data ships inside the `recbole==1.2.1` wheel; it is fetched with `pip download --no-deps` into
a temporary folder at run time (or read from --wheel) and never written anywhere else.

Protocol (leave-last-out by time): each user's latest rating (ties broken by file order) is held
out; everything else is training data. The bench starts a real `segue serve` on a fresh database
(SEGUE_RUN_INDEX_BUILDER=false, so the bench decides when the index is built; SEGUE_DATA_DIR a
temporary folder), upserts the 1,682 movies as catalogue items (kind `track`: the gateway is for
music and podcasts, and a film watched is a track played), replays the training interactions
through `POST /v1/outcomes` in time order (1,000 per request), waits until every projection has
caught up (`lag_events == 0` in `/v1/admin/status`), asks for an index build, waits until it is
served, then asks `POST /v1/recommendations` (surface `home`, which filters what the listener
already streamed; n=10) once for every user and scores the held-out item.

Outcome mapping (every rating is an interaction; higher ratings say more):

    any rating   stream_30s                    affinity weight 1
    rating >= 4  + like                        affinity weight 2
    rating == 5  + save                        affinity weight 4

(weights from the default reward definition: stream_30s 1, like 1, save 2). MovieLens dates
are from 1997-98; the gateway refuses `occurred_at` before 2000, so every timestamp is shifted
by one constant offset that puts the latest rating an hour before the run.

Baselines, on the same split: popularity (the most-rated training items the user has not rated)
and the gateway's own factorisation fitted in memory (`domain.embeddings.fit_als` on the same
weights with the gateway's default `IndexParams().als`, solved exactly in numpy where the
gateway uses the `implicit` library's conjugate gradient) ranked exactly (all dot products, seen
items excluded). The gateway differs from the latter by Annoy's approximate search over its
200 nearest candidates, the policy's reward terms, and its exploration (by default 3% of
slates uniformly random, 7% with their last three positions re-drawn). So the gateway's greedy
slates alone are scored too, beside the in-memory factorisation on the same users, with the
share of items the two top 10s have in common (the gateway fits on its own id order, so its
factors differ slightly).

The gateway's model also turns each listener's vector towards what they played last
(`domain.recency`, the `SEGUE_POLICY_RECENCY_*` settings). Two in-memory references of that
model are printed: "ALS + recency" on the exact solve, and the "in-memory twin" on the solver
the gateway's index builder uses (`implicit`), which is what the gateway's slates are compared
with. Both take each user's latest training items in the order the listeners projection keeps
them (latest first, ties on the timestamp by item id, largest first). A slate counts as greedy
when every item carries a propensity of at least one half (an explored slate has drawn items,
at epsilon / N or so); with `SEGUE_POLICY_EPSILON=0 SEGUE_POLICY_TAIL_EPSILON=0` every slate is.

The policy is the one `SEGUE_POLICY_*` select in the bench's environment (the gateway inherits
it). The training interactions are organic (no slate caused them), so no item has a reward
posterior when the test requests begin; those requests then serve slates whose outcomes (the
held-out items) are never reported, and a refresh in the middle of them would lower the items
served so far (their posteriors narrow around zero, and optimism rewards width), so that a
slow run would be scored on another ranking than a fast one. The bench's gateway therefore
refreshes item scores once, at start (`SEGUE_SCORES_REFRESH_SECONDS`, default here 3600), and
every listener is ranked on the same state: the one training left.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from domain.embeddings import AlsParams, Factors, fit_als
from domain.events import OutcomeKind
from domain.recency import RecencyParams, blend, recency_vector
from domain.rewards import DEFAULT
from gateway.analysis.wheels import fetch_wheel
from gateway.client import SegueClient, outcome
from gateway.index.build import IndexParams
from gateway.settings import Settings

from _common import add_url_argument, bench_key, quantile, serving, throwaway_database

WHEEL = "recbole==1.2.1"
INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEMS = "recbole/dataset_example/ml-100k/ml-100k.item"
NAMESPACE = uuid.UUID("5d0c8f3e-6a41-4b7e-9f2d-1c3b5a7e9d08")
K = 10
BATCH = 1000


@dataclass(frozen=True, slots=True)
class Rating:
    user: str
    item: str
    rating: float
    ts: int


@dataclass(frozen=True, slots=True)
class Split:
    train: list[Rating]  # in time order
    test: dict[str, str]  # user -> held-out item
    items: dict[str, dict[str, Any]]  # every movie -> catalogue attributes


@dataclass(frozen=True, slots=True)
class Score:
    hr: float
    ndcg: float
    users: int


# --- data ------------------------------------------------------------------------------------


def read_wheel(wheel: Path) -> tuple[list[Rating], dict[str, dict[str, Any]]]:
    with zipfile.ZipFile(wheel) as z:
        inter = z.read(INTER).decode().splitlines()
        movies = z.read(ITEMS).decode("latin-1").splitlines()
    ratings = []
    for line in inter[1:]:
        user, item, rating, ts = line.split("\t")
        ratings.append(Rating(user, item, float(rating), int(float(ts))))
    items: dict[str, dict[str, Any]] = {}
    for line in movies[1:]:
        item, title, year, genres = [*line.split("\t"), "", "", ""][:4]
        attributes: dict[str, Any] = {"title": title, "genres": genres.split()}
        if year.isdigit():
            attributes["year"] = int(year)
        items[item] = attributes
    for r in ratings:
        items.setdefault(r.item, {})
    return ratings, items


def leave_last_out(ratings: Sequence[Rating], items: dict[str, dict[str, Any]]) -> Split:
    """Each user's latest rating is the test item; ties on the timestamp go to file order."""
    last: dict[str, int] = {}
    for i, r in enumerate(ratings):
        j = last.get(r.user)
        if j is None or r.ts >= ratings[j].ts:
            last[r.user] = i
    held = set(last.values())
    train = sorted(
        (r for i, r in enumerate(ratings) if i not in held), key=lambda r: (r.ts, r.user, r.item)
    )
    return Split(train=train, test={u: ratings[i].item for u, i in last.items()}, items=items)


def outcome_kinds(r: Rating) -> list[OutcomeKind]:
    """The outcomes one rating is replayed as (see the module docstring)."""
    kinds = [OutcomeKind.STREAM_30S]
    if r.rating >= 4:
        kinds.append(OutcomeKind.LIKE)
    if r.rating >= 5:
        kinds.append(OutcomeKind.SAVE)
    return kinds


def affinity_weight(r: Rating) -> float:
    """What the gateway's affinity projection will hold for this rating."""
    return float(sum((DEFAULT.weight(k, None) for k in outcome_kinds(r)), Decimal(0)))


# --- metrics and baselines -------------------------------------------------------------------


def evaluate(slates: Mapping[str, Sequence[str]], test: Mapping[str, str]) -> Score:
    """HR@10 and NDCG@10 of the held-out item over every test user (a missing slate scores 0)."""
    hits = 0
    gain = 0.0
    for user, item in test.items():
        slate = list(slates.get(user, ()))[:K]
        if item in slate:
            hits += 1
            gain += 1.0 / math.log2(slate.index(item) + 2)
    n = len(test)
    return Score(hits / n, gain / n, n)


def seen_by_user(train: Sequence[Rating]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for r in train:
        seen.setdefault(r.user, set()).add(r.item)
    return seen


def popularity(split: Split) -> dict[str, list[str]]:
    """The most-rated training items each user has not rated."""
    counts = Counter(r.item for r in split.train)
    ranked = sorted(split.items, key=lambda i: (-counts[i], i))
    seen = seen_by_user(split.train)
    out = {}
    for user in split.test:
        mine = seen.get(user, set())
        slate: list[str] = []
        for item in ranked:
            if item not in mine:
                slate.append(item)
                if len(slate) == K:
                    break
        out[user] = slate
    return out


@dataclass(frozen=True)
class Matrix:
    """The training interactions as (user, item, weight) triples of dense indices."""

    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    weights: NDArray[np.float64]
    users: list[str]
    items: list[str]


def training_matrix(split: Split) -> Matrix:
    """The same weights the gateway learns from (`affinity_weight` summed per user and item)."""
    users = sorted({r.user for r in split.train})
    items = sorted(split.items)
    u_row = {u: i for i, u in enumerate(users)}
    i_row = {it: i for i, it in enumerate(items)}
    weights: dict[tuple[int, int], float] = {}
    for r in split.train:
        key = (u_row[r.user], i_row[r.item])
        weights[key] = weights.get(key, 0.0) + affinity_weight(r)
    return Matrix(
        np.array([k[0] for k in weights], dtype=np.int64),
        np.array([k[1] for k in weights], dtype=np.int64),
        np.array(list(weights.values()), dtype=np.float64),
        users,
        items,
    )


def top_k(scores: NDArray[np.float64], m: Matrix, split: Split) -> dict[str, list[str]]:
    """Each held-out user's K best items by `scores`, what they rated in training excluded."""
    scores = scores.copy()
    scores[m.rows, m.cols] = -np.inf
    u_row = {u: i for i, u in enumerate(m.users)}
    out: dict[str, list[str]] = {}
    for user in split.test:
        row = u_row.get(user)
        if row is None:
            out[user] = []
            continue
        top = np.argpartition(-scores[row], K)[:K]
        top = top[np.argsort(-scores[row][top])]
        out[user] = [m.items[int(i)] for i in top]
    return out


def fit(split: Split, params: AlsParams) -> tuple[Matrix, Factors]:
    """`fit_als` on the same weights the gateway learns from."""
    m = training_matrix(split)
    return m, fit_als(m.rows, m.cols, m.weights, len(m.users), len(m.items), params)


def factorisation(m: Matrix, factors: Factors, split: Split) -> dict[str, list[str]]:
    """The fitted factorisation ranked exactly, seen excluded."""
    return top_k(factors.users @ factors.items.T, m, split)


def with_recency(
    m: Matrix, factors: Factors, split: Split, recency: RecencyParams
) -> dict[str, list[str]]:
    """The same factorisation, each listener's vector turned towards what they rated last
    (`domain.recency`, as the gateway serves it), ranked exactly, seen excluded. The order is
    the projection's: latest first, ties on the timestamp by item id, last id first."""
    u_row = {u: i for i, u in enumerate(m.users)}
    i_row = {it: i for i, it in enumerate(m.items)}
    latest: dict[str, list[int]] = {}
    for r in reversed(split.train):
        mine = latest.setdefault(r.user, [])
        row = i_row[r.item]
        if len(mine) < recency.items and row not in mine:
            mine.append(row)
    vectors = factors.users.copy()
    scale = float(np.median(np.linalg.norm(factors.users, axis=1)))
    for user, rows in latest.items():
        # Every rating is a positive outcome here (see `outcome_kinds`).
        recent = recency_vector(factors.items, np.array(rows), np.ones(len(rows)), recency)
        served = blend(vectors[u_row[user]], recent, recency, scale)
        if served is not None:
            vectors[u_row[user]] = served
    return top_k(vectors @ factors.items.T, m, split)


# --- the gateway -----------------------------------------------------------------------------


async def call(client: SegueClient, method: str, path: str, body: Any = None) -> Any:
    """One request; the client resends it after a 429 or 503 (resending is always safe)."""
    return await client.request(method, path, json=body)


@dataclass
class GatewayRun:
    slates: dict[str, list[str]]
    greedy: set[str]  # users served the greedy slate (neither exploring variant)
    timings: dict[str, float]
    outcomes: int
    latencies: list[float]
    index: dict[str, Any]


async def wait_for(
    client: SegueClient, done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while True:
        status: dict[str, Any] = await call(client, "GET", "/v1/admin/status")
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {status}")
        await asyncio.sleep(0.5)  # polling another process's progress


async def through_gateway(split: Split, url: str, concurrency: int) -> GatewayRun:
    timings: dict[str, float] = {}
    async with throwaway_database(url) as db:
        key = await bench_key(db)
        with tempfile.TemporaryDirectory(prefix="segue-movielens-") as data_dir:
            settings = {
                "SEGUE_DATA_DIR": data_dir,
                "SEGUE_RUN_INDEX_BUILDER": "false",
                # One refresh, at start, while nothing has been served: every listener is then
                # ranked on the same posteriors (see the docstring).
                "SEGUE_SCORES_REFRESH_SECONDS": os.environ.get(
                    "SEGUE_SCORES_REFRESH_SECONDS", "3600"
                ),
            }
            async with serving(db, key, timeout=120, settings=settings) as client:
                return await _drive(client, split, concurrency, timings)


async def _drive(
    client: SegueClient, split: Split, concurrency: int, timings: dict[str, float]
) -> GatewayRun:
    started = time.perf_counter()
    catalogue = [
        {"item_id": item, "kind": "track", "attributes": attrs}
        for item, attrs in sorted(split.items.items())
    ]
    for i in range(0, len(catalogue), BATCH):
        await call(client, "POST", "/v1/items", {"items": catalogue[i : i + BATCH]})
    timings["catalogue"] = time.perf_counter() - started

    # Shift 1997-98 to the recent past: one constant offset, latest rating an hour ago.
    latest = max(r.ts for r in split.train)
    offset = (datetime.now(UTC) - timedelta(hours=1)).timestamp() - latest
    wire = [
        outcome(
            r.user,
            r.item,
            kind.value,
            occurred_at=datetime.fromtimestamp(r.ts + offset, UTC),
            event_id=uuid.uuid5(NAMESPACE, f"{r.user}/{r.item}/{kind.value}"),
        )
        for r in split.train
        for kind in outcome_kinds(r)
    ]
    batches = [wire[i : i + BATCH] for i in range(0, len(wire), BATCH)]
    accepted = 0
    gate = asyncio.Semaphore(4)

    async def post(body: list[dict[str, Any]]) -> None:
        nonlocal accepted
        async with gate:
            result = await call(client, "POST", "/v1/outcomes", {"outcomes": body})
            accepted += int(result["accepted"])

    started = time.perf_counter()
    await asyncio.gather(*(post(b) for b in batches))
    timings["replay"] = time.perf_counter() - started
    if accepted != len(wire):
        raise RuntimeError(f"{accepted} of {len(wire)} outcomes accepted")

    started = time.perf_counter()
    await wait_for(
        client,
        lambda s: (
            all(p["lag_events"] == 0 for p in s["projections"])
            and {"listeners", "rewards"} <= {p["name"] for p in s["projections"]}
        ),
        "the projections",
    )
    timings["catch_up"] = time.perf_counter() - started

    started = time.perf_counter()
    await call(client, "POST", "/v1/admin/index/rebuild")
    status = await wait_for(
        client,
        lambda s: s["index"]["version"] is not None and not s["index"]["building"],
        "the index",
    )
    timings["index"] = time.perf_counter() - started
    if status["index"]["error"]:
        raise RuntimeError(f"index build failed: {status['index']['error']}")

    slates: dict[str, list[str]] = {}
    greedy: set[str] = set()
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def recommend(user: str) -> None:
        async with gate:
            t0 = time.perf_counter()
            rec = await call(
                client,
                "POST",
                "/v1/recommendations",
                {"user_id": user, "surface": "home", "n": K},
            )
            latencies.append(time.perf_counter() - t0)
        items = sorted(rec["items"], key=lambda x: x["position"])
        slates[user] = [x["item_id"] for x in items]
        # Every item of a greedy slate carries propensity at least 1 - epsilon - tail_epsilon
        # (its greedy position); an explored slate has drawn items, at epsilon / N or
        # tail_epsilon / (N - head) plus that.
        if all(x["propensity"] >= 0.5 for x in items):
            greedy.add(user)

    started = time.perf_counter()
    await asyncio.gather(*(recommend(u) for u in sorted(split.test, key=int)))
    timings["recommend"] = time.perf_counter() - started
    return GatewayRun(slates, greedy, timings, len(wire), latencies, status["index"])


# --- main ------------------------------------------------------------------------------------


def line(label: str, s: Score, extra: str = "") -> str:
    return f"{label:<34} HR@10 {s.hr:.4f}   NDCG@10 {s.ndcg:.4f}   ({s.users} users){extra}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_url_argument(ap)
    ap.add_argument("--wheel", type=Path, help="a downloaded recbole-1.2.1 wheel (else fetched)")
    ap.add_argument("--concurrency", type=int, default=8, help="recommendations in flight")
    args = ap.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segue-ml100k-") as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp), WHEEL)
        ratings, items = read_wheel(wheel)
    split = leave_last_out(ratings, items)
    fetched = time.perf_counter() - started
    print(
        f"MovieLens-100K: {len(ratings):,} ratings, {len(split.test)} users, {len(items):,} items;"
        f" leave-last-out: {len(split.train):,} training, {len(split.test)} held out"
        f" ({fetched:.1f} s to fetch and split)"
    )

    started = time.perf_counter()
    pop = evaluate(popularity(split), split.test)
    pop_s = time.perf_counter() - started
    als = IndexParams().als
    # The baseline is the exact solve; the gateway's index builder uses `als.solver` (the
    # `implicit` library's conjugate gradient), so the two also compare the solvers.
    als = replace(als, solver="numpy")
    started = time.perf_counter()
    matrix, factors = fit(split, als)
    exact_slates = factorisation(matrix, factors, split)
    exact = evaluate(exact_slates, split.test)
    als_s = time.perf_counter() - started
    # The policy the gateway will serve (it inherits the environment's SEGUE_POLICY_*).
    policy = Settings().policy
    recent_slates = with_recency(matrix, factors, split, policy.recency)
    recent = evaluate(recent_slates, split.test)
    # The same model with the gateway's own solver: the closest in-memory twin of what it serves.
    gateway_als = IndexParams().als
    twin_matrix, twin_factors = fit(split, gateway_als)
    twin_slates = with_recency(twin_matrix, twin_factors, split, policy.recency)
    if not policy.recency.enabled:
        twin_slates = factorisation(twin_matrix, twin_factors, split)
    twin = evaluate(twin_slates, split.test)

    run = asyncio.run(through_gateway(split, args.url, args.concurrency))
    gateway = evaluate(run.slates, split.test)
    greedy_users = {u: i for u, i in split.test.items() if u in run.greedy}
    greedy = evaluate(run.slates, greedy_users)
    reference = twin_slates
    reference_greedy = evaluate(reference, greedy_users)
    agreement = statistics.fmean(
        len(set(run.slates.get(u, ())) & set(reference[u])) / K for u in greedy_users
    )
    t = run.timings

    print(
        f"ALS params (IndexParams().als, used by both): factors {als.factors}, "
        f"iterations {als.iterations}, regularization {als.regularization}, alpha {als.alpha}, "
        f"seed {als.seed}; solver: gateway {IndexParams().als.solver}, in memory {als.solver}"
    )
    r = policy.recency
    print(
        f"policy {policy.name} {policy.logged_version}: epsilon {policy.epsilon}, tail_epsilon "
        f"{policy.tail_epsilon}; recency blend {r.blend}, decay {r.decay}, floor {r.floor}, "
        f"items {r.items}"
    )
    print(line("popularity (unseen, exact)", pop, f"   {pop_s:.2f} s"))
    print(line("ALS in memory (exact top 10)", exact, f"   fit+rank {als_s:.1f} s"))
    print(line("ALS + recency in memory", recent, f"   (solver {als.solver})"))
    print(
        line(
            "in-memory twin of the gateway",
            twin,
            f"   (solver {gateway_als.solver}; recency blend {policy.recency.blend})",
        )
    )
    print(line("segue gateway (home, n=10)", gateway, "   all slates, exploration as set"))
    print(
        line(
            "  gateway, greedy slates only",
            greedy,
            f"   ({len(split.test) - len(run.greedy)} of {len(split.test)} slates explored)",
        )
    )
    print(
        line(
            "  in-memory twin, same users",
            reference_greedy,
            f"   (greedy slates share {agreement:.1%} of its items)",
        )
    )
    print(
        f"gateway timings: catalogue {t['catalogue']:.1f} s; replay {run.outcomes:,} outcomes "
        f"in {t['replay']:.1f} s ({run.outcomes / t['replay']:,.0f}/s); projections caught up "
        f"{t['catch_up']:.1f} s later; index build {t['index']:.1f} s "
        f"(recall@10 {run.index['recall_at_10']:.3f}, {run.index['items']} items); "
        f"{len(run.latencies)} recommendations in {t['recommend']:.1f} s "
        f"(p50 {statistics.median(run.latencies) * 1000:.0f} ms, "
        f"p99 {quantile(run.latencies, 0.99) * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
