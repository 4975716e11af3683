"""How fast events go into the log: the store's group-committed append against one INSERT per event
and against COPY, on the same fresh database in the same run.

    python bench/append.py [--url URL] [--events N]

The URL names a server (default: $SEGUE_BENCH_DATABASE_URL, else the local one); the benchmark
creates its own database there, migrates it, and drops it at the end. Each method runs three
times, interleaved, so that a table growing over the run or a noisy neighbour does not favour one
of them; the median of the three is printed. Goals: store >= 0.3 x COPY and >= 10 x one INSERT per
event from 64 concurrent tasks. One INSERT per event is also run from a single connection, one event
after the other: what a client without concurrency would get.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from domain.events import OutcomeKind, OutcomeRecorded, to_payload
from gateway.store.api import NewEvent
from gateway.store.postgres import Connection, PostgresEventStore

from _common import EVENT_COLUMNS, add_url_argument, throwaway_database

CONCURRENCY = 64
COPY_BATCH = 1000
ROUNDS = 3
LISTENERS = 20_000

STORE = f"store.append, {CONCURRENCY} tasks, 1 event per append"
ONE_INSERT = f"one INSERT per event, {CONCURRENCY} tasks (streams + events + event_ids, 1 tx)"
ONE_INSERT_SEQUENTIAL = "one INSERT per event, 1 connection, sequential (same 3 writes, 1 tx)"
EVENTS_ONLY = f"one INSERT per event, {CONCURRENCY} tasks (events only)"
COPY = f"COPY into events, batches of {COPY_BATCH}"


class Events:
    """Realistic outcome events from a seeded generator: fresh event ids for every run (a
    repeated id would be a cheap duplicate, not an append), listener streams drawn from a
    population, so that appends touch many streams as real traffic does."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._listeners = [
            UUID(int=self._rng.getrandbits(128), version=4) for _ in range(LISTENERS)
        ]
        self._kinds = list(OutcomeKind)
        self._epoch = datetime(2026, 11, 1, tzinfo=UTC)

    def batch(self, n: int) -> list[NewEvent]:
        return [self._one(self._rng.choice(self._listeners)) for _ in range(n)]

    def one_per_listener(self) -> list[NewEvent]:
        return [self._one(listener) for listener in self._listeners]

    def _one(self, listener: UUID) -> NewEvent:
        rng = self._rng
        outcome = OutcomeRecorded(
            event_id=UUID(int=rng.getrandbits(128), version=4),
            user=str(listener),
            item_id=f"track-{rng.randrange(2_000_000)}",
            kind=rng.choice(self._kinds),
            occurred_at=self._epoch + timedelta(seconds=rng.randrange(30 * 86_400)),
            # Half the outcomes come from a recommendation; the rest from search, shelves...
            recommendation_id=(
                UUID(int=rng.getrandbits(128), version=4) if rng.random() < 0.5 else None
            ),
            value=float(rng.randrange(300_000)),
        )
        return NewEvent(
            event_id=outcome.event_id,
            stream_id=outcome.stream_id(),
            event_type=outcome.TYPE,
            schema_version=outcome.SCHEMA_VERSION,
            payload=to_payload(outcome),
            metadata={"source": "bench"},
        )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


INSERT_EVENT = (
    "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, payload,"
    " metadata) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)"
)


def _row(e: NewEvent, version: int) -> tuple[object, ...]:
    """`e` as the values of `EVENT_COLUMNS`, at stream version `version`."""
    return (
        e.stream_id,
        version,
        e.event_id,
        e.event_type,
        e.schema_version,
        _dumps(e.payload),
        _dumps(e.metadata),
    )


async def _insert_one(conn: Connection, e: NewEvent) -> None:
    async with conn.transaction():
        version = await conn.fetchval(
            "INSERT INTO streams (stream_id, version) VALUES ($1, 1)"
            " ON CONFLICT (stream_id) DO UPDATE SET version = streams.version + 1"
            " RETURNING version",
            e.stream_id,
        )
        position = await conn.fetchval(
            INSERT_EVENT + " RETURNING global_position", *_row(e, version)
        )
        await conn.execute(
            "INSERT INTO event_ids (event_id, global_position, stream_id, stream_version)"
            " VALUES ($1, $2, $3, $4)",
            e.event_id,
            position,
            e.stream_id,
            version,
        )


async def _in_tasks(events: Sequence[NewEvent], work: Callable[[NewEvent], Awaitable[Any]]) -> None:
    """`CONCURRENCY` tasks, each taking the next event until none are left: like that many
    clients each sending one event per request."""
    todo: Iterator[NewEvent] = iter(events)

    async def client() -> None:
        for e in todo:
            await work(e)

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))


@dataclass
class Bench:
    pool: asyncpg.Pool
    store: PostgresEventStore

    async def store_append(self, events: Sequence[NewEvent]) -> None:
        async def one(e: NewEvent) -> None:
            await self.store.append([e])

        await _in_tasks(events, one)

    async def insert_per_event(self, events: Sequence[NewEvent]) -> None:
        """What an event store without batching does: per event, one transaction that bumps the
        stream's version, inserts the event and records its id; from many clients at once."""

        async def one(e: NewEvent) -> None:
            async with self.pool.acquire() as conn:
                await _insert_one(conn, e)

        await _in_tasks(events, one)

    async def insert_per_event_sequential(self, events: Sequence[NewEvent]) -> None:
        """The same transactions, one after the other on one connection."""
        async with self.pool.acquire() as conn:
            for e in events:
                await _insert_one(conn, e)

    async def insert_event_only(self, events: Sequence[NewEvent]) -> None:
        """The floor of the one-at-a-time approach: a single INSERT per event, nothing else."""

        async def one(e: NewEvent) -> None:
            await self.pool.execute(INSERT_EVENT, *_row(e, 1))

        await _in_tasks(events, one)

    async def copy(self, events: Sequence[NewEvent]) -> None:
        """The ceiling: binary COPY into events, one transaction per batch, no side tables."""
        async with self.pool.acquire() as conn:
            for start in range(0, len(events), COPY_BATCH):
                await conn.copy_records_to_table(
                    "events",
                    columns=EVENT_COLUMNS,
                    records=[_row(e, 1) for e in events[start : start + COPY_BATCH]],
                )


async def run(server_url: str, n: int) -> None:
    async with throwaway_database(server_url) as url:
        await measure(url, n)


async def measure(url: str, n: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        server = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    print(f"PostgreSQL {server}, {os.cpu_count()} CPUs on this machine")
    # As many connections as clients: the one-INSERT baseline gets all the parallelism it can
    # use. The store needs only one per flusher, and keeps them between flushes, so it gets a
    # pool of its own rather than hold connections the baselines would then lack.
    pool = await asyncpg.create_pool(url, min_size=CONCURRENCY, max_size=CONCURRENCY)
    assert pool is not None
    store_pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert store_pool is not None
    store = PostgresEventStore(store_pool)
    await store.start()
    bench = Bench(pool, store)
    methods: dict[str, Callable[[Sequence[NewEvent]], Awaitable[None]]] = {
        STORE: bench.store_append,
        ONE_INSERT: bench.insert_per_event,
        ONE_INSERT_SEQUENTIAL: bench.insert_per_event_sequential,
        EVENTS_ONLY: bench.insert_event_only,
        COPY: bench.copy,
    }
    rates: dict[str, list[float]] = {label: [] for label in methods}
    flushes: list[int] = []
    generator = Events(seed=7)
    try:
        # Not measured: a database in its steady state, where every listener has a stream and
        # the planner has statistics (autovacuum would analyze within a minute; without them,
        # plans made while the tables were empty stay cached and scan whole tables); then
        # connections, prepared statements and pages warmed by each method.
        history = generator.one_per_listener()
        for start in range(0, len(history), COPY_BATCH):
            await store.append(history[start : start + COPY_BATCH])
        await pool.execute("ANALYZE")
        for work in methods.values():
            await work(generator.batch(CONCURRENCY * 4))
        for _round, (label, work) in itertools.product(range(ROUNDS), methods.items()):
            events = generator.batch(n)
            before = store.flushes
            started = time.perf_counter()
            await work(events)
            elapsed = time.perf_counter() - started
            rates[label].append(n / elapsed)
            if work == bench.store_append:
                flushes.append(store.flushes - before)
    finally:
        await store.close()
        await store_pool.close()
        await pool.close()

    median = {label: statistics.median(r) for label, r in rates.items()}
    width = max(map(len, median))
    print(f"{n} events per method per run, {ROUNDS} interleaved runs, median")
    for label, rate in median.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates[label])
        print(f"{label:<{width}}  {rate:>8,.0f} events/s   (runs: {runs})")
    print(f"store: {n / statistics.mean(flushes):.1f} events per transaction on average")
    ratios = [
        ("store / COPY", f"{median[STORE] / median[COPY]:.2f}", "(goal >= 0.3)"),
        (
            f"store / one INSERT per event, {CONCURRENCY} tasks",
            f"{median[STORE] / median[ONE_INSERT]:.1f}",
            "(goal >= 10)",
        ),
        (
            "store / one INSERT per event, 1 connection",
            f"{median[STORE] / median[ONE_INSERT_SEQUENTIAL]:.1f}",
            "",
        ),
        ("store / events-only INSERT", f"{median[STORE] / median[EVENTS_ONLY]:.1f}", ""),
    ]
    name_width = max(len(name) for name, _, _ in ratios) + 1
    for name, ratio, goal in ratios:
        print(f"{name + ':':<{name_width}}  {ratio:>5}  {goal}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_url_argument(parser, help="a PostgreSQL server URL; a throw-away database is created on it")
    parser.add_argument("--events", type=int, default=20_000, help="events per method per run")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.events))


if __name__ == "__main__":
    main()
