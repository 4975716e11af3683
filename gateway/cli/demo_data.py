"""Demo data: a small synthetic catalogue of tracks and podcast episodes, a little organic
listening history, and a few days of slates served by the real policy with the outcomes a small
listener model gives them. Seeded, so that every run produces the same data as far as the policy
allows, and re-seeding adds nothing."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from domain.events import ItemUpserted, OutcomeKind, RecommendationServed
from gateway.http.appkeys import CATALOG, OUTCOMES, POOL, RECOMMENDER
from gateway.serving.outcomes import OutcomeRecorder
from gateway.serving.recommendations import Recommender
from gateway.serving.requests import ItemKind, OutcomeIn, OutcomesIn, RecommendationIn, Surface
from gateway.store import reads

GENRES = ("indie", "jazz", "techno", "folk", "hip-hop", "classical", "ambient", "soul")
TOPICS = ("science", "history", "comedy", "news", "true-crime", "sport", "tech")
_NAMESPACE = uuid.UUID("5e6f1b1a-9d2b-4a57-8f4e-2d4c1c6a7b10")

SLATE_DAYS = 7
SLATES_PER_DAY = 16  # per surface
SEARCH_CANDIDATES = 20


class DemoClock:
    """The demo gateway's clock: the real time, except inside `at(t)`, where it reads `t`.

    The demo serves its past days' slates through the real policy while the gateway is starting
    (before it listens), with the clock set to each slate's simulated request time, so that
    `RecommendationServed.requested_at` says when the slate was (notionally) asked for. The
    store's own `recorded_at` stays the real time of writing."""

    def __init__(self, real: Callable[[], datetime] | None = None) -> None:
        self._real = real or (lambda: datetime.now(UTC))
        self._at: datetime | None = None

    def __call__(self) -> datetime:
        return self._at if self._at is not None else self._real()

    @contextmanager
    def at(self, when: datetime) -> Iterator[None]:
        self._at = when
        try:
            yield
        finally:
            self._at = None


def demo_items(count: int, seed: int = 7) -> list[ItemUpserted]:
    rng = random.Random(seed)
    items: list[ItemUpserted] = []
    for i in range(count):
        if i % 4 == 3:
            show = f"show-{i % 23}"
            items.append(
                ItemUpserted(
                    item_id=f"ep-{i:05d}",
                    kind="episode",
                    attributes={
                        "title": f"Episode {i}",
                        "show": show,
                        "topic": rng.choice(TOPICS),
                        "duration_s": rng.randint(900, 5400),
                    },
                )
            )
        else:
            items.append(
                ItemUpserted(
                    item_id=f"tr-{i:05d}",
                    kind="track",
                    attributes={
                        "title": f"Track {i}",
                        "artist": f"artist-{i % 97}",
                        "genre": rng.choice(GENRES),
                        "duration_s": rng.randint(120, 420),
                    },
                )
            )
    return items


def _organic(
    items: list[ItemUpserted], users: int, now: datetime, seed: int
) -> tuple[list[frozenset[str]], list[OutcomeIn]]:
    """Every listener's taste (the items their organic listening is drawn from) and that
    listening."""
    rng = random.Random(seed)
    tastes: list[frozenset[str]] = []
    out: list[OutcomeIn] = []
    for u in range(users):
        taste = rng.sample(range(len(items)), k=min(40, len(items)))
        tastes.append(frozenset(items[i].item_id for i in taste))
        for j in range(rng.randint(5, 30)):
            item = items[rng.choice(taste)]
            kind = rng.choice(
                [
                    OutcomeKind.STREAM_30S,
                    OutcomeKind.STREAM_30S,
                    OutcomeKind.COMPLETE,
                    OutcomeKind.SKIP,
                    OutcomeKind.SAVE,
                ]
            )
            out.append(
                OutcomeIn(
                    event_id=uuid.uuid5(_NAMESPACE, f"{seed}/{u}/{j}"),
                    user_id=f"user-{u}",
                    item_id=item.item_id,
                    kind=kind,
                    occurred_at=(now - timedelta(days=rng.uniform(0, 28))).astimezone(UTC),
                    value=float(rng.randint(1_000, 300_000)),
                )
            )
    return tastes, out


def demo_history(
    items: list[ItemUpserted], users: int, now: datetime, seed: int = 11
) -> list[OutcomeIn]:
    """A few weeks of organic listening; event ids are derived from the seed, so re-seeding only
    produces duplicates (which the gateway ignores)."""
    return _organic(items, users, now, seed)[1]


def demo_tastes(items: list[ItemUpserted], users: int, seed: int = 11) -> list[frozenset[str]]:
    """The items each listener's organic history (`demo_history` with the same seed) is drawn
    from, by listener number."""
    return _organic(items, users, datetime(2000, 1, 1, tzinfo=UTC), seed)[0]


# --- the listener model ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listener:
    """A demo listener's taste: some items, and the genres and topics most common among them."""

    user_id: str
    items: frozenset[str]
    genres: frozenset[str]
    topics: frozenset[str]

    def appeal(self, item: ItemUpserted) -> float:
        """The probability of streaming the item once looked at."""
        if item.item_id in self.items:
            return 0.6
        if item.attributes.get("genre") in self.genres or item.attributes.get("topic") in (
            self.topics
        ):
            return 0.3
        return 0.04


def listeners(items: list[ItemUpserted], tastes: list[frozenset[str]]) -> list[Listener]:
    by_id = {i.item_id: i for i in items}
    out = []
    for u, taste in enumerate(tastes):
        genres = Counter(str(by_id[i].attributes["genre"]) for i in taste if i.startswith("tr-"))
        topics = Counter(str(by_id[i].attributes["topic"]) for i in taste if i.startswith("ep-"))
        out.append(
            Listener(
                user_id=f"user-{u}",
                items=taste,
                # Ties broken by name, so the favourites do not depend on set iteration order.
                genres=frozenset(g for g, _ in sorted(genres.items(), key=_most)[:2]),
                topics=frozenset(t for t, _ in sorted(topics.items(), key=_most)[:1]),
            )
        )
    return out


def _most(entry: tuple[str, int]) -> tuple[int, str]:
    return -entry[1], entry[0]


@dataclass(frozen=True, slots=True)
class Response:
    item_id: str
    kind: OutcomeKind
    after: timedelta  # since the slate was served
    value: float


def respond(listener: Listener, slate: list[ItemUpserted], rng: random.Random) -> list[Response]:
    """What a listener does with a slate: position k is looked at with probability
    (k + 1) ** -0.7; an item looked at is streamed with its `appeal` (and then maybe completed
    or saved), or else skipped with probability 0.4."""
    out: list[Response] = []
    elapsed = timedelta(seconds=rng.uniform(2, 20))
    for k, item in enumerate(slate):
        looked, streamed, further = rng.random(), rng.random(), rng.random()
        if looked >= (k + 1) ** -0.7:
            continue
        p = listener.appeal(item)
        duration = float(item.attributes.get("duration_s", 200)) * 1000
        if streamed < p:
            out.append(
                Response(
                    item.item_id, OutcomeKind.STREAM_30S, elapsed, rng.uniform(30_000, duration)
                )
            )
            elapsed += timedelta(seconds=rng.uniform(30, 240))
            if further < p * 0.8:
                out.append(Response(item.item_id, OutcomeKind.COMPLETE, elapsed, duration))
            elif further > 1 - p * 0.3:
                out.append(Response(item.item_id, OutcomeKind.SAVE, elapsed, 0.0))
        elif further < 0.4:
            out.append(
                Response(item.item_id, OutcomeKind.SKIP, elapsed, rng.uniform(1_000, 25_000))
            )
            elapsed += timedelta(seconds=rng.uniform(2, 25))
    return out


# --- served slates --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlateRequest:
    recommendation_id: uuid.UUID
    at: datetime
    listener: Listener
    request: RecommendationIn


def slate_requests(
    items: list[ItemUpserted],
    people: list[Listener],
    now: datetime,
    days: int = SLATE_DAYS,
    per_day: int = SLATES_PER_DAY,
    seed: int = 13,
) -> list[SlateRequest]:
    """`per_day` requests a day on each of home, podcasts (episodes only), music and search (a
    rerank of the tracks of a genre), on each of the `days` whole UTC days before the day of
    `now`, in time order."""
    rng = random.Random(seed)
    by_genre: dict[str, list[str]] = {}
    for item in items:
        if item.kind == "track":
            by_genre.setdefault(str(item.attributes["genre"]), []).append(item.item_id)
    out: list[SlateRequest] = []
    number = 0
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for day in range(days, 0, -1):
        for surface in (Surface.HOME, Surface.PODCASTS, Surface.MUSIC, Surface.SEARCH):
            for _ in range(per_day):
                listener = rng.choice(people)
                # Whole UTC days before today's: every day of the report has all its slates.
                at = today - timedelta(days=day) + timedelta(hours=rng.uniform(0.1, 23.5))
                request = _request(surface, listener, by_genre, rng)
                if request is None:
                    continue
                rid = uuid.uuid5(_NAMESPACE, f"slate/{seed}/{number}")
                number += 1
                out.append(SlateRequest(rid, at, listener, request))
    return sorted(out, key=lambda r: (r.at, r.recommendation_id))


def _request(
    surface: Surface, listener: Listener, by_genre: dict[str, list[str]], rng: random.Random
) -> RecommendationIn | None:
    if surface is Surface.HOME:
        return RecommendationIn(user_id=listener.user_id, surface=surface, n=6)
    if surface is Surface.PODCASTS:
        return RecommendationIn(
            user_id=listener.user_id, surface=surface, n=4, kinds=[ItemKind.EPISODE]
        )
    if surface is Surface.MUSIC:
        return RecommendationIn(user_id=listener.user_id, surface=surface, n=6)
    if not by_genre:
        return None
    # A listener mostly searches for what they like.
    liked = sorted(listener.genres & by_genre.keys())
    genre = rng.choice(liked) if liked and rng.random() < 0.7 else rng.choice(sorted(by_genre))
    tracks = by_genre[genre]
    candidates = rng.sample(tracks, min(SEARCH_CANDIDATES, len(tracks)))
    return RecommendationIn(
        user_id=listener.user_id,
        surface=surface,
        n=5,
        candidates=candidates,
        context={"query": genre},
    )


async def served_any(pool: asyncpg.Pool) -> bool:
    """Whether the store holds any served slate."""
    return await reads.any_of_type(pool, RecommendationServed.TYPE)


async def seed_slates(
    recommender: Recommender,
    recorder: OutcomeRecorder,
    clock: DemoClock,
    items: list[ItemUpserted],
    requests: list[SlateRequest],
) -> tuple[int, int]:
    """Serve every request through the policy at its time, and record what the listener model
    does with each slate (one batch of outcomes a simulated day, after that day's slates).
    Returns (slates served, outcomes accepted)."""
    by_id = {i.item_id: i for i in items}
    served = accepted = 0
    pending: list[OutcomeIn] = []

    async def flush() -> None:
        nonlocal accepted
        for start in range(0, len(pending), 1000):
            batch = OutcomesIn(outcomes=pending[start : start + 1000])
            accepted += (await recorder.record(batch)).accepted
        pending.clear()

    day = None
    for r in requests:
        if day is not None and r.at.date() != day:
            await flush()
        day = r.at.date()
        with clock.at(r.at):
            slate = await recommender.recommend(r.request, recommendation_id=r.recommendation_id)
        served += 1
        rng = random.Random(r.recommendation_id.int)
        shown = [by_id[e.item_id] for e in slate.slate if e.item_id in by_id]
        for j, response in enumerate(respond(r.listener, shown, rng)):
            pending.append(
                OutcomeIn(
                    event_id=uuid.uuid5(_NAMESPACE, f"{r.recommendation_id}/{j}"),
                    user_id=r.listener.user_id,
                    item_id=response.item_id,
                    kind=response.kind,
                    recommendation_id=r.recommendation_id,
                    occurred_at=r.at + response.after,
                    value=response.value,
                )
            )
    await flush()
    return served, accepted


@dataclass(frozen=True, slots=True)
class Seeded:
    items: int  # upserted
    outcomes: int  # organic outcomes accepted
    slates: int  # served
    slate_outcomes: int  # outcomes accepted on those slates


async def seed(
    app: web.Application, clock: DemoClock, items: int, users: int, now: datetime
) -> Seeded:
    """Seed a started gateway `app` (built with `clock`): the catalogue (if empty), the organic
    history, and, if no slate was served yet, a few days of slates served by the app's own
    recommender with the outcomes the listener model gives them, through the app's recorder."""
    catalog, recorder = app[CATALOG], app[OUTCOMES]
    catalogue = demo_items(items)
    upserted = 0
    if not await catalog.count_live():
        for start in range(0, len(catalogue), 1000):
            upserted += len(await catalog.upsert(catalogue[start : start + 1000]))
    tastes, history = _organic(catalogue, users, now, 11)
    accepted = 0
    for start in range(0, len(history), 1000):
        result = await recorder.record(OutcomesIn(outcomes=history[start : start + 1000]))
        accepted += result.accepted
    slates = slate_outcomes = 0
    if not await served_any(app[POOL]):
        requests = slate_requests(catalogue, listeners(catalogue, tastes), now)
        slates, slate_outcomes = await seed_slates(
            app[RECOMMENDER], recorder, clock, catalogue, requests
        )
    return Seeded(upserted, accepted, slates, slate_outcomes)
