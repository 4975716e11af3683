"""The PostgreSQL event store: group-committed appends, commit-safe reads.

Appends from concurrent requests are queued and written by a few flusher tasks, each turning
everything waiting into one transaction on a connection it keeps between flushes. When no request
in the batch expects a stream version, that transaction is a single statement: it locks the touched
streams, bumps their versions, inserts the events and records their ids, and a duplicate event id
makes it fail as a whole. Otherwise, or after such a failure, the flush takes the full path: lock
the streams, read their versions and the known event ids, check expected versions in Python, then
write. A caller's future resolves only after the transaction commits.

Readers page by `(tx_id, global_position)` below `pg_snapshot_xmin`, so an event whose transaction
is still open (and every event after it in commit order) is not read until it has committed or
rolled back: positions from the identity column become visible out of order, commit ids do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from gateway.metrics import APPEND_BATCH, APPEND_COMMIT, APPENDED
from gateway.store import reads
from gateway.store.api import (
    AppendResult,
    NewEvent,
    Position,
    Recorded,
    StoredEvent,
    StoreUnavailable,
    WrongExpectedVersion,
    with_request_id,
)
from gateway.store.database import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

# What a pool hands out and what asyncpg.connect returns both work here.
Connection = asyncpg.Connection | PoolConnectionProxy

MAX_FLUSH_ATTEMPTS = 5
# A flusher keeps its connection from one flush to the next (each release to the pool costs a reset
# round trip), but gives it back after this long without work, so that an idle store holds none,
# and after this many flushes, so that the pool's own policies (max_queries, expire_connections)
# still reach it under steady load.
IDLE_RELEASE_SECONDS = 1.0
HOLD_FLUSHES = 1000


class InlineProjection(Protocol):
    """Work done inside the append transaction for the events it commits (e.g. the catalogue).
    Keep it small: it runs on every flush that carries one of its event types."""

    event_types: frozenset[str]

    async def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None: ...


class _Retry(Exception):
    """Another transaction won a race the locks could not prevent (a brand-new stream, an event id
    being inserted concurrently); the flush is redone, and then sees the winner's commit."""


@dataclass(slots=True)
class _Lane:
    """A flusher's connection, kept from one flush to the next."""

    conn: PoolConnectionProxy | None = None
    flushes: int = 0


@dataclass(slots=True)
class _Pending:
    events: Sequence[NewEvent]
    expected: Mapping[str, int] | None
    future: asyncio.Future[AppendResult]


# Streams are locked with transaction-scoped advisory locks, not row locks, because readers order
# by transaction id: taking a row lock gives the transaction its id, so a writer that locked one
# stream and then queued for another behind a faster writer would hold the smaller id while
# writing the later versions, and readers would see that stream out of order. Advisory locks
# assign no id; the first write does, after every lock is held, so whoever waited for a stream
# always has the larger id. They also cover streams that do not exist yet, and write no WAL.
# Unlike row locks they take room in the server's shared lock table (about 64 per connection by
# default), so streams share a bounded number of keys: a flush holds at most that many, and two
# flushes that share a key simply take turns. Keys are taken in one order so that flushes cannot
# deadlock. The two-key form keeps clear of other advisory lock users, which use the one-key form
# or another first key.
STREAM_LOCK_KEYS = 128

_LOCK_STREAMS = f"""
SELECT count(pg_advisory_xact_lock(hashtext('segue.streams'), k))
FROM (
    SELECT DISTINCT hashtext(s) & {STREAM_LOCK_KEYS - 1} AS k
    FROM unnest($1::text[]) AS s ORDER BY k
) AS keys
"""

# A statement of its own after the locks, so that its snapshot includes the commits waited for.
_READ_STATE = """
SELECT stream_id, version, NULL::uuid, NULL::bigint FROM streams
WHERE stream_id = ANY($1::text[])
UNION ALL
SELECT stream_id, stream_version, event_id, global_position FROM event_ids
WHERE event_id = ANY($2::uuid[])
"""

_WRITE = """
WITH s AS (
    INSERT INTO streams (stream_id, version)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version
    RETURNING stream_id, (xmax = 0) AS created
), e AS (
    INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                        payload, metadata)
    SELECT s_id, s_v, e_id, e_t, e_sv, p::jsonb, m::jsonb
    FROM unnest($3::text[], $4::bigint[], $5::uuid[], $6::text[], $7::int2[], $8::text[],
                $9::text[]) WITH ORDINALITY AS t(s_id, s_v, e_id, e_t, e_sv, p, m, ord)
    ORDER BY ord
    RETURNING global_position, event_id, tx_id, recorded_at
), i AS (
    INSERT INTO event_ids (event_id, global_position, stream_id, stream_version)
    SELECT e.event_id, e.global_position, t.s_id, t.s_v
    FROM e JOIN unnest($5::uuid[], $3::text[], $4::bigint[]) AS t(e_id, s_id, s_v)
         ON t.e_id = e.event_id
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT
    (SELECT coalesce(array_agg(stream_id), '{}') FROM s WHERE NOT created) AS existed,
    (SELECT count(*) FROM i) AS ids_inserted,
    (SELECT coalesce(array_agg(event_id), '{}') FROM e) AS ids,
    (SELECT coalesce(array_agg(global_position), '{}') FROM e) AS positions,
    (SELECT min(tx_id)::text FROM e) AS tx_id,
    (SELECT min(recorded_at) FROM e) AS recorded_at
"""

# The whole append as one statement, for batches in which no request expects a stream version.
# The stream locks are taken by an InitPlan that gates the rows feeding the streams upsert, and
# every other write reads from that upsert, so all locks are held before the first row is written
# (which is when the transaction gets its id). The statement's snapshot predates the lock waits,
# which does not matter: ON CONFLICT DO UPDATE works on the newest committed version of a stream
# row whatever the snapshot, so versions come out gapless and in lock order. The event_ids primary
# key sees every committed or in-progress insert (it waits for the latter), so an id that is not
# new fails the whole statement, and nothing of it stays written; the server logs that failure as
# an error, which is acceptable because ids that are not new come from client retries, which are
# rare. An event's version is its stream's new version less the events of that stream that follow
# it in the batch. Positions are drawn in batch order, so sorting by position gives batch order.
_WRITE_NEW = f"""
WITH t AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int2[], $5::text[], $6::text[])
        WITH ORDINALITY AS t(s_id, e_id, e_t, e_sv, p, m, ord)
), s AS (
    INSERT INTO streams AS st (stream_id, version)
    SELECT s_id, count(*) FROM t
    WHERE (
        SELECT count(pg_advisory_xact_lock(hashtext('segue.streams'), k))
        FROM (
            SELECT DISTINCT hashtext(s_id) & {STREAM_LOCK_KEYS - 1} AS k FROM t ORDER BY k
        ) AS keys
    ) > 0
    GROUP BY s_id ORDER BY s_id
    ON CONFLICT (stream_id) DO UPDATE SET version = st.version + EXCLUDED.version
    RETURNING stream_id, version
), e AS (
    INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                        payload, metadata)
    SELECT t.s_id,
           s.version - count(*) OVER (PARTITION BY t.s_id)
                     + row_number() OVER (PARTITION BY t.s_id ORDER BY t.ord),
           t.e_id, t.e_t, t.e_sv, t.p::jsonb, t.m::jsonb
    FROM t JOIN s ON s.stream_id = t.s_id
    ORDER BY t.ord
    RETURNING global_position, stream_id, stream_version, event_id, tx_id, recorded_at
), i AS (
    INSERT INTO event_ids (event_id, global_position, stream_id, stream_version)
    SELECT event_id, global_position, stream_id, stream_version FROM e
)
SELECT array_agg(global_position ORDER BY global_position),
       array_agg(stream_version ORDER BY global_position),
       min(tx_id)::text,
       min(recorded_at)
FROM e
"""


_READ_EVENTS = """
SELECT e.global_position, e.tx_id::text, e.recorded_at, e.stream_id, e.stream_version, e.event_id,
       e.event_type, e.schema_version, e.payload::text, e.metadata::text
FROM event_ids i JOIN events e ON e.global_position = i.global_position
WHERE i.event_id = ANY($1::uuid[])
"""

_READ_STREAM = """
SELECT global_position, tx_id::text, recorded_at, stream_id, stream_version, event_id,
       event_type, schema_version, payload::text, metadata::text
FROM events WHERE stream_id = $1 AND stream_version >= $2
ORDER BY stream_version
"""


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def row_to_event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        global_position=row[0],
        tx_id=int(row[1]),
        recorded_at=row[2],
        stream_id=row[3],
        stream_version=row[4],
        event_id=row[5],
        event_type=row[6],
        schema_version=row[7],
        payload=orjson.loads(row[8]),
        metadata=orjson.loads(row[9]),
    )


def _stored(
    events: Sequence[NewEvent],
    versions: Sequence[int],
    positions: Sequence[int],
    tx_id: int,
    recorded_at: datetime,
) -> list[StoredEvent]:
    return [
        StoredEvent(
            global_position=position,
            tx_id=tx_id,
            recorded_at=recorded_at,
            stream_id=e.stream_id,
            stream_version=version,
            event_id=e.event_id,
            event_type=e.event_type,
            schema_version=e.schema_version,
            payload=e.payload,
            metadata=e.metadata,
        )
        for e, version, position in zip(events, versions, positions, strict=True)
    ]


async def _project(
    conn: Connection, projections: Sequence[InlineProjection], stored: list[StoredEvent]
) -> None:
    for projection in projections:
        await projection.apply(conn, [s for s in stored if s.event_type in projection.event_types])


def _closed(conn: PoolConnectionProxy) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took it back itself when it closed
        return True


_UNAVAILABLE = UNAVAILABLE_ERRORS


class PostgresEventStore:
    """The production event store. Call `start()` before appending and `close()` when done.

    Each flusher keeps the pool connection it writes on from one flush to the next, so the pool
    needs more connections than all the flushers using it; if it has no more than this store's
    flushers, they give theirs back after every flush."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch_events: int = 2000,
        flushers: int = 2,
        inline: Sequence[InlineProjection] = (),
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._max_batch_events = max_batch_events
        self._flusher_count = flushers
        self._inline = tuple(inline)
        self._on_commit = on_commit
        # Held connections must leave at least one for readers and for a flusher that lost its
        # own, or a flusher could wait for a connection forever with its batch taken.
        self._hold = pool.get_max_size() > flushers
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._flushers: list[asyncio.Task[None]] = []
        self.flushes = 0  # transactions committed; appends / flushes is the group-commit factor

    async def start(self) -> None:
        self._flushers = [
            asyncio.create_task(self._flush_loop(), name=f"segue-flusher-{i}")
            for i in range(self._flusher_count)
        ]

    async def close(self) -> None:
        """Finish what is queued, then stop the flushers (which give back their connections)."""
        await self._queue.join()
        for task in self._flushers:
            task.cancel()
        for task in self._flushers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flushers = []

    async def append(
        self, events: Sequence[NewEvent], expected: Mapping[str, int] | None = None
    ) -> AppendResult:
        if not events:
            return AppendResult(())
        if not self._flushers:
            raise RuntimeError("PostgresEventStore.start() was not called")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        # Stamped here, in the caller's context: the flusher that writes it is another task.
        events = [with_request_id(e) for e in events]
        self._queue.put_nowait(_Pending(events, expected, future))
        # No shield needed: the future is this caller's alone, and cancelling it only makes the
        # flusher skip resolving it. The write goes ahead either way, as it must for the others
        # in its batch; a caller that went away retries with the same ids.
        return await future

    async def _flush_loop(self) -> None:
        lane = _Lane()
        try:
            while True:
                if lane.conn is not None and self._queue.empty():
                    try:
                        async with asyncio.timeout(IDLE_RELEASE_SECONDS):
                            first = await self._queue.get()
                    except TimeoutError:
                        await self._give_back(lane)
                        continue
                else:
                    first = await self._queue.get()
                batch = [first]
                size = len(first.events)
                while size < self._max_batch_events and not self._queue.empty():
                    pending = self._queue.get_nowait()
                    batch.append(pending)
                    size += len(pending.events)
                try:
                    await self._flush(lane, batch)
                except Exception as exc:  # never let one bad flush kill the flusher
                    await self._give_back(lane)  # the pool resets whatever state it was left in
                    if len(batch) == 1:
                        log.exception("append refused")
                        self._fail(batch, exc)
                    else:
                        # Nothing of the batch was written (one statement, or one transaction).
                        # One append's events were refused (a NUL in text, a value out of
                        # range, an inline projection failing): write each alone, so that only
                        # the appends that caused it fail.
                        log.warning("append flush of %d refused (%r); one by one", len(batch), exc)
                        await self._flush_each(lane, batch)
                finally:
                    for _ in batch:
                        self._queue.task_done()
                lane.flushes += 1
                if not self._hold or lane.flushes >= HOLD_FLUSHES:
                    await self._give_back(lane)
        finally:
            await self._give_back(lane)

    async def _give_back(self, lane: _Lane) -> None:
        # Let go of it before awaiting: a flusher cancelled half way through must not release
        # the same connection twice (the pool finishes a release it has begun on its own).
        conn, lane.conn, lane.flushes = lane.conn, None, 0
        if conn is None:
            return
        try:
            await self._pool.release(conn)
        except Exception:  # the pool has already dropped a connection it could not reset
            log.warning("could not return a flusher connection to the pool", exc_info=True)

    async def _flush(self, lane: _Lane, batch: list[_Pending]) -> None:
        """Write `batch` on the lane's connection, and resolve its futures."""
        # Expected versions need reading before writing; without them the batch is written on
        # the assumption that its ids are new, and the database says if they are not.
        assume_new = not any(p.expected for p in batch)
        attempt = 0
        started = time.perf_counter()
        while True:
            attempt += 1
            try:
                if lane.conn is None or _closed(lane.conn):
                    # A connection found closed before use (the server restarted, or ended an
                    # idle session) has sent nothing of this batch: replace it and go on.
                    await self._give_back(lane)
                    lane.conn = await self._pool.acquire()
                conn = lane.conn
                results: list[AppendResult | BaseException] | None = None
                if assume_new:
                    results = await self._write_new(conn, batch)
                    if results is None:
                        # An event id is stored already, or twice in this batch: the full path
                        # finds out which and answers with the originals.
                        assume_new = False
                if results is None:
                    async with conn.transaction():
                        results = await self._write(conn, batch)
            except (_Retry, asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == MAX_FLUSH_ATTEMPTS:
                    raise
                continue
            except _UNAVAILABLE as exc:
                # The commit may or may not have happened: say so, and let the client retry with
                # the same event ids, which is always safe. The next flush reconnects.
                unknown = StoreUnavailable(f"event store unavailable: {exc.__class__.__name__}")
                self._fail(batch, unknown)
                if lane.conn is not None and not _closed(lane.conn):
                    lane.conn.terminate()
                await self._give_back(lane)
                return
            self.flushes += 1
            APPEND_COMMIT.observe(time.perf_counter() - started)
            APPEND_BATCH.observe(sum(len(p.events) for p in batch))
            APPENDED.inc(sum(r.accepted for r in results if isinstance(r, AppendResult)))
            for p, result in zip(batch, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
            if self._on_commit is not None:
                self._on_commit()
            return

    async def _flush_each(self, lane: _Lane, batch: list[_Pending]) -> None:
        for pending in batch:
            # Written even if its caller went away, as it would have been in the batch.
            try:
                await self._flush(lane, [pending])
            except Exception as exc:
                log.exception("append refused")
                self._fail([pending], exc)
                await self._give_back(lane)

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)

    async def _write_new(
        self, conn: Connection, batch: list[_Pending]
    ) -> list[AppendResult | BaseException] | None:
        """The batch in one statement, or None if one of its event ids is not new."""
        events = [e for p in batch for e in p.events]
        args = (
            [e.stream_id for e in events],
            [e.event_id for e in events],
            [e.event_type for e in events],
            [e.schema_version for e in events],
            [_dumps(e.payload) for e in events],
            [_dumps(e.metadata) for e in events],
        )
        projections = self._projections_for(events)
        try:
            if projections:
                async with conn.transaction():
                    row = await conn.fetchrow(_WRITE_NEW, *args)
                    assert row is not None
                    stored = _stored(events, row[1], row[0], int(row[2]), row[3])
                    await _project(conn, projections, stored)
            else:
                # No BEGIN and COMMIT: a single statement is a transaction of its own.
                row = await conn.fetchrow(_WRITE_NEW, *args)
                assert row is not None
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "pk_event_ids":
                return None
            raise
        positions, versions = row[0], row[1]
        results: list[AppendResult | BaseException] = []
        i = 0
        for p in batch:
            out = []
            for e in p.events:
                out.append(Recorded(e.event_id, e.stream_id, versions[i], positions[i], False))
                i += 1
            results.append(AppendResult(tuple(out)))
        return results

    def _projections_for(self, events: Sequence[NewEvent]) -> list[InlineProjection]:
        if not self._inline:
            return []
        types = {e.event_type for e in events}
        return [p for p in self._inline if not p.event_types.isdisjoint(types)]

    async def _write(
        self, conn: Connection, batch: list[_Pending]
    ) -> list[AppendResult | BaseException]:
        # Streams that are only expected, not written, are locked too: the check must still
        # hold when the transaction commits.
        stream_ids = sorted(
            {e.stream_id for p in batch for e in p.events}.union(*(p.expected or () for p in batch))
        )
        await conn.execute(_LOCK_STREAMS, stream_ids)
        event_ids = [e.event_id for p in batch for e in p.events]
        versions: dict[str, int] = {}
        known: dict[UUID, Recorded] = {}
        for stream_id, version, event_id, position in await conn.fetch(
            _READ_STATE, stream_ids, event_ids
        ):
            if event_id is None:
                versions[stream_id] = version
            else:
                known[event_id] = Recorded(event_id, stream_id, version, position, duplicate=True)
        believed_new = {s for s in stream_ids if s not in versions}

        # Decide each request in queue order, as if they had been appended one after the other.
        plans: list[list[NewEvent | UUID] | BaseException] = []
        fresh: list[tuple[NewEvent, int]] = []
        taken: set[UUID] = set()
        for p in batch:
            new_here = [e for e in p.events if e.event_id not in known and e.event_id not in taken]
            conflict = next(
                (
                    WrongExpectedVersion(s, exp, versions.get(s, 0))
                    for s, exp in (p.expected or {}).items()
                    if versions.get(s, 0) != exp
                ),
                None,
            )
            if conflict is not None and new_here:
                plans.append(conflict)
                continue
            # A request whose every event is already stored is a retry: it gets the original
            # result, even if the stream has moved on since.
            plan: list[NewEvent | UUID] = []
            for e in p.events:
                if e.event_id in known or e.event_id in taken:
                    plan.append(e.event_id)
                    continue
                taken.add(e.event_id)
                version = versions.get(e.stream_id, 0) + 1
                versions[e.stream_id] = version
                fresh.append((e, version))
                plan.append(e)
            plans.append(plan)

        recorded: dict[UUID, Recorded] = dict(known)
        if fresh:
            touched = sorted({e.stream_id for e, _ in fresh})
            row = await conn.fetchrow(
                _WRITE,
                touched,
                [versions[s] for s in touched],
                [e.stream_id for e, _ in fresh],
                [v for _, v in fresh],
                [e.event_id for e, _ in fresh],
                [e.event_type for e, _ in fresh],
                [e.schema_version for e, _ in fresh],
                [_dumps(e.payload) for e, _ in fresh],
                [_dumps(e.metadata) for e, _ in fresh],
            )
            assert row is not None
            if row["ids_inserted"] != len(fresh) or believed_new.intersection(row["existed"]):
                raise _Retry()
            position_of = dict(zip(row["ids"], row["positions"], strict=True))
            for e, v in fresh:
                recorded[e.event_id] = Recorded(
                    e.event_id, e.stream_id, v, position_of[e.event_id], duplicate=False
                )
            written = [e for e, _ in fresh]
            projections = self._projections_for(written)
            if projections:
                stored = _stored(
                    written,
                    [v for _, v in fresh],
                    [position_of[e.event_id] for e in written],
                    int(row["tx_id"]),
                    row["recorded_at"],
                )
                await _project(conn, projections, stored)

        results: list[AppendResult | BaseException] = []
        for plan_or_error in plans:
            if isinstance(plan_or_error, BaseException):
                results.append(plan_or_error)
                continue
            out: list[Recorded] = []
            for step in plan_or_error:
                if isinstance(step, UUID):
                    original = recorded[step]
                    out.append(
                        Recorded(
                            original.event_id,
                            original.stream_id,
                            original.stream_version,
                            original.global_position,
                            duplicate=True,
                        )
                    )
                else:
                    out.append(recorded[step.event_id])
            results.append(AppendResult(tuple(out)))
        return results

    async def read_all(self, after: Position, limit: int) -> list[StoredEvent]:
        return [row_to_event(r) for r in await reads.read_after(self._pool, after, limit)]

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        rows = await self._pool.fetch(_READ_STREAM, stream_id, from_version)
        return [row_to_event(r) for r in rows]

    async def read_events(self, event_ids: Sequence[UUID]) -> dict[UUID, StoredEvent]:
        rows = await self._pool.fetch(_READ_EVENTS, list(event_ids))
        return {e.event_id: e for e in map(row_to_event, rows)}

    async def stream_version(self, stream_id: str) -> int:
        version = await self._pool.fetchval(
            "SELECT version FROM streams WHERE stream_id = $1", stream_id
        )
        return int(version) if version is not None else 0
