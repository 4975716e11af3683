"""Shared pieces of the projection tests: a seeded generator of realistic event traffic, writers
that append it concurrently (through the event store, or in raw transactions that may roll back),
what the pure folds say the projections must hold, and exact dumps of what they do hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import numpy as np
import orjson

from domain.events import (
    DomainEvent,
    ItemRetired,
    ItemUpserted,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
    to_payload,
)
from domain.listener_fold import RECENT_KEPT, ListenerChanges, fold_listeners
from domain.longterm import (
    LongTermEstimate,
    fit_prior,
    observed_days,
    posterior,
    uninformed_prior,
)
from domain.reward_fold import ORGANIC, RewardChanges, RewardState, day_number, fold
from domain.rewards import DEFAULT, RewardDefinition
from domain.upcasting import decode
from gateway.projections.definitions import Projection, q
from gateway.projections.rewards import SurfaceRewards, total_of
from gateway.projections.runner import Runner, Version, create_version
from gateway.store.api import NewEvent, Position
from gateway.store.database import create_pool
from gateway.store.postgres import Connection, PostgresEventStore, row_to_event

K = OutcomeKind
DEADLINE = 30.0
Rows = dict[str, list[str]]
Timed = list[tuple[datetime, DomainEvent]]


# --- waiting --------------------------------------------------------------------------------


@contextlib.contextmanager
def loop_errors_fail() -> Iterator[None]:
    """Fail if the running loop saw an exception nobody handled (a runner, a flusher)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
    finally:
        loop.set_exception_handler(previous)
    assert not seen, f"unhandled errors in the event loop: {seen}"


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE
) -> None:
    """Poll `check` until it holds; fail naming `what` if it does not within `deadline`."""
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(*runners: Runner) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run `runners` as tasks for the block; cancel them (closing their connections) after."""
    tasks = [asyncio.create_task(r.run(), name=f"test-runner-{r.projection.name}") for r in runners]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def alive(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Fail at once if a runner task died instead of waiting for a deadline to say so."""
    for task in tasks:
        if task.done() and not task.cancelled():
            raise AssertionError(f"{task.get_name()} ended") from task.exception()


async def holds(tasks: Iterable[asyncio.Task[None]], condition: bool) -> bool:
    """For `eventually`: `condition`, failing at once if one of `tasks` has ended."""
    alive(tasks)
    return condition


# --- a seeded world of listeners, slates and outcomes ---------------------------------------


def seeded_uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


def event_id(event: DomainEvent) -> UUID:
    """An outcome's own idempotency key; a fresh one for everything else (nothing reads it)."""
    return event.event_id if isinstance(event, OutcomeRecorded) else uuid4()


def day_start(day: int) -> datetime:
    """Midnight UTC of a `day_number`."""
    return datetime.fromordinal(day).replace(tzinfo=UTC)


@dataclass
class World:
    """Catalogue, listeners and the clock of a generated scenario. `base` is midnight UTC."""

    rng: random.Random
    base: datetime
    items: list[str]
    shows: dict[str, str | None]
    users: list[str]

    def same_show(self, item: str) -> list[str]:
        show = self.shows[item]
        return [i for i in self.items if show is not None and self.shows[i] == show]


# A sequence is a list of transactions (each a list of events) that one writer appends in order.
Sequence_ = list[list[DomainEvent]]

REC_KINDS = [
    K.STREAM_30S,
    K.STREAM_30S,
    K.STREAM_30S,
    K.COMPLETE,
    K.COMPLETE,
    K.SKIP,
    K.SKIP,
    K.STREAM_START,
    K.IMPRESSION,
    K.CLICK,
    K.SAVE,
    K.LIKE,
    K.DISLIKE,
    K.FOLLOW,
    K.SHARE,
    K.ACTIVE_DAY,
]
SURFACES = ["home", "search", "podcasts", "music"]


def make_world(
    seed: int, base: datetime, *, items: int = 40, users: int = 25, shows: int = 6
) -> World:
    rng = random.Random(seed)
    ids = [f"it-{i:03d}" for i in range(items)]
    show_of: dict[str, str | None] = {
        i: (f"show-{rng.randrange(shows)}" if rng.random() < 0.6 else None) for i in ids
    }
    return World(rng, base, ids, show_of, [f"listener-{u:03d}" for u in range(users)])


def catalogue(world: World) -> list[DomainEvent]:
    return [
        ItemUpserted(
            i,
            "episode" if world.shows[i] else "track",
            {"show": world.shows[i]} if world.shows[i] else {"artist": "someone"},
        )
        for i in world.items
    ]


def _outcome(
    world: World,
    user: str,
    item: str,
    kind: OutcomeKind,
    at: datetime,
    rec: UUID | None = None,
) -> OutcomeRecorded:
    rng = world.rng
    value: float | None = None
    if kind is K.SKIP:
        value = rng.choice([None, 3_000.0, 29_999.0, 30_000.0, 95_000.0])
    elif kind in (K.STREAM_30S, K.COMPLETE) and rng.random() < 0.5:
        value = float(rng.randrange(30_000, 600_000))
    return OutcomeRecorded(seeded_uuid(rng), user, item, kind, at, rec, value)


def _offset(world: World, kind: OutcomeKind, definition: RewardDefinition) -> timedelta:
    """How long after the slate an outcome happened: mostly within its window, often after,
    sometimes just before (clock skew) or well before it (never attributed)."""
    rng = world.rng
    window = definition.window(kind).total_seconds()
    r = rng.random()
    if r < 0.6:
        seconds = rng.uniform(0, window)
    elif r < 0.8:
        seconds = window + rng.uniform(1, 3 * 86_400)
    elif r < 0.9:
        seconds = -rng.uniform(0, 59)
    else:
        seconds = -rng.uniform(61, 3_600)
    return timedelta(microseconds=round(seconds * 1e6))


def recommendation(
    world: World, *, days: int, definition: RewardDefinition = DEFAULT
) -> list[Sequence_]:
    """One served slate and what followed: its outcomes (in the slate's sequence), and the
    listener coming back on later days (independent sequences, so they may reach the log before
    the stream that starts the trace)."""
    rng = world.rng
    rec_id = seeded_uuid(rng)
    user = rng.choice(world.users)
    at = world.base + timedelta(days=rng.randrange(days), seconds=rng.uniform(0, 86_400))
    slate_items = rng.sample(world.items, rng.randint(2, 5))
    served = RecommendationServed(
        recommendation_id=rec_id,
        user=user,
        surface=rng.choice(SURFACES),
        context={"seed": rng.randrange(1000)},
        slate=tuple(
            SlateEntry(i, p, round(rng.random(), 6), round(rng.uniform(0.01, 1), 6))
            for p, i in enumerate(slate_items)
        ),
        policy_name="test",
        policy_version="1",
        index_version="none",
        requested_at=at,
    )
    outcomes: list[DomainEvent] = []
    follow_ups: list[Sequence_] = []
    for item in slate_items:
        if rng.random() < 0.35:
            continue
        for kind in rng.sample(REC_KINDS, rng.randint(1, 4)):
            who = user if rng.random() < 0.9 else rng.choice(world.users)
            o = _outcome(world, who, item, kind, at + _offset(world, kind, definition), rec_id)
            outcomes.append(o)
            if kind in definition.stream_kinds:
                follow_ups.extend(_come_back(world, who, item, day_number(o.occurred_at)))
    if rng.random() < 0.05:  # names the slate but for an item that is not in it
        stranger = rng.choice([i for i in world.items if i not in slate_items])
        outcomes.append(_outcome(world, user, stranger, K.STREAM_30S, at, rec_id))
    if rng.random() < 0.05:  # names a recommendation that was never served
        outcomes.append(_outcome(world, user, slate_items[0], K.SAVE, at, seeded_uuid(rng)))
    rng.shuffle(outcomes)
    # Mostly in the slate's own transaction; otherwise in later transactions of its sequence.
    split = 0 if rng.random() < 0.5 else rng.randint(0, len(outcomes))
    main: Sequence_ = [[served, *outcomes[:split]]]
    rest = outcomes[split:]
    while rest:
        n = rng.randint(1, 4)
        main.append(rest[:n])
        rest = rest[n:]
    return [main, *follow_ups]


def _come_back(world: World, user: str, item: str, start: int) -> list[Sequence_]:
    """The listener streams the item, or another item of its show, on some later days."""
    rng = world.rng
    out: list[Sequence_] = []
    for _ in range(rng.randint(0, 4)):
        d = rng.choice([0, 1, 1, 2, 3, 7, 14, 30, 59, 60, 61, 70, rng.randint(1, 65)])
        target = rng.choice([item, *world.same_show(item)])
        who = user if rng.random() < 0.85 else rng.choice(world.users)
        kind = rng.choice([K.STREAM_30S, K.STREAM_30S, K.COMPLETE, K.STREAM_START])
        when = day_start(start + d) + timedelta(seconds=rng.uniform(0, 86_399))
        out.append([[_outcome(world, who, target, kind, when)]])
    return out


def organic(world: World, *, days: int) -> Sequence_:
    """An outcome nobody recommended."""
    rng = world.rng
    when = world.base + timedelta(days=rng.randrange(days), seconds=rng.uniform(0, 86_400))
    kind = rng.choice(REC_KINDS)
    return [[_outcome(world, rng.choice(world.users), rng.choice(world.items), kind, when)]]


def catalogue_change(world: World) -> Sequence_:
    """An item moves to another show (or leaves its show), or is retired."""
    rng = world.rng
    item = rng.choice(world.items)
    if rng.random() < 0.3:
        return [[ItemRetired(item)]]
    show = rng.choice([None, "show-0", "show-1", f"show-new-{rng.randrange(3)}"])
    return [[ItemUpserted(item, "episode", {"show": show} if show else {})]]


def traffic(
    world: World, *, recommendations: int, organic_outcomes: int, changes: int, days: int
) -> list[Sequence_]:
    """Sequences in a random order; each writer appends the ones it is dealt in order."""
    sequences: list[Sequence_] = []
    for _ in range(recommendations):
        sequences.extend(recommendation(world, days=days))
    sequences.extend(organic(world, days=days) for _ in range(organic_outcomes))
    sequences.extend(catalogue_change(world) for _ in range(changes))
    world.rng.shuffle(sequences)
    return sequences


# --- writing it ------------------------------------------------------------------------------


def new_events(events: Sequence[DomainEvent]) -> list[NewEvent]:
    return [
        NewEvent(event_id(e), e.stream_id(), e.TYPE, e.SCHEMA_VERSION, to_payload(e))
        for e in events
    ]


_RAW_INSERT = """
INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, payload)
SELECT s, v, i, t, sv, p::jsonb
FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::int2[], $6::text[])
     WITH ORDINALITY AS x(s, v, i, t, sv, p, o)
ORDER BY o
"""


async def raw_insert(conn: Connection, events: Sequence[NewEvent], stream: str) -> None:
    """Insert straight into the log (a stream of the test's own), inside the caller's
    transaction: what a writer that may yet roll back looks like to the projector."""
    await conn.execute(
        _RAW_INSERT,
        [stream] * len(events),
        list(range(1, len(events) + 1)),
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.schema_version for e in events],
        [orjson.dumps(e.payload).decode() for e in events],
    )


@dataclass
class Written:
    committed: set[UUID] = field(default_factory=set)
    rolled_back: set[UUID] = field(default_factory=set)


async def store_writer(
    store: PostgresEventStore, sequences: Sequence[Sequence_], out: Written
) -> None:
    for sequence in sequences:
        for tx in sequence:
            batch = new_events(tx)
            result = await store.append(batch)
            assert result.duplicates == 0
            out.committed.update(e.event_id for e in batch)


async def raw_writer(
    dsn: str,
    sequences: Sequence[Sequence_],
    seed: int,
    out: Written,
    *,
    rollback: float = 0.2,
) -> None:
    """Appends in its own transactions; rolls back a share of them (seeded), some only after
    holding them open while everything else goes on."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    try:
        for n, sequence in enumerate(sequences):
            for m, tx in enumerate(sequence):
                batch = new_events(tx)
                undo = rng.random() < rollback
                hold = rng.random() < 0.15
                transaction = conn.transaction()
                await transaction.start()
                try:
                    half = len(batch) // 2
                    stream = f"raw-{seed}-{n}-{m}"
                    if half:
                        await raw_insert(conn, batch[:half], stream)
                    if hold:
                        # Others commit behind this open transaction meanwhile.
                        await asyncio.sleep(rng.uniform(0.005, 0.03))
                    await raw_insert(conn, batch[half:], stream + "-b")
                except BaseException:
                    await transaction.rollback()
                    raise
                if undo:
                    await transaction.rollback()
                    out.rolled_back.update(e.event_id for e in batch)
                else:
                    await transaction.commit()
                    out.committed.update(e.event_id for e in batch)
    finally:
        await conn.close()


def deal(sequences: Sequence[Sequence_], hands: int) -> list[list[Sequence_]]:
    return [list(sequences[i::hands]) for i in range(hands)]


# --- reading it back ------------------------------------------------------------------------


async def committed_events(conn: Connection) -> list[tuple[Position, datetime, DomainEvent]]:
    """Every committed event in the order the projector reads them."""
    rows = await conn.fetch(
        "SELECT global_position, tx_id::text, recorded_at, stream_id, stream_version, event_id, "
        "event_type, schema_version, payload::text, metadata::text FROM events "
        "ORDER BY events.tx_id, global_position"
    )
    out = []
    for row in rows:
        e = row_to_event(row)
        out.append((e.position, e.recorded_at, decode(e.event_type, e.schema_version, e.payload)))
    return out


def timed(events: Iterable[tuple[Position, datetime, DomainEvent]]) -> Timed:
    return [(at, e) for _, at, e in events]


async def dump(conn: Connection, projection: Projection, schema: str) -> Rows:
    """Every row of every table of one projection version, as text, in a fixed order."""
    s = q(schema)
    out: Rows = {}
    for table in projection.tables():
        rows = await conn.fetch(f"SELECT t::text FROM {s}.{table} AS t ORDER BY 1")
        out[table] = [r[0] for r in rows]
    return out


def assert_same_rows(got: Rows, want: Rows) -> None:
    assert got.keys() == want.keys()
    for table in want:
        assert len(got[table]) == len(want[table]), f"{table}: row counts differ"
        for a, b in zip(got[table], want[table], strict=True):
            assert a == b, f"{table}: {a} != {b}"


async def version_row(conn: Connection, name: str, version: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT status, schema_name, definition_version, tx_id::text AS tx_id, global_position, "
        "events_applied FROM projections WHERE name = $1 AND version = $2",
        name,
        version,
    )
    assert row is not None, f"no version {version} of {name}"
    return row


async def log_end(conn: Connection) -> Position:
    """Where the last event in the log is, in reader order: what a runner must reach once every
    writer has finished. Not `head`, which stops before the oldest transaction still running on
    the whole server, so that another database's long transaction could make a runner look
    caught up with events still ahead of it."""
    row = await conn.fetchrow(
        "SELECT tx_id::text, global_position FROM events "
        "ORDER BY events.tx_id DESC, global_position DESC LIMIT 1"
    )
    return Position(0, 0) if row is None else Position(int(row[0]), row[1])


async def events_up_to(conn: Connection, position: Position) -> int:
    n = await conn.fetchval(
        "SELECT count(*) FROM events WHERE (tx_id, global_position) <= ($1::text::xid8, $2)",
        str(position.tx_id),
        position.global_position,
    )
    return int(n)


async def build_from_zero(
    dsn: str,
    conn: Connection,
    projection: Projection,
    definition: RewardDefinition = DEFAULT,
    deadline: float = DEADLINE,
) -> Version:
    """A new version filled from position zero by a pinned runner, up to the current head; the
    live version is left alone (unlike `rebuild`, which swaps and drops it)."""
    version = await create_version(conn, projection, definition, "building")
    runner = Runner(dsn, projection, version=version.version, poll_seconds=0.02)
    async with running(runner) as tasks:
        target = await log_end(conn)
        await eventually(
            lambda: holds(tasks, runner.position >= target),
            f"{projection.name} from zero",
            deadline,
        )
    return version


# --- what the pure folds say ----------------------------------------------------------------


def fold_all(
    events: Timed, definition: RewardDefinition = DEFAULT
) -> tuple[RewardState, RewardChanges]:
    state, changes = RewardState(), RewardChanges()
    fold(state, changes, events, definition)
    return state, changes


def fold_listeners_all(events: Timed, definition: RewardDefinition = DEFAULT) -> ListenerChanges:
    changes = ListenerChanges()
    fold_listeners(changes, (e for _, e in events), definition)
    return changes


Table = dict[Any, Any]


def expected_rewards_tables(
    events: Timed, definition: RewardDefinition = DEFAULT
) -> dict[str, Table]:
    """Every rewards table as the pure fold of `events` from nothing says it must be."""
    _, c = fold_all(events, definition)
    return {
        "served": {
            k: (v.user, v.surface, v.requested_at, list(v.positions), list(v.positions.values()))
            for k, v in c.served.items()
        },
        "impressions": dict(c.impressions),
        "item_shows": dict(c.shows),
        "traces": {k: (v.user, v.target, v.start_day) for k, v in c.traces.items()},
        "user_days": dict.fromkeys(c.user_days, True),
        "activity": dict.fromkeys(c.activity, True),
        "item_rewards": {k: tuple(v) for k, v in c.item_rewards.items()},
        "item_positions": dict(c.positions),
        "item_outcomes": dict(c.outcomes),
        "lt_starts": dict(c.lt_starts),
        "lt_active": dict(c.lt_active),
    }


_KEYS = {
    "served": 1,
    "impressions": 2,
    "item_shows": 1,
    "traces": 2,
    "user_days": 3,
    "activity": 3,
    "item_rewards": 3,
    "item_positions": 3,
    "item_outcomes": 4,
    "lt_starts": 3,
    "lt_active": 4,
}


async def rewards_tables(conn: Connection, schema: str) -> dict[str, Table]:
    """Every rewards table of `schema`, keyed like `expected_rewards_tables`."""
    s = q(schema)
    out: dict[str, Table] = {}
    for table, n in _KEYS.items():
        rows = await conn.fetch(f"SELECT * FROM {s}.{table}")
        values: Table = {}
        for r in rows:
            key = r[0] if n == 1 else tuple(r[:n])
            rest = tuple(r[n:])
            values[key] = True if not rest else (rest[0] if len(rest) == 1 else rest)
        out[table] = values
    return out


def expected_listener_tables(
    events: Timed, definition: RewardDefinition = DEFAULT
) -> dict[str, Table]:
    c = fold_listeners_all(events, definition)
    return {
        "affinity": {k: (v[0], int(v[1])) for k, v in c.affinity.items()},
        "history": dict(c.history),
        "recent": kept_recent(c),
    }


def kept_recent(c: ListenerChanges) -> Table:
    """The fold's recent rows the store keeps: each listener's latest RECENT_KEPT, by time and
    then item id (byte order), as the table holds them."""
    by_listener: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in c.recent:
        by_listener[key[0]].append(key)
    out: Table = {}
    for keys in by_listener.values():
        keys.sort(key=lambda k: (c.recent[k][0], k[1].encode()), reverse=True)
        for k in keys[:RECENT_KEPT]:
            out[k] = (c.recent[k][0], list(c.recent[k][1]), c.recent[k][2])
    return out


async def listener_tables(conn: Connection, schema: str) -> dict[str, Table]:
    s = q(schema)
    return {
        table: {(r[0], r[1]): tuple(r[2:]) for r in await conn.fetch(f"SELECT * FROM {s}.{table}")}
        for table in ("affinity", "history", "recent")
    }


def assert_tables_equal(got: dict[str, Table], want: dict[str, Table]) -> None:
    assert got.keys() == want.keys()
    for table in want:
        missing = want[table].keys() - got[table].keys()
        extra = got[table].keys() - want[table].keys()
        assert not missing, f"{table}: missing {list(missing)[:3]}"
        assert not extra, f"{table}: unexpected {list(extra)[:3]}"
        wrong = [(k, got[table][k], v) for k, v in want[table].items() if got[table][k] != v]
        assert not wrong, f"{table}: {len(wrong)} rows differ, e.g. {wrong[:3]}"


@dataclass(frozen=True)
class ExpectedItem:
    total: SurfaceRewards
    by_surface: dict[str, SurfaceRewards]
    positions: dict[int, int]
    long_term: LongTermEstimate


def expected_item(
    changes: RewardChanges, item_id: str, as_of: datetime, definition: RewardDefinition = DEFAULT
) -> ExpectedItem:
    """An item's aggregates as the reader must report them, from the fold of the events
    recorded up to `as_of` (so every delta in `changes` counts)."""
    served: dict[str, int] = defaultdict(int)
    sums: dict[str, Decimal] = defaultdict(Decimal)
    squares: dict[str, Decimal] = defaultdict(Decimal)
    for (item, surface, _), (n, reward, square) in changes.item_rewards.items():
        if item == item_id:
            served[surface] += int(n)
            sums[surface] += reward
            squares[surface] += square
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (item, surface, kind, _), times in changes.outcomes.items():
        if item == item_id:
            counts[surface][kind] += times
    surfaces = (set(served) | set(counts)) - {ORGANIC}
    every = {s: SurfaceRewards(served[s], dict(counts[s]), sums[s], squares[s]) for s in surfaces}
    total = total_of(every.values(), counts)
    positions: dict[int, int] = defaultdict(int)
    for (item, position, _), times in changes.positions.items():
        if item == item_id:
            positions[position] += times
    return ExpectedItem(
        total, every, dict(positions), long_term(changes, item_id, as_of, definition)
    )


def long_term(
    changes: RewardChanges, item_id: str, as_of: datetime, definition: RewardDefinition = DEFAULT
) -> LongTermEstimate:
    """The estimate straight from the fold: per-day sums and counts of every item as seen on
    `as_of`'s day, the prior fitted on them (the reader's `fit_prior_at`), the item's posterior."""
    horizon = definition.horizon_days
    starts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (item, start, _), n in changes.lt_starts.items():
        starts[item][start] += n
    active: dict[str, dict[tuple[int, int], int]] = defaultdict(lambda: defaultdict(int))
    for (item, start, offset, _), n in changes.lt_active.items():
        active[item][(start, offset)] += n
    today = day_number(as_of)
    items = sorted(starts)
    prior = uninformed_prior(horizon)
    if items:
        sums = np.zeros((len(items), horizon))
        counts = np.zeros((len(items), horizon))
        for i, item in enumerate(items):
            sums[i], counts[i] = observed_days(
                dict(starts[item]), dict(active.get(item, {})), today, horizon
            )
        prior = fit_prior(sums, counts) or prior
    mine_sums, mine_counts = observed_days(
        dict(starts.get(item_id, {})), dict(active.get(item_id, {})), today, horizon
    )
    return posterior(prior, mine_sums, mine_counts)


# --- writing concurrently -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stores(dsn: str, n: int) -> AsyncIterator[list[PostgresEventStore]]:
    """`n` event stores, each on a pool of its own (separate sessions, separate group commits)."""
    pools = [await create_pool(dsn, min_size=1, max_size=4) for _ in range(n)]
    started = [PostgresEventStore(p, max_batch_events=50) for p in pools]
    try:
        for s in started:
            await s.start()
        yield started
    finally:
        for s in started:
            await s.close()
        for p in pools:
            await p.close()


async def write_concurrently(
    dsn: str,
    sequences: Sequence[Sequence_],
    seed: int,
    written: Written,
    *,
    store_writers: int = 2,
    raw_writers: int = 2,
    rollback: float = 0.2,
) -> None:
    """Deal `sequences` to writers that append at the same time: some through the event store,
    some in raw transactions of which a seeded share rolls back."""
    hands = deal(sequences, store_writers + raw_writers)
    async with stores(dsn, store_writers) as writers:
        await asyncio.gather(
            *(store_writer(s, hands[i], written) for i, s in enumerate(writers)),
            *(
                raw_writer(
                    dsn, hands[store_writers + j], seed + 100 + j, written, rollback=rollback
                )
                for j in range(raw_writers)
            ),
        )


async def append_in_order(dsn: str, events: Sequence[DomainEvent]) -> Written:
    """One transaction per event, one after the other: the log holds them in this order."""
    written = Written()
    async with stores(dsn, 1) as (store,):
        await store_writer(store, [[[e] for e in events]], written)
    return written


def days_ago(n: int) -> datetime:
    return day_start(day_number(datetime.now(UTC)) - n)
