"""Readers order by the numeric transaction id, never by its text.

The read statements return `tx_id::text`; an `ORDER BY tx_id` next to that output column sorts by
the text ("10" before "9") and cannot use the (tx_id, global_position) index. Transaction ids are
set by hand here, on both sides of a digit boundary, to pin the order.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from gateway.projections.runner import head
from gateway.store.api import START, Position
from gateway.store.postgres import PostgresEventStore
from gateway.store.reads import READ_AFTER


async def _insert(pool: asyncpg.Pool, tx_id: int, position_hint: str) -> None:
    await pool.execute(
        "INSERT INTO events (tx_id, stream_id, stream_version, event_id, event_type, "
        "schema_version, payload) VALUES ($1::text::xid8, $2, 1, $3, 'Probe', 1, '{}')",
        str(tx_id),
        f"probe-{position_hint}",
        uuid.uuid4(),
    )


async def test_commit_order_is_numeric_across_a_digit_boundary(
    pool: asyncpg.Pool, pg_store: PostgresEventStore
) -> None:
    # Old transaction ids (all below any live snapshot's xmin), inserted out of order.
    for tx_id, hint in [(10, "b"), (9, "a"), (100, "c")]:
        await _insert(pool, tx_id, hint)
    events = await pg_store.read_all(START, 10)
    assert [e.tx_id for e in events] == [9, 10, 100]
    assert [e.stream_id for e in events] == ["probe-a", "probe-b", "probe-c"]
    # Paging from the middle continues in the same order.
    after_nine = await pg_store.read_all(events[0].position, 10)
    assert [e.tx_id for e in after_nine] == [10, 100]
    assert await head(pool) == Position(100, events[-1].global_position)


# One statement since the wings (the store and the projectors both read through
# `gateway.store.reads.read_after`); kept parametrised for any reader added later.
@pytest.mark.parametrize("query", [READ_AFTER], ids=["store-and-projector"])
async def test_the_readers_use_the_commit_order_index(pool: asyncpg.Pool, query: str) -> None:
    for tx_id in range(1, 200):
        await _insert(pool, tx_id, str(tx_id))
    await pool.execute("ANALYZE events")
    plan = "\n".join(r[0] for r in await pool.fetch("EXPLAIN " + query, "0", 0, 5))
    assert "ix_events_tx_position" in plan, plan
    assert "Sort" not in plan, plan
