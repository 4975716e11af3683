"""The log's time axis with transactions held open and committed late (issue 12, part 2).

Before: `recorded_at` was the appending transaction's start, so a transaction that began (and
stamped its event) before a cutoff but committed after it was missed by an export `--until` the
cutoff, run in between, and by an export `--since` the cutoff, run later: in neither. Now an
event is stamped after its transaction has an id, and a window is read only once settled.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.analysis.event_io import Filters, JsonlSink, export_events
from gateway.store import reads
from gateway.store.api import NewEvent
from gateway.store.postgres import PostgresEventStore
from gateway.store.reads import NotSettled


def event(stream: str, n: int) -> NewEvent:
    return NewEvent(uuid.uuid4(), stream, "ItemRetired", 1, {"item_id": f"it-{n}"})


async def begin_late_append(db_url: str, stream: str) -> tuple[asyncpg.Connection, uuid.UUID]:
    """A transaction that writes an event the way the store does (stream row first, then the
    event with its defaults) and is left open: a slow appender, before its commit."""
    conn = await asyncpg.connect(db_url)
    eid = uuid.uuid4()
    await conn.execute("BEGIN")
    await conn.execute("INSERT INTO streams (stream_id, version) VALUES ($1, 1)", stream)
    await conn.execute(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, "
        "payload) VALUES ($1, 1, $2, 'ItemRetired', 1, '{\"item_id\": \"late\"}')",
        stream,
        eid,
    )
    return conn, eid


async def export_ids(
    db_url: str, filters: Filters, *, settle: float = 30.0, seen: list[datetime] | None = None
) -> list[str]:
    conn = await asyncpg.connect(db_url)
    try:
        out = io.BytesIO()
        sink = JsonlSink(out)
        await export_events(
            conn,
            sink,
            filters,
            settle_timeout=settle,
            on_until=seen.append if seen is not None else None,
        )
        sink.close()
    finally:
        await conn.close()
    return [orjson.loads(line)["event_id"] for line in out.getvalue().splitlines()]


async def test_a_split_at_any_cutoff_loses_nothing_committed_late(
    db_url: str, pg_store: PostgresEventStore
) -> None:
    await pg_store.append([event("item-a", 0)])
    late, a = await begin_late_append(db_url, "item-late")
    try:
        b = (await pg_store.append([event("item-b", 1)])).recorded[0].event_id
        cutoff = await reads.clock(late)  # any connection: the database's clock
        # The window before the cutoff is not final while A may still commit into it: the
        # export waits for A rather than answer without it.
        before = asyncio.ensure_future(export_ids(db_url, Filters(until=cutoff)))
        await asyncio.sleep(0.5)
        assert not before.done()
        await late.execute("COMMIT")
    finally:
        await late.close()
    first = await before
    assert str(a) in first
    assert str(b) in first
    c = (await pg_store.append([event("item-c", 2)])).recorded[0].event_id
    after = await export_ids(db_url, Filters(since=cutoff))
    assert after == [str(c)]
    whole = await export_ids(db_url, Filters())
    assert sorted(first + after) == sorted(whole)
    assert len(set(first) & set(after)) == 0


async def test_a_window_held_open_too_long_is_refused_in_one_line(
    db_url: str, pg_store: PostgresEventStore
) -> None:
    late, _ = await begin_late_append(db_url, "item-held")
    try:
        cutoff = await reads.clock(late)
        with pytest.raises(NotSettled, match="not settled up to"):
            await export_ids(db_url, Filters(until=cutoff), settle=0.3)
    finally:
        await late.execute("ROLLBACK")
        await late.close()
    # The future is not a window yet.
    conn = await asyncpg.connect(db_url)
    try:
        later = (await reads.clock(conn)).replace(year=2999)
        with pytest.raises(NotSettled, match="later than the database's clock"):
            await reads.settle(conn, later, timeout=1)
    finally:
        await conn.close()


async def test_an_export_without_until_ends_at_its_start_and_says_so(
    db_url: str, pg_store: PostgresEventStore
) -> None:
    await pg_store.append([event("item-x", 3)])
    seen: list[datetime] = []
    got = await export_ids(db_url, Filters(), seen=seen)
    assert len(got) == 1
    (until,) = seen
    await pg_store.append([event("item-y", 4)])
    # Continuing from the end it reported gives exactly the rest.
    assert len(await export_ids(db_url, Filters(since=until))) == 1


async def test_recorded_at_follows_stream_order_under_contention(
    db_url: str, pg_store: PostgresEventStore, other_store: PostgresEventStore
) -> None:
    """Two processes appending to one stream: each event is stamped after the stream's lock,
    so its time never goes backwards along the stream (it could with the transaction's start)."""

    async def writer(store: PostgresEventStore, n: int) -> None:
        for i in range(n):
            await store.append([event("listener-shared", i)])

    await asyncio.gather(writer(pg_store, 40), writer(other_store, 40))
    conn = await asyncpg.connect(db_url)
    try:
        rows: list[Any] = await conn.fetch(
            "SELECT stream_version, recorded_at FROM events WHERE stream_id = 'listener-shared' "
            "ORDER BY stream_version"
        )
    finally:
        await conn.close()
    assert [r[0] for r in rows] == list(range(1, 81))
    times = [r[1] for r in rows]
    assert times == sorted(times)
