"""The two ways a flush writes, and the flusher's connection.

A batch in which no request expects a stream version is written by one statement that assumes its
event ids are new; when one is not, that statement fails as a whole and the batch goes down the
full path (lock, read versions and known ids, decide, write). Both must give the same answers:
duplicates return the original, versions are gapless and follow commit order, an append is all or
nothing, a conflict fails only its own request. Each flusher keeps its connection between flushes,
so losing that connection, or a caller going away, must not lose anyone else's write.

The store's private write methods are wrapped only to see which path a flush took.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

import gateway.store.postgres as event_store
from gateway.store.api import (
    AppendResult,
    NewEvent,
    StoredEvent,
    StoreUnavailable,
    WrongExpectedVersion,
)
from gateway.store.database import create_pool
from gateway.store.postgres import STREAM_LOCK_KEYS, Connection, PostgresEventStore

pytestmark = pytest.mark.timeout(60)

DEADLINE = 20.0


@pytest.fixture
async def raw(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


@dataclass
class Paths:
    """Which write path each flush of a store took. A `new` entry of False is a one-statement
    attempt that met an id that was not new."""

    new: list[bool] = field(default_factory=list)
    full: int = 0


def watch(store: PostgresEventStore) -> Paths:
    paths = Paths()
    write_new, write = store._write_new, store._write

    async def counted_new(conn: Connection, batch: Any) -> Any:
        result = await write_new(conn, batch)
        paths.new.append(result is not None)
        return result

    async def counted(conn: Connection, batch: Any) -> Any:
        paths.full += 1
        return await write(conn, batch)

    store._write_new = counted_new  # type: ignore[method-assign]
    store._write = counted  # type: ignore[method-assign]
    return paths


@pytest.fixture
def store(pg_store: PostgresEventStore) -> PostgresEventStore:
    return pg_store


def event(stream_id: str, n: int = 0, event_type: str = "OutcomeRecorded") -> NewEvent:
    return NewEvent(
        event_id=uuid4(),
        stream_id=stream_id,
        event_type=event_type,
        schema_version=1,
        payload={"user": stream_id, "item_id": f"track-{n}", "kind": "stream_30s"},
        metadata={"n": n},
    )


async def copies(conn: Connection, event_id: UUID) -> tuple[int, int]:
    """How many times `event_id` is in events and in event_ids."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM events WHERE event_id = $1),"
        " (SELECT count(*) FROM event_ids WHERE event_id = $1)",
        event_id,
    )
    assert row is not None
    return row[0], row[1]


async def log_order(conn: Connection) -> list[tuple[str, int, int]]:
    """(stream, version, tx id) of every committed event, in the order readers see them."""
    rows = await conn.fetch(
        "SELECT stream_id, stream_version, tx_id::text AS tx FROM events"
        " ORDER BY events.tx_id, global_position"
    )
    return [(r[0], r[1], int(r[2])) for r in rows]


def assert_streams_gapless_in_log_order(order: list[tuple[str, int, int]]) -> None:
    versions: dict[str, list[int]] = defaultdict(list)
    for stream, version, _ in order:
        versions[stream].append(version)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"stream {stream} in log order: {seen}"


async def hold_stream_lock(conn: Connection, stream_id: str) -> None:
    """Take the advisory lock the store takes for `stream_id`, in `conn`'s open transaction."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('segue.streams'), hashtext($1) & $2)",
        stream_id,
        STREAM_LOCK_KEYS - 1,
    )


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds: for states only the database can report, such as a
    session waiting for a lock."""
    async with asyncio.timeout(DEADLINE):
        while True:
            if await check():
                return
            await asyncio.sleep(0.005)


async def lock_waiters(conn: Connection) -> list[int]:
    """Sessions of this database (other than `conn`) waiting for a lock."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    )
    return [r[0] for r in rows]


# --- the one-statement path ----------------------------------------------------------------


async def test_a_batch_without_expectations_is_written_in_one_statement(
    store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    paths = watch(store)
    streams = ["a", "b", "a", "c", "a", "b"]
    await store.append([event("a"), event("b")])

    results = await asyncio.gather(*(store.append([event(s, n)]) for n, s in enumerate(streams)))

    assert paths.full == 0
    assert paths.new
    assert all(paths.new)
    got = [(r.recorded[0].stream_id, r.recorded[0].stream_version) for r in results]
    assert got == [("a", 2), ("b", 2), ("a", 3), ("c", 1), ("a", 4), ("b", 3)]
    positions = [r.recorded[0].global_position for r in results]
    assert positions == sorted(positions), "positions follow the order requests were queued in"
    for stream, version in (("a", 4), ("b", 3), ("c", 1)):
        assert await store.stream_version(stream) == version
        stored = await store.read_stream(stream)
        assert [e.stream_version for e in stored] == list(range(1, version + 1))
    ids = await raw.fetch("SELECT stream_id, stream_version, global_position FROM event_ids")
    stored_positions = await raw.fetch(
        "SELECT stream_id, stream_version, global_position FROM events"
    )
    assert sorted(map(tuple, ids)) == sorted(map(tuple, stored_positions))
    assert_streams_gapless_in_log_order(await log_order(raw))


async def test_one_request_with_many_events_of_one_stream(store: PostgresEventStore) -> None:
    paths = watch(store)
    await store.append([event("s")])

    result = await store.append([event("s", n) for n in range(5)] + [event("t")])

    assert paths.new == [True, True]
    assert [(r.stream_id, r.stream_version) for r in result.recorded] == [
        ("s", 2),
        ("s", 3),
        ("s", 4),
        ("s", 5),
        ("s", 6),
        ("t", 1),
    ]
    stored = await store.read_stream("s")
    assert [e.payload["item_id"] for e in stored[1:]] == [f"track-{n}" for n in range(5)]


async def test_a_stored_id_on_the_one_statement_path_falls_back_and_returns_the_original(
    store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    paths = watch(store)
    original = event("s")
    (first,) = (await store.append([original])).recorded
    fresh = event("s")

    again = await store.append([fresh, original])

    assert paths.new == [True, False], "the one-statement attempt met the stored id"
    assert paths.full == 1
    new, dup = again.recorded
    assert (new.stream_id, new.stream_version, new.duplicate) == ("s", 2, False)
    assert dup.duplicate
    assert (dup.stream_version, dup.global_position) == (
        first.stream_version,
        first.global_position,
    )
    # The failed statement left nothing behind: the fresh event is there once, the stream moved
    # by one.
    assert await copies(raw, original.event_id) == (1, 1)
    assert await copies(raw, fresh.event_id) == (1, 1)
    assert await store.stream_version("s") == 2


async def test_the_same_id_twice_in_one_batch_is_stored_once(
    store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    paths = watch(store)
    shared = event("s")
    await store.append([event("warm-up")])

    results = await asyncio.gather(
        store.append([shared, event("t")]), store.append([event("u"), shared])
    )

    assert False in paths.new
    assert paths.full >= 1
    firsts = [results[0].recorded[0], results[1].recorded[1]]
    assert {(r.stream_id, r.stream_version, r.global_position) for r in firsts} == {
        ("s", 1, firsts[0].global_position)
    }
    assert [r.duplicate for r in firsts] == [False, True]
    assert await copies(raw, shared.event_id) == (1, 1)
    assert [await store.stream_version(s) for s in ("s", "t", "u")] == [1, 1, 1]


async def test_an_id_being_inserted_by_another_transaction_waits_for_its_outcome(
    store: PostgresEventStore, raw: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """The id is inserted by a transaction that took no stream lock; the one statement waits on
    the primary key, and then fails (the other committed) or goes through (it rolled back)."""
    await store.append([event("warm-up")])
    paths = watch(store)
    for outcome in ("commit", "rollback"):
        shared = event(f"elsewhere-{outcome}")
        tx = raw.transaction()
        await tx.start()
        try:
            position = await raw.fetchval(
                "INSERT INTO events (stream_id, stream_version, event_id, event_type,"
                " schema_version, payload) VALUES ('other', 1, $1, 'OutcomeRecorded', 1, '{}')"
                " RETURNING global_position",
                shared.event_id,
            )
            await raw.execute(
                "INSERT INTO event_ids VALUES ($1, $2, 'other', 1)", shared.event_id, position
            )
            request = asyncio.create_task(store.append([shared]))
            async with pool.acquire() as watcher:
                await wait_until(lambda: _waiting(watcher, 1))
        except BaseException:
            await tx.rollback()
            raise
        if outcome == "commit":
            await tx.commit()
        else:
            await tx.rollback()
        (result,) = (await request).recorded

        if outcome == "commit":
            assert paths.new[-1] is False
            assert (result.duplicate, result.global_position, result.stream_id) == (
                True,
                position,
                "other",
            )
        else:
            assert paths.new[-1] is True
            assert (result.duplicate, result.stream_id, result.stream_version) == (
                False,
                shared.stream_id,
                1,
            )
        assert await copies(raw, shared.event_id) == (1, 1)


async def _waiting(conn: Connection, n: int) -> bool:
    return len(await lock_waiters(conn)) >= n


async def test_concurrent_duplicates_across_two_stores_are_stored_once(
    store: PostgresEventStore,
    other_store: PostgresEventStore,
    raw: asyncpg.Connection,
    pool: asyncpg.Pool,
) -> None:
    """Two stores (two processes, as far as the database can tell) get the same id at the same
    moment: both one-statement attempts queue behind a held stream lock, so one of them meets
    the other's committed id."""
    await store.append([event("warm-up")])
    await other_store.append([event("warm-up")])
    paths = [watch(store), watch(other_store)]
    shared = event("contested")

    tx = raw.transaction()
    await tx.start()
    try:
        await hold_stream_lock(raw, "contested")
        requests = [
            asyncio.create_task(s.append([shared, event(f"own-{n}")]))
            for n, s in enumerate((store, other_store))
        ]
        async with pool.acquire() as watcher:
            await wait_until(lambda: _waiting(watcher, 2))
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()
    results = await asyncio.gather(*requests)

    firsts = [r.recorded[0] for r in results]
    assert len({r.global_position for r in firsts}) == 1
    assert sorted(r.duplicate for r in firsts) == [False, True]
    assert not any(r.recorded[1].duplicate for r in results)
    assert sorted(p.new[-1] for p in paths) == [False, True]
    assert await copies(raw, shared.event_id) == (1, 1)
    assert await store.stream_version("contested") == 1
    assert [await store.stream_version(f"own-{n}") for n in range(2)] == [1, 1]


async def test_two_stores_writing_the_same_streams_keep_versions_in_commit_order(
    store: PostgresEventStore, other_store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    """Readers order by transaction id; each stream's versions must come out 1, 2, 3... in that
    order, however the two stores' one-statement flushes interleave."""
    paths = [watch(store), watch(other_store)]
    streams = [f"listener-{n}" for n in range(6)]
    stores = [store, other_store]

    async def writer(n: int) -> None:
        for i in range(25):
            picked = [streams[(n + i + k) % len(streams)] for k in range(1 + i % 3)]
            await stores[n % 2].append([event(s, i) for s in picked])

    await asyncio.gather(*(writer(n) for n in range(8)))

    assert all(all(p.new) for p in paths)
    assert sum(p.full for p in paths) == 0
    order = await log_order(raw)
    assert_streams_gapless_in_log_order(order)
    for stream in streams:
        count = sum(1 for s, _, _ in order if s == stream)
        assert await store.stream_version(stream) == count


# --- the full path -------------------------------------------------------------------------


async def test_a_conflict_in_a_batch_fails_only_its_own_request(
    store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    await store.append([event("s"), event("s")])
    paths = watch(store)
    loser = event("s", 9)

    outcomes = await asyncio.gather(
        store.append([event("a")]),
        store.append([loser, event("b")], expected={"s": 1}),
        store.append([event("s"), event("c")], expected={"s": 2}),
        store.append([event("s")]),
        return_exceptions=True,
    )

    assert paths.full >= 1
    assert isinstance(outcomes[1], WrongExpectedVersion)
    assert (outcomes[1].expected, outcomes[1].actual) == (1, 2)
    ok = [o for o in outcomes if isinstance(o, AppendResult)]
    assert len(ok) == 3
    assert [r.stream_version for r in ok[1].recorded] == [3, 1]
    assert ok[2].recorded[0].stream_version == 4
    assert await copies(raw, loser.event_id) == (0, 0)
    assert await store.stream_version("b") == 0
    assert_streams_gapless_in_log_order(await log_order(raw))


# --- inline projections --------------------------------------------------------------------


@dataclass
class SeenInTransaction:
    """An inline projection that records what it got and the transaction it ran in."""

    event_types: frozenset[str] = frozenset({"ItemUpserted"})
    fail: bool = False
    calls: list[tuple[list[StoredEvent], int]] = field(default_factory=list)

    async def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        tx_id = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
        self.calls.append((list(events), tx_id))
        if self.fail:
            raise RuntimeError("projection failed")


async def test_an_inline_projection_runs_in_the_one_statement_transaction(
    pool: asyncpg.Pool, raw: asyncpg.Connection
) -> None:
    seen = SeenInTransaction()
    store = PostgresEventStore(pool, inline=[seen])
    paths = watch(store)
    await store.start()
    try:
        await store.append([event("item-1", event_type="ItemUpserted")])
        result = await store.append(
            [event("s"), event("item-1", 2, event_type="ItemUpserted"), event("s")]
        )
        await store.append([event("s")])  # carries nothing the projection wants
    finally:
        await store.close()

    assert all(paths.new)
    assert paths.full == 0
    assert len(seen.calls) == 2
    projected, tx_id = seen.calls[1]
    (e,) = projected
    recorded = result.recorded[1]
    assert (e.event_id, e.stream_version, e.global_position) == (
        recorded.event_id,
        2,
        recorded.global_position,
    )
    assert e.tx_id == tx_id
    assert e.payload["item_id"] == "track-2"
    stored_tx = await raw.fetchval(
        "SELECT tx_id::text FROM events WHERE event_id = $1", recorded.event_id
    )
    assert int(stored_tx) == tx_id


async def test_a_failing_inline_projection_writes_nothing(
    pool: asyncpg.Pool, raw: asyncpg.Connection
) -> None:
    seen = SeenInTransaction(fail=True)
    store = PostgresEventStore(pool, inline=[seen])
    await store.start()
    try:
        with pytest.raises(RuntimeError, match="projection failed"):
            await store.append([event("s"), event("item", event_type="ItemUpserted")])
        assert await raw.fetchval("SELECT count(*) FROM events") == 0
        assert await raw.fetchval("SELECT count(*) FROM event_ids") == 0
        assert await store.stream_version("s") == 0
        seen.fail = False
        result = await store.append([event("s")])
    finally:
        await store.close()
    assert result.recorded[0].stream_version == 1


# --- callers and connections ---------------------------------------------------------------


async def test_a_cancelled_caller_does_not_cancel_the_flush_it_shares(
    store: PostgresEventStore, raw: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await store.append([event("warm-up")])
    gone, stays = event("s", 1), event("s", 2)

    tx = raw.transaction()
    await tx.start()
    try:
        await hold_stream_lock(raw, "s")
        leaving = asyncio.create_task(store.append([gone]))
        staying = asyncio.create_task(store.append([stays]))
        async with pool.acquire() as watcher:
            await wait_until(lambda: _waiting(watcher, 1))
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
    finally:
        await tx.rollback()

    (kept,) = (await staying).recorded
    # The cancelled request was already part of a flush: it is written, and a retry with the
    # same id gets it back as a duplicate.
    assert await copies(raw, gone.event_id) == (1, 1)
    (retry,) = (await store.append([gone])).recorded
    assert retry.duplicate
    assert {kept.stream_version, retry.stream_version} == {1, 2}


async def test_a_flusher_connection_killed_while_idle_is_replaced_without_failing_anyone(
    store: PostgresEventStore, raw: asyncpg.Connection
) -> None:
    await asyncio.gather(*(store.append([event(f"s-{n}")]) for n in range(10)))

    killed = await raw.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert killed >= 1
    await asyncio.sleep(0.1)  # for the client to read the server's goodbye

    results = await asyncio.gather(*(store.append([event(f"s-{n}")]) for n in range(10)))
    assert [r.recorded[0].stream_version for r in results] == [2] * 10


async def test_a_flusher_connection_lost_mid_flush_fails_that_flush_and_then_reconnects(
    store: PostgresEventStore, raw: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await store.append([event("warm-up")])
    lost = event("s")

    tx = raw.transaction()
    await tx.start()
    try:
        await hold_stream_lock(raw, "s")
        request = asyncio.create_task(store.append([lost]))
        async with pool.acquire() as watcher:
            await wait_until(lambda: _waiting(watcher, 1))
            (flusher,) = await lock_waiters(watcher)
            await watcher.execute("SELECT pg_terminate_backend($1)", flusher)
        with pytest.raises(StoreUnavailable):
            await request
    finally:
        await tx.rollback()

    # The outcome was unknown to the caller; here it is known: nothing was written, and the
    # retry with the same id is a plain append on a new connection.
    (retry,) = (await store.append([lost])).recorded
    assert (retry.duplicate, retry.stream_version) == (False, 1)
    assert await copies(raw, lost.event_id) == (1, 1)


async def test_flushers_give_their_connections_back_when_idle(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_store, "IDLE_RELEASE_SECONDS", 0.05)
    store = PostgresEventStore(pool)
    await store.start()
    try:
        await asyncio.gather(*(store.append([event(f"s-{n}")]) for n in range(50)))

        async def all_idle() -> bool:
            return pool.get_idle_size() == pool.get_size()

        await wait_until(all_idle)
        (result,) = (await store.append([event("s-0")])).recorded
        assert result.stream_version == 2
    finally:
        await store.close()
    assert pool.get_idle_size() == pool.get_size()


async def test_a_pool_no_larger_than_the_flushers_is_not_held(db_url: str) -> None:
    """Held connections would leave nothing for readers, or for a flusher that has taken a
    batch: with a pool this small, flushers give theirs back after every flush."""
    small = await create_pool(db_url, min_size=1, max_size=2)
    store = PostgresEventStore(small, flushers=2)
    await store.start()
    try:
        for n in range(3):
            await asyncio.gather(*(store.append([event(f"s-{k}", n)]) for k in range(20)))
            async with asyncio.timeout(5), small.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM events") == 20 * (n + 1)
    finally:
        await store.close()
        await small.close()
