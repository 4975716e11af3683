"""Migration 0004: a database migrated to 0003 by code that did not know `ListenerForgotten`
learns its schema; the downgrade takes it back out."""

from __future__ import annotations

import asyncpg

from gateway.store.database import migrate


async def forgotten_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM analytics.event_types WHERE event_type = 'ListenerForgotten'"
        )
        return int(n)
    finally:
        await conn.close()


async def test_0004_publishes_the_listener_forgotten_schema(empty_db_url: str) -> None:
    await migrate(empty_db_url, "0003")
    conn = await asyncpg.connect(empty_db_url)
    try:  # as 0003 left it when run by older code
        await conn.execute(
            "DELETE FROM analytics.event_types WHERE event_type = 'ListenerForgotten'"
        )
    finally:
        await conn.close()
    await migrate(empty_db_url, "0004")
    assert await forgotten_rows(empty_db_url) == 1
    await migrate(empty_db_url, "0003", downgrade=True)
    assert await forgotten_rows(empty_db_url) == 0
    await migrate(empty_db_url)
    assert await forgotten_rows(empty_db_url) == 1
