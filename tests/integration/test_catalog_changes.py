"""The catalogue change feed: a gateway keeps its in-memory catalogue current by reading only
the rows written since its last read, and misses no commit, however late it comes."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from gateway.projections.catalog import RETIRE, UPSERT
from gateway.serving.catalog import Catalog
from gateway.serving.items import ItemScore, ItemTable
from gateway.store.database import create_pool
from gateway.store.postgres import PostgresEventStore


async def upsert(conn: Any, item: str, artist: str = "a") -> None:
    await conn.execute(
        UPSERT, [item], ["track"], [f'{{"artist": "{artist}"}}'], ["null"], [False], [1]
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
        await late.execute(RETIRE, ["old0"], [2])
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
    await pool.execute(RETIRE, ["x"], [3])
    catalog.invalidate()
    assert not (await catalog.table()).live[table.row["x"]]
    assert await catalog.count_live() == 0


async def _seq_scans(pool: asyncpg.Pool, worker: asyncpg.Pool) -> int:
    """Sequential scans of `catalog_items` so far, with `worker`'s (one connection) counted."""
    # A session's counters reach the shared statistics when it goes idle, at most once a
    # second: ask for the next flush, let it go idle, and read them from a fresh snapshot.
    await worker.execute("SELECT pg_stat_force_next_flush()")
    await asyncio.sleep(0.5)
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(
            await conn.fetchval(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'catalog_items'"
            )
        )


async def test_reading_changes_uses_the_index_whatever_the_planner_thinks(
    pool: asyncpg.Pool, pg_store: PostgresEventStore, db_url: str
) -> None:
    """At a million rows loaded in bulk and not analysed yet, the planner read the whole table
    to find the few rows changed (0.3 s, twice a second, in every process). Here the planner is
    made to prefer a scan the same way (index pages priced very high); the change feed must
    still read through the index."""
    await pool.execute(
        "INSERT INTO catalog_items (item_id, kind, attributes, global_position) "
        "SELECT 'bulk' || g, 'track', '{}', 1 FROM generate_series(1, 5000) AS g"
    )
    await pool.execute(
        "DO $$ BEGIN EXECUTE format("
        "'ALTER DATABASE %I SET random_page_cost = 100000', current_database()); END $$"
    )
    scanning = await create_pool(db_url, min_size=1, max_size=1)
    try:
        plan = "\n".join(
            r[0]
            for r in await scanning.fetch(
                "EXPLAIN SELECT item_id FROM catalog_items WHERE tx_id >= $1", 1 << 40
            )
        )
        assert "Seq Scan" in plan, plan  # the planner does prefer to scan here
        table = ItemTable(0.2, ItemScore(0, 0.0, 0.1, 0.0))
        catalog = Catalog(scanning, pg_store, 3600.0, table)
        await catalog.catch_up()  # the first read is the whole catalogue: a scan is right
        assert table.live_count == 5000
        before = await _seq_scans(pool, scanning)
        for k in range(5):
            await upsert(pool, f"new{k}")
            catalog.invalidate()
            await catalog.catch_up()
        assert table.live_count == 5005
        assert await _seq_scans(pool, scanning) == before
    finally:
        await scanning.close()
