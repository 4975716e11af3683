"""The listeners projection's recent items on a real PostgreSQL: each listener's latest
RECENT_KEPT items in order, with the kinds of their latest instant, the same however the log is
batched, gone when the listener is forgotten, and started from the history in a version folded
before the table existed."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from domain.events import DomainEvent, ListenerForgotten, OutcomeKind, OutcomeRecorded
from domain.listener_fold import RECENT_KEPT
from domain.rewards import DEFAULT
from gateway.projections.definitions import PROJECTIONS, listener_reads, q, recent_items
from gateway.projections.runner import create_version
from tests.integration.projection_helpers import (
    assert_same_rows,
    assert_tables_equal,
    dump,
    expected_listener_tables,
    listener_tables,
)

pytestmark = pytest.mark.timeout(60)

LISTENERS = PROJECTIONS["listeners"]
K = OutcomeKind
T0 = datetime(2026, 3, 1, tzinfo=UTC)
RECORDED = datetime(2026, 3, 2, tzinfo=UTC)


def outcome(user: str, item: str, kind: OutcomeKind, minute: int) -> OutcomeRecorded:
    return OutcomeRecorded(uuid.uuid4(), user, item, kind, T0 + timedelta(minutes=minute))


def log() -> list[DomainEvent]:
    """Listener a plays 60 items, one a minute (two of them at the same minute), skips one,
    dislikes another after playing it, is shown one they never play, and replays an old one.
    Listener b plays three. Shuffled: the projection orders by when things happened, not by
    when they were recorded."""
    events: list[DomainEvent] = []
    for k in range(60):
        events.append(outcome("a", f"t{k:02d}", K.STREAM_30S, k))
    events.append(outcome("a", "tie", K.STREAM_30S, 59))  # at t59's instant: ids order the two
    events.append(outcome("a", "tie", K.LIKE, 59))  # kinds of one instant join
    events.append(outcome("a", "skipped", K.SKIP, 61))
    events.append(outcome("a", "t58", K.DISLIKE, 62))  # played, then turned down
    events.append(outcome("a", "shown", K.IMPRESSION, 63))  # says nothing: not recent
    events.append(outcome("a", "t05", K.STREAM_START, 64))  # an old item played again
    events.append(outcome("a", "t05", K.STREAM_START, 3))  # a late copy from long ago
    events.extend(outcome("b", f"t{k:02d}", K.COMPLETE, k) for k in range(3))
    random.Random(14).shuffle(events)
    return events


async def folded(conn: asyncpg.Connection, events: list[DomainEvent], seed: int | None) -> str:
    """A new version with `events` applied in one batch (seed None) or in random batches."""
    version = await create_version(conn, LISTENERS, DEFAULT, "building")
    timed = [(RECORDED, e) for e in events]
    rng = random.Random(seed)
    i = 0
    while i < len(timed):
        n = len(timed) if seed is None else rng.choice([1, 2, 3, 7, 20])
        async with conn.transaction():
            await LISTENERS.apply(conn, version.schema, timed[i : i + n], DEFAULT)
        i += n
    return version.schema


async def test_latest_items_in_order_bounded_signed(conn: asyncpg.Connection) -> None:
    schema = await folded(conn, log(), seed=3)
    got = await recent_items(conn, schema, "a", 100)
    assert len(got) == RECENT_KEPT
    ids = [item for item, _ in got]
    # Latest first; at one instant the larger id (byte order) first.
    assert ids[:6] == ["t05", "t58", "skipped", "tie", "t59", "t57"]
    assert "shown" not in ids
    # Bounded: the oldest plays fell out, except t05, played again.
    assert ids[-1] == "t13"
    assert not {"t00", "t12"} & set(ids)
    weights = dict(got)
    # The weight of what the listener did last with the item, whatever came before.
    assert weights["skipped"] == -0.5  # a quick skip counts against
    assert weights["t58"] == -2.0  # so does a dislike after a play
    assert weights["tie"] == 2.0  # stream_30s + like, at one instant
    assert weights["t05"] == 0.0  # started again: neither for nor against
    kinds = {
        r[0]: r[1]
        for r in await conn.fetch(
            f"SELECT item_id, kinds FROM {q(schema)}.recent WHERE listener = 'a' "
            "AND item_id = ANY($1::text[])",
            ["tie", "t05", "t58"],
        )
    }
    assert kinds == {"tie": ["like", "stream_30s"], "t05": ["stream_start"], "t58": ["dislike"]}
    assert [item for item, _ in await recent_items(conn, schema, "b", 2)] == ["t02", "t01"]
    assert await recent_items(conn, schema, "nobody", 10) == []


async def test_any_batching_gives_the_same_rows_and_the_folds_answer(
    conn: asyncpg.Connection,
) -> None:
    events = log()
    whole = await folded(conn, events, seed=None)
    for seed in (1, 2):
        pieces = await folded(conn, events, seed=seed)
        assert_same_rows(await dump(conn, LISTENERS, pieces), await dump(conn, LISTENERS, whole))
    timed = [(RECORDED, e) for e in events]
    assert_tables_equal(await listener_tables(conn, whole), expected_listener_tables(timed))


async def test_a_forgotten_listener_has_no_recent_items(conn: asyncpg.Connection) -> None:
    events = [*log(), ListenerForgotten("a"), outcome("a", "late", K.STREAM_30S, 90)]
    schema = await folded(conn, events[:-2], seed=4)
    async with conn.transaction():
        await LISTENERS.apply(conn, schema, [(RECORDED, e) for e in events[-2:]], DEFAULT)
    assert await recent_items(conn, schema, "a", 100) == []
    assert len(await recent_items(conn, schema, "b", 100)) == 3


async def test_a_version_without_the_table_starts_it_from_the_history(
    conn: asyncpg.Connection,
) -> None:
    schema = await folded(conn, log(), seed=None)
    await conn.execute(f"DROP TABLE {q(schema)}.recent")
    await LISTENERS.prepare(conn, schema)
    started = await recent_items(conn, schema, "a", 100)
    # What was heard, by when it was last heard: the skip and the dislike are not in it.
    ids = [i for i, _ in started]
    assert ids[:4] == ["t05", "tie", "t59", "t58"]
    assert "skipped" not in ids
    assert {w for _, w in started} == {1.0}  # each a play
    assert len(started) == RECENT_KEPT
    # Idempotent: a second prepare changes nothing.
    await LISTENERS.prepare(conn, schema)
    assert await recent_items(conn, schema, "a", 100) == started


async def test_one_read_gives_what_was_heard_and_the_recent_items(
    conn: asyncpg.Connection,
) -> None:
    """`listener_reads`, the request's one read of a listener, answers what the history and
    `recent_items` do."""
    schema = await folded(conn, log(), seed=5)
    for listener in ("a", "b", "nobody"):
        rows = await conn.fetch(
            f"SELECT item_id FROM {q(schema)}.history WHERE listener = $1", listener
        )
        heard = {r[0] for r in rows}
        for limit in (0, 1, 3, 100):
            got_heard, got_recent = await listener_reads(
                conn, schema, listener, heard=True, recent=limit
            )
            assert got_heard == heard
            assert got_recent == await recent_items(conn, schema, listener, limit)
        assert (await listener_reads(conn, schema, listener, heard=False, recent=2))[0] == set()
    assert (await listener_reads(conn, schema, "a", heard=True, recent=0))[0]
