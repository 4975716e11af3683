"""The PostgreSQL event store under real concurrency: open and rolled-back transactions, many
writers and readers at once, racing expectations and idempotency keys, the append-only trigger
and group commit.

Readers here poll. What a reader may see is bounded by the oldest transaction still running on
the whole server (`pg_snapshot_xmin`), which no in-process signal reports, so "has the reader
caught up" can only be answered by asking again, under a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest

from gateway.store.api import (
    START,
    AppendResult,
    NewEvent,
    Position,
    StoredEvent,
    WrongExpectedVersion,
)
from gateway.store.postgres import STREAM_LOCK_KEYS, Connection, PostgresEventStore

pytestmark = pytest.mark.timeout(30)

DEADLINE = 20.0


@pytest.fixture
async def raw(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


def event(stream_id: str, n: int = 0) -> NewEvent:
    return NewEvent(
        event_id=uuid4(),
        stream_id=stream_id,
        event_type="OutcomeRecorded",
        schema_version=1,
        payload={"user": stream_id, "item_id": f"track-{n}", "kind": "stream_30s"},
    )


async def insert_raw(conn: Connection, e: NewEvent, version: int) -> int:
    """Write `e` the way the store does, on a connection whose transaction the test controls."""
    position: int = await conn.fetchval(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,"
        " payload) VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING global_position",
        e.stream_id,
        version,
        e.event_id,
        e.event_type,
        e.schema_version,
        orjson.dumps(e.payload).decode(),
    )
    await conn.execute(
        "INSERT INTO streams (stream_id, version) VALUES ($1, $2)"
        " ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version",
        e.stream_id,
        version,
    )
    await conn.execute(
        "INSERT INTO event_ids (event_id, global_position, stream_id, stream_version)"
        " VALUES ($1, $2, $3, $4)",
        e.event_id,
        position,
        e.stream_id,
        version,
    )
    return position


async def read_until(
    store: PostgresEventStore, after: Position, count: int, *, limit: int = 100
) -> list[StoredEvent]:
    """Read from `after` until `count` events have come back, then check nothing else does."""
    got: list[StoredEvent] = []
    async with asyncio.timeout(DEADLINE):
        while len(got) < count:
            page = await store.read_all(after, limit)
            if page:
                got.extend(page)
                after = page[-1].position
            else:
                await asyncio.sleep(0.01)
    assert await store.read_all(after, limit) == []
    return got


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds: for states only the database can report, such as a
    session waiting for a lock."""
    async with asyncio.timeout(DEADLINE):
        while True:
            if await check():
                return
            await asyncio.sleep(0.005)


async def lock_waiters(conn: Connection) -> int:
    """Sessions of this database (other than `conn`) waiting for a lock."""
    waiting: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    )
    return waiting


# --- a transaction held open ----------------------------------------------------------------


async def test_reader_does_not_pass_an_open_transaction_and_reads_it_once_it_commits(
    pg_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    assert await pg_store.read_all(START, 10) == []
    await pg_store.append([event("early")])
    (early,) = await read_until(pg_store, START, 1)

    held = event("held")
    tx = raw.transaction()
    await tx.start()
    try:
        held_position = await insert_raw(raw, held, 1)
        later = [event(f"later-{i}") for i in range(5)]
        for e in later:
            await pg_store.append([e])
        # The later events are committed: their streams say so. A reader trusting positions or
        # commit visibility alone would return them now, and then never return the held one.
        assert [await pg_store.stream_version(e.stream_id) for e in later] == [1] * 5
        for _ in range(3):
            assert await pg_store.read_all(early.position, 100) == []
        assert [e.event_id for e in await pg_store.read_all(START, 100)] == [early.event_id]
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()

    after_commit = await read_until(pg_store, early.position, 6)
    assert [e.event_id for e in after_commit] == [held.event_id] + [e.event_id for e in later]
    assert after_commit[0].global_position == held_position
    assert all(a.position < b.position for a, b in itertools.pairwise(after_commit))


async def test_reader_skips_a_rolled_back_transaction_and_carries_on(
    pg_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    await pg_store.append([event("early")])
    (early,) = await read_until(pg_store, START, 1)

    held = event("held")
    tx = raw.transaction()
    await tx.start()
    try:
        await insert_raw(raw, held, 1)
        later = [event(f"later-{i}") for i in range(5)]
        for e in later:
            await pg_store.append([e])
        assert await pg_store.read_all(early.position, 100) == []
    finally:
        await tx.rollback()

    after_rollback = await read_until(pg_store, early.position, 5)
    assert [e.event_id for e in after_rollback] == [e.event_id for e in later]
    assert await pg_store.stream_version("held") == 0
    assert (
        await raw.fetchval("SELECT count(*) FROM event_ids WHERE event_id = $1", held.event_id) == 0
    )


async def test_read_all_keeps_stream_order_when_a_writer_waits_for_a_lock(
    pg_store: PostgresEventStore,
    other_store: PostgresEventStore,
    raw: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    """A writer that has begun its transaction and then waits must not end up ordered before a
    writer of the same stream that went ahead of it: readers order by transaction id."""
    for stream in ("a", "m", "s"):
        await pg_store.append([event(stream)])

    tx = raw.transaction()
    await tx.start()
    slow: asyncio.Task[AppendResult] | None = None
    fast: asyncio.Task[AppendResult] | None = None
    try:
        # Hold "m" so that an append touching a, m and s stops half way.
        await raw.execute("SELECT 1 FROM streams WHERE stream_id = 'm' FOR UPDATE")
        async with pool.acquire() as watcher:
            slow = asyncio.create_task(pg_store.append([event("a"), event("m"), event("s", 2)]))
            await wait_until(lambda: _at_least(watcher, 1))
            fast = asyncio.create_task(other_store.append([event("s", 3)]))
            # Either the second writer finishes, or it queues behind the first: both are fine
            # for the store, but the order readers then see must match the versions.
            await wait_until(lambda: _done_or_waiting(fast, watcher, 2))
    finally:
        await tx.rollback()
    assert slow is not None
    assert fast is not None
    await asyncio.gather(slow, fast)

    everything = await read_until(pg_store, START, 6)
    versions = [e.stream_version for e in everything if e.stream_id == "s"]
    assert versions == [1, 2, 3], f"stream s read out of order: {versions}"


async def _at_least(conn: Connection, waiting: int) -> bool:
    return await lock_waiters(conn) >= waiting


async def _done_or_waiting(task: asyncio.Task[Any], conn: Connection, n: int) -> bool:
    return task.done() or await lock_waiters(conn) >= n


# --- many writers and readers at once -------------------------------------------------------


class Ticks:
    """Something that keeps happening (a store commit, through its `on_commit` hook; a reader's
    poll) as something to wait on, so that tasks interleave by design rather than by timing."""

    def __init__(self) -> None:
        self.count = 0
        self._next: asyncio.Future[None] | None = None

    def __call__(self) -> None:
        self.count += 1
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None

    async def next(self, at_most: float | None = None) -> None:
        """Until the next tick, or until `at_most` seconds have passed."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        # asyncio.wait, not wait_for: a timed-out waiter must not cancel the shared future.
        await asyncio.wait({self._next}, timeout=at_most)

    async def more(self, n: int) -> None:
        """Until `n` more ticks."""
        target = self.count + n
        while self.count < target:
            await self.next()


@dataclass
class Ledger:
    committed: set[UUID]
    rolled_back: set[UUID]


async def test_many_writers_rollbacks_and_two_tailing_readers(
    pool: asyncpg.Pool, db_url: str
) -> None:
    rng = random.Random(20_260_125)
    commits = Ticks()
    polls = [Ticks(), Ticks()]
    store = PostgresEventStore(pool, on_commit=commits)
    await store.start()
    raw_pool = await asyncpg.create_pool(db_url, min_size=0, max_size=6)
    assert raw_pool is not None
    ledger = Ledger(set(), set())
    raws_done = asyncio.Event()
    total: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    streams = [f"listener-{i}" for i in range(12)]

    async def writer(seed: int) -> None:
        wrng = random.Random(seed)
        # Keep writing until the raw transactions are done, so that every one of them has
        # store commits after it.
        for n in itertools.count():
            if n >= 8 and raws_done.is_set():
                return
            batch = [event(wrng.choice(streams), n) for _ in range(wrng.randint(1, 3))]
            result = await store.append(batch)
            assert result.accepted == len(batch)
            ledger.committed.update(e.event_id for e in batch)

    async def committed_after(tx_id: str) -> bool:
        found: bool = await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events WHERE tx_id > $1::text::xid8)", tx_id
        )
        return found

    async def raw_writer(index: int, seed: int) -> None:
        wrng = random.Random(seed)
        stream = f"raw-{index}"
        version = 0
        for n in range(5):
            batch = [event(stream, n) for _ in range(wrng.randint(1, 2))]
            async with raw_pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    for i, e in enumerate(batch, start=version + 1):
                        await insert_raw(conn, e, i)
                    # Stay open until the store has committed a transaction that began after
                    # this one and both readers have polled since then, so that they have met
                    # committed events past an open transaction.
                    tx_id = await conn.fetchval("SELECT pg_current_xact_id()::text")
                    while not await committed_after(tx_id):
                        await commits.next(at_most=0.05)
                    # A reader's second poll from now began after that commit.
                    for poll in polls:
                        await poll.more(2)
                except BaseException:
                    await tx.rollback()
                    raise
                if wrng.random() < 0.5:
                    await tx.rollback()
                    ledger.rolled_back.update(e.event_id for e in batch)
                else:
                    await tx.commit()
                    version += len(batch)
                    ledger.committed.update(e.event_id for e in batch)

    async def reader(seed: int, polled: Ticks, got: list[StoredEvent]) -> None:
        rrng = random.Random(seed)
        after = START
        while not (total.done() and len(got) >= total.result()):
            page = await store.read_all(after, rrng.randint(1, 40))
            polled()
            if page:
                got.extend(page)
                after = page[-1].position
            else:
                # The design's wake-up: the in-process signal after a commit, plus a short poll
                # for commits it cannot see (the raw transactions here).
                await commits.next(at_most=0.02)
        assert await store.read_all(after, 1000) == []

    async def raws() -> None:
        try:
            await asyncio.gather(*(raw_writer(i, rng.randrange(2**32)) for i in range(6)))
        finally:
            raws_done.set()

    results: list[list[StoredEvent]] = [[], []]
    readers = [
        asyncio.create_task(reader(rng.randrange(2**32), poll, got))
        for poll, got in zip(polls, results, strict=True)
    ]
    try:
        async with asyncio.timeout(DEADLINE):
            writers = [writer(rng.randrange(2**32)) for _ in range(50)]
            await asyncio.gather(raws(), *writers)
        total.set_result(len(ledger.committed))
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(*readers)
        except TimeoutError:
            missing = [len(ledger.committed - {e.event_id for e in got}) for got in results]
            pytest.fail(f"readers stopped short of the committed events, missing {missing}")
    finally:
        for task in readers:
            task.cancel()
        await store.close()
        await raw_pool.close()

    assert ledger.rolled_back, "the seed should roll some transactions back"
    assert len(ledger.committed) > 400
    for got in results:
        read_ids = [e.event_id for e in got]
        assert len(read_ids) == len(set(read_ids)), "an event was read twice"
        assert set(read_ids) == ledger.committed
        assert not ledger.rolled_back.intersection(read_ids)
        assert all(a.position < b.position for a, b in itertools.pairwise(got))
        per_stream: dict[str, list[int]] = defaultdict(list)
        for e in got:
            per_stream[e.stream_id].append(e.stream_version)
        for stream, versions in per_stream.items():
            assert versions == list(range(1, len(versions) + 1)), stream


# --- racing writers -------------------------------------------------------------------------


async def test_one_of_many_appends_with_the_same_expected_version_wins(
    pg_store: PostgresEventStore, other_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    stores = [pg_store, other_store]
    # Both stores' connections are warmed up first (statements prepared, types introspected),
    # so that in each round their transactions really overlap.
    await pg_store.append([event("contested")])
    await other_store.append([event("contested")])
    version = 2

    for contest in range(5):
        attempts = [event("contested", 100 * contest + n) for n in range(20)]

        outcomes = await asyncio.gather(
            *(
                stores[n % 2].append([e], expected={"contested": version})
                for n, e in enumerate(attempts)
            ),
            return_exceptions=True,
        )

        won = [o for o in outcomes if isinstance(o, AppendResult)]
        lost = [o for o in outcomes if isinstance(o, WrongExpectedVersion)]
        assert (len(won), len(lost)) == (1, 19), f"round {contest}: {len(won)} appends won"
        assert won[0].recorded[0].stream_version == version + 1
        assert {(o.expected, o.actual) for o in lost} == {(version, version + 1)}
        version += 1

    assert await pg_store.stream_version("contested") == version == 7
    for table in ("events", "event_ids"):
        stored = await raw.fetch(
            f"SELECT stream_version FROM {table} WHERE stream_id = 'contested'"
            " ORDER BY stream_version"
        )
        assert [r[0] for r in stored] == list(range(1, 8)), table


async def test_the_same_event_id_from_many_requests_is_stored_once(
    pg_store: PostgresEventStore, other_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    shared = event("listener-dup")
    stores = [pg_store, other_store]
    # Each request also carries an event of its own, so the shared one is not the whole flush.
    own = [event(f"listener-{n}") for n in range(40)]

    results = await asyncio.gather(
        *(stores[n % 2].append([shared, mine]) for n, mine in enumerate(own))
    )

    firsts = [r.recorded[0] for r in results]
    assert len({r.global_position for r in firsts}) == 1
    assert {(r.stream_id, r.stream_version) for r in firsts} == {("listener-dup", 1)}
    assert sum(not r.duplicate for r in firsts) == 1
    assert not any(r.recorded[1].duplicate for r in results)
    for table in ("events", "event_ids"):
        stored = await raw.fetch(
            f"SELECT global_position FROM {table} WHERE event_id = $1", shared.event_id
        )
        assert [r[0] for r in stored] == [firsts[0].global_position], table
    assert await raw.fetchval("SELECT count(*) FROM events") == 41
    assert await pg_store.stream_version("listener-dup") == 1


async def test_an_event_id_another_transaction_is_inserting_is_not_stored_again(
    pg_store: PostgresEventStore,
    other_store: PostgresEventStore,
    raw: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    """The stream lock serializes requests for one stream; this is the race it cannot cover:
    the id is being inserted by a transaction that took no stream lock (another writer)."""
    await pg_store.append([event("listener-dup")])
    await other_store.append([event("warm-up")])
    shared = event("listener-dup")
    stores = [pg_store, other_store]

    tx = raw.transaction()
    await tx.start()
    try:
        position = await raw.fetchval(
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,"
            " payload) VALUES ('listener-dup', 2, $1, 'OutcomeRecorded', 1, '{}')"
            " RETURNING global_position",
            shared.event_id,
        )
        await raw.execute(
            "INSERT INTO event_ids VALUES ($1, $2, 'listener-dup', 2)", shared.event_id, position
        )
        requests = [
            asyncio.create_task(stores[n % 2].append([shared, event(f"listener-{n}")]))
            for n in range(10)
        ]
        async with pool.acquire() as watcher:
            # One store waits for the id, the other for the stream lock the first holds.
            await wait_until(lambda: _at_least(watcher, 2))
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()
    results = await asyncio.gather(*requests)

    assert {(r.recorded[0].global_position, r.recorded[0].duplicate) for r in results} == {
        (position, True)
    }
    assert not any(r.recorded[1].duplicate for r in results)
    for table in ("events", "event_ids"):
        count = f"SELECT count(*) FROM {table} WHERE event_id = $1"
        assert await raw.fetchval(count, shared.event_id) == 1, table
    assert await raw.fetchval("SELECT count(*) FROM events") == 2 + 1 + 10


@dataclass
class AdvisoryLocksSeen:
    """An inline projection, so it runs inside the append transaction, after the stream locks."""

    event_types: frozenset[str] = frozenset({"OutcomeRecorded"})
    held: int | None = None

    async def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        self.held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid = pg_backend_pid() AND granted"
        )


async def test_a_flush_over_thousands_of_streams_holds_a_bounded_number_of_locks(
    pool: asyncpg.Pool,
) -> None:
    """Advisory locks live in the server's shared lock table, sized for about 64 per connection:
    one lock per stream would let a large flush exhaust it."""
    seen = AdvisoryLocksSeen()
    store = PostgresEventStore(pool, inline=[seen])
    await store.start()
    try:
        result = await store.append([event(f"listener-{n}") for n in range(3000)])
    finally:
        await store.close()

    assert result.accepted == 3000
    assert seen.held is not None
    assert 0 < seen.held <= STREAM_LOCK_KEYS


# --- the append-only trigger ----------------------------------------------------------------


REWRITES = (
    "UPDATE events SET event_type = 'Rewritten'",
    "DELETE FROM events",
    "TRUNCATE events",
)


@pytest.mark.parametrize("statement", REWRITES)
async def test_events_cannot_be_rewritten(
    statement: str, pg_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    await pg_store.append([event("s"), event("s")])

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await raw.execute(statement)
    # Nor inside a transaction that did not opt in.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        async with raw.transaction():
            await raw.execute(statement)

    assert await raw.fetchval("SELECT count(*) FROM events WHERE event_type <> 'Rewritten'") == 2


@pytest.mark.parametrize("statement", REWRITES)
async def test_the_owner_can_rewrite_events_after_opting_in_for_one_transaction(
    statement: str, pg_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    await pg_store.append([event("s"), event("s")])

    async with raw.transaction():
        await raw.execute("SET LOCAL segue.allow_event_rewrite = on")
        await raw.execute(statement)
    assert await raw.fetchval("SELECT count(*) FROM events WHERE event_type <> 'Rewritten'") == 0

    # The opt-in ended with its transaction.
    await pg_store.append([event("t")])
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await raw.execute(statement)


async def test_a_role_that_does_not_own_events_cannot_opt_in(
    pg_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    await pg_store.append([event("s")])
    role = f"segue_t_writer_{secrets.token_hex(4)}"
    await raw.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        await raw.execute(f"GRANT SELECT, UPDATE, DELETE, TRUNCATE ON events TO {role}")
        for statement in REWRITES:
            tx = raw.transaction()
            await tx.start()
            try:
                await raw.execute(f"SET LOCAL ROLE {role}")
                await raw.execute("SET LOCAL segue.allow_event_rewrite = on")
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                    await raw.execute(statement)
            finally:
                await tx.rollback()
        assert await raw.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await raw.execute(f"REVOKE ALL ON events FROM {role}")
        await raw.execute(f"DROP ROLE {role}")


# --- group commit ---------------------------------------------------------------------------


async def test_concurrent_appends_share_transactions(pg_store: PostgresEventStore) -> None:
    before = pg_store.flushes

    results = await asyncio.gather(*(pg_store.append([event(f"l-{n}")]) for n in range(64)))

    flushes = pg_store.flushes - before
    assert sum(r.accepted for r in results) == 64
    assert 1 <= flushes < 64, f"{flushes} transactions for 64 appends"
    stored = await read_until(pg_store, START, 64, limit=1000)
    assert len({e.tx_id for e in stored}) == flushes
