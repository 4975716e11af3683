"""Whole-log reads and writes for export and import: an export's filter and cursor, and an
import's staging table and its one-transaction append. The file formats are
`gateway.analysis.event_io`'s; the log's layout is known here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from gateway.store.api import StoredEvent
from gateway.store.postgres import STREAM_LOCK_KEYS, Connection, row_to_event


def export_filter(
    since: datetime | None,
    until: datetime | None,
    types: tuple[str, ...],
    surfaces: tuple[str, ...],
) -> tuple[str, list[Any]]:
    """The WHERE clause (with its `$n` arguments) of an export: `since` inclusive and `until`
    exclusive on `recorded_at`; empty tuples mean any; an outcome has its slate's surface."""
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if since is not None:
        clauses.append(f"e.recorded_at >= {arg(since)}")
    if until is not None:
        clauses.append(f"e.recorded_at < {arg(until)}")
    if types:
        clauses.append(f"e.event_type = ANY({arg(list(types))}::text[])")
    if surfaces:
        # A slate has a surface; an outcome has its slate's. Nothing else has one.
        s = arg(list(surfaces))
        clauses.append(
            f"((e.event_type = 'RecommendationServed' AND e.payload->>'surface' = ANY({s}))"
            " OR (e.event_type = 'OutcomeRecorded' AND EXISTS ("
            "SELECT 1 FROM events r WHERE r.stream_id = 'recommendation-' || "
            "(e.payload->>'recommendation_id') AND r.stream_version = 1 "
            f"AND r.event_type = 'RecommendationServed' AND r.payload->>'surface' = ANY({s}))))"
        )
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


_EXPORT = (
    "SELECT e.event_type, e.event_id, e.recorded_at, e.schema_version, e.stream_id, "
    "e.stream_version, e.payload::text, e.metadata::text FROM events e{where} "
    "ORDER BY e.tx_id, e.global_position"
)


async def count_exported(conn: Connection, where: str, args: Sequence[Any]) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM events e{where}", *args))


def export_cursor(conn: Connection, where: str, args: Sequence[Any], *, prefetch: int) -> Any:
    """The matching events in commit order (`event_type, event_id, recorded_at,
    schema_version, stream_id, stream_version, payload, metadata`); iterate it inside a
    transaction."""
    return conn.cursor(_EXPORT.format(where=where), *args, prefetch=prefetch)


STAGING = (
    "CREATE TEMP TABLE segue_import (line bigint, stream_id text, event_id uuid, "
    "event_type text, schema_version int2, payload jsonb, metadata jsonb, recorded_at "
    "timestamptz) ON COMMIT PRESERVE ROWS"
)

# The same locks the store's appends take (every key, in key order), so that no append is
# between reading a stream's version and writing after it, and so that this transaction's id,
# given at its first write, is larger than that of every append it waited for.
LOCK_ALL_STREAMS = (
    "SELECT count(pg_advisory_xact_lock(hashtext('segue.streams'), k)) "
    f"FROM generate_series(0, {STREAM_LOCK_KEYS - 1}) AS k"
)

APPEND_STAGED = """
WITH new AS MATERIALIZED (
    SELECT DISTINCT ON (s.event_id) s.* FROM segue_import s
    WHERE NOT EXISTS (SELECT 1 FROM event_ids i WHERE i.event_id = s.event_id)
    ORDER BY s.event_id, s.line
), numbered AS (
    SELECT n.*, coalesce(st.version, 0)
                + row_number() OVER (PARTITION BY n.stream_id ORDER BY n.line) AS version
    FROM new n LEFT JOIN streams st ON st.stream_id = n.stream_id
), e AS (
    INSERT INTO events (recorded_at, stream_id, stream_version, event_id, event_type,
                        schema_version, payload, metadata)
    SELECT recorded_at, stream_id, version, event_id, event_type, schema_version, payload,
           metadata
    FROM numbered ORDER BY line
    RETURNING global_position, stream_id, stream_version, event_id
), i AS (
    INSERT INTO event_ids (event_id, global_position, stream_id, stream_version)
    SELECT event_id, global_position, stream_id, stream_version FROM e
), s AS (
    INSERT INTO streams (stream_id, version)
    SELECT stream_id, max(stream_version) FROM e GROUP BY stream_id
    ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version
)
SELECT count(*) FROM e
"""

_MINE = """
SELECT global_position, tx_id::text, recorded_at, stream_id, stream_version, event_id,
       event_type, schema_version, payload::text, metadata::text
FROM events WHERE tx_id = pg_current_xact_id() AND event_type = ANY($1::text[])
ORDER BY global_position
"""


async def create_staging(conn: asyncpg.Connection) -> None:
    await conn.execute("DROP TABLE IF EXISTS pg_temp.segue_import")
    await conn.execute(STAGING)


async def stage(conn: asyncpg.Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Copy rows (`line, stream_id, event_id, event_type, schema_version, payload, metadata,
    recorded_at`) into the staging table."""
    await conn.copy_records_to_table("segue_import", records=rows)


async def append_staged(conn: asyncpg.Connection) -> int:
    """Append the staged events not already stored (in the caller's transaction, holding every
    stream lock); returns how many."""
    await conn.execute(LOCK_ALL_STREAMS)
    return int(await conn.fetchval(APPEND_STAGED))


async def written_here(conn: asyncpg.Connection, types: Sequence[str]) -> list[StoredEvent]:
    """The events of `types` this transaction appended."""
    return [row_to_event(r) for r in await conn.fetch(_MINE, list(types))]


async def drop_staging(conn: asyncpg.Connection) -> None:
    await conn.execute("DROP TABLE IF EXISTS pg_temp.segue_import")
