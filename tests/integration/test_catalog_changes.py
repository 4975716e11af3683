"""The catalogue change feed: a gateway keeps its in-memory catalogue current by reading only
the rows written since its last read, and misses no commit, however late it comes."""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway.catalog import _RETIRE, _UPSERT, Catalog
from gateway.event_store import PostgresEventStore
from gateway.items import ItemScore, ItemTable


async def upsert(conn: Any, item: str, artist: str = "a") -> None:
    await conn.execute(
        _UPSERT, [item], ["track"], [f'{{"artist": "{artist}"}}'], ["null"], [False], [1]
    )


async def test_catch_up_reads_changes_only_and_misses_no_late_commit(
    pool: asyncpg.Pool, pg_store: PostgresEventStore
) -> None:
    table = ItemTable(0.2, ItemScore(0, 0.0, 0.1, 0.0))
    catalog = Catalog(pool, pg_store, 3600.0, table)
    for k in range(5):
        await upsert(pool, f"old{k}")
    assert await catalog.catch_up() == 5  # the first read loads the whole live catalogue
    assert table.live_count == 5

    late = await pool.acquire()
    try:
        tx = late.transaction()
        await tx.start()
        # A transaction that writes now and commits after the next read.
        await upsert(late, "late")
        await late.execute(_RETIRE, ["old0"], [2])
        await upsert(pool, "early")  # begins after, commits before
        catalog.invalidate()
        await catalog.catch_up()
        assert "early" in table.row
        assert "late" not in table.row
        assert table.live[table.row["old0"]]
        await tx.commit()
    finally:
        await pool.release(late)
    catalog.invalidate()
    # Rows of transactions still open at the last read are read again: nothing is missed. (How
    # many rows a read returns is not asserted: on a shared server, other databases' open
    # transactions hold the snapshot's xmin back too, and more rows are read again.)
    assert await catalog.catch_up() >= 2
    assert table.live[table.row["late"]]
    assert not table.live[table.row["old0"]]
    assert table.live_count == 6


async def test_a_change_by_this_process_is_served_at_once(
    pool: asyncpg.Pool, pg_store: PostgresEventStore
) -> None:
    table = ItemTable(0.2, ItemScore(0, 0.0, 0.1, 0.0))
    catalog = Catalog(pool, pg_store, 3600.0, table)
    await catalog.table()
    await upsert(pool, "x", artist="someone")
    assert "x" not in table.row  # another process's change waits for the next read...
    catalog.invalidate()  # ...this process's own is read before its next request
    assert (await catalog.table()).live[table.row["x"]]
    await pool.execute(_RETIRE, ["x"], [3])
    catalog.invalidate()
    assert not (await catalog.table()).live[table.row["x"]]
    assert await catalog.count_live() == 0
