"""Projection checks shared by the fault scenarios: caught up with the log, and equal to a
version built from zero by a fresh runner."""

from __future__ import annotations

import asyncpg

from gateway.projections.definitions import PROJECTIONS
from gateway.store.api import Position
from tests.integration.projection_helpers import (
    DEADLINE,
    assert_same_rows,
    build_from_zero,
    dump,
    events_up_to,
    log_end,
)

NAMES = frozenset(PROJECTIONS)


async def live(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT name, version, schema_name, tx_id::text AS tx_id, global_position, "
        "events_applied FROM projections WHERE status = 'live' ORDER BY name"
    )


async def caught_up(conn: asyncpg.Connection) -> bool:
    """Every projection has a live version whose checkpoint is at the end of the log."""
    target = await log_end(conn)
    rows = await live(conn)
    return {r["name"] for r in rows} == NAMES and all(
        Position(int(r["tx_id"]), r["global_position"]) >= target for r in rows
    )


async def assert_equal_to_rebuilds(db_url: str, conn: asyncpg.Connection) -> int:
    """Each live version has applied every event exactly once (its count of applied events is
    the number of events up to its checkpoint) and holds exactly what a version built from zero
    holds. Returns the number of events in the log."""
    count = int(await conn.fetchval("SELECT count(*) FROM events"))
    # A soak leaves half a million events; the rewards fold catches up at ~10k events/s on two
    # busy cores, so the rebuild's deadline grows with the log (2,000 events/s at worst).
    deadline = max(DEADLINE, count / 2000)
    for r in await live(conn):
        position = Position(int(r["tx_id"]), r["global_position"])
        assert r["events_applied"] == await events_up_to(conn, position) == count, r["name"]
        projection = PROJECTIONS[r["name"]]
        rebuilt = await build_from_zero(db_url, conn, projection, deadline=deadline)
        assert_same_rows(
            await dump(conn, projection, r["schema_name"]),
            await dump(conn, projection, rebuilt.schema),
        )
    return count
