"""The log's reads for the wings above the store, each a named function over a connection the
caller holds (a projector reads inside the transaction that writes its checkpoint; an export
reads from one snapshot). Nothing outside `gateway.store` names the `events` table: the log's
layout (its columns, the `(tx_id, global_position)` reading order, the commit-safe horizon) is
known here only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from gateway.store.api import START, Position

Executor = Any  # asyncpg.Connection, a pool, or a pool's connection proxy

# Events after a reader position, up to the commit-safe horizon: a transaction still open holds
# the horizon back, so an event that commits late is never skipped.
READ_AFTER = """
SELECT global_position, tx_id::text, recorded_at, stream_id, stream_version, event_id,
       event_type, schema_version, payload::text, metadata::text
FROM events
WHERE (tx_id, global_position) > ($1::text::xid8, $2::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY events.tx_id, global_position  -- the column, not the text alias: numeric order, indexed
LIMIT $3
"""


class NotSettled(Exception):
    """An instant of the log that cannot be served yet (or at all): events recorded before it
    may still commit, or it is later than the database's clock."""


async def clock(conn: Executor) -> datetime:
    """The database's clock, the one `recorded_at` is read from."""
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


async def next_xid(conn: Executor) -> int:
    """A transaction id above every one assigned so far: the id of a transaction of its own,
    made and ended here (a snapshot's xmax is not that: it is one past the latest *completed*
    transaction, and running ones may be above it). A statement of its own, after any clock
    reading it is paired with; `conn` must not be inside a transaction."""
    return int(await conn.fetchval("SELECT pg_current_xact_id()::text"))


async def oldest_open_xid(conn: Executor) -> int:
    """The id of the oldest transaction still running (or the next id, if none is)."""
    return int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))


async def settle(conn: Executor, until: datetime, *, timeout: float) -> None:  # noqa: ASYNC109
    """Return once no event recorded before `until` can still commit: every such event is
    visible to a snapshot taken afterwards, so a window of the log ending at `until`, read then,
    is final.

    An event is stamped (`clock_timestamp()`) after its transaction has an id (migration 0008),
    so one stamped before `until` belongs to a transaction that had an id before the clock read
    here, hence below an id taken after it; once the oldest running transaction is past that
    id, all of them have ended. Raises NotSettled if `until` is later than the database's
    clock, or if a transaction stays open beyond `timeout` seconds. `conn` must not be inside a
    repeatable-read transaction (its snapshot would never move)."""
    now = await clock(conn)
    if until > now:
        raise NotSettled(f"{until.isoformat()} is later than the database's clock ({now})")
    bound = await next_xid(conn)
    deadline = time.monotonic() + timeout
    wait = 0.01
    while await oldest_open_xid(conn) < bound:
        if time.monotonic() > deadline:
            raise NotSettled(
                f"the log is not settled up to {until.isoformat()}: a transaction open for "
                f"more than {timeout:g} s may still commit events recorded before it"
            )
        await asyncio.sleep(wait)
        wait = min(wait * 2, 0.25)


# As READ_AFTER, below a horizon read beforehand (`oldest_open_xid`): the reader then knows
# that, if fewer than the limit come back, every event below that horizon has been read.
READ_BELOW = """
SELECT global_position, tx_id::text, recorded_at, stream_id, stream_version, event_id,
       event_type, schema_version, payload::text, metadata::text
FROM events
WHERE (tx_id, global_position) > ($1::text::xid8, $2::bigint)
  AND tx_id < $4::text::xid8
ORDER BY events.tx_id, global_position
LIMIT $3
"""


async def read_after(
    conn: Executor, after: Position, limit: int, *, below: int | None = None
) -> list[asyncpg.Record]:
    """Up to `limit` events after `after`, in reading order (rows for `row_to_event`), below
    the commit-safe horizon: this statement's own, or `below` (an `oldest_open_xid` read
    earlier, which is commit-safe for ever after)."""
    if below is None:
        rows: list[asyncpg.Record] = await conn.fetch(
            READ_AFTER, str(after.tx_id), after.global_position, limit
        )
    else:
        rows = await conn.fetch(
            READ_BELOW, str(after.tx_id), after.global_position, limit, str(below)
        )
    return rows


async def clock_and_next_xid(conn: Executor) -> tuple[datetime, int]:
    """(t, x): the database's clock, then an id above every transaction id assigned before t
    (one statement: its target list is computed in order, the clock first). Every event
    recorded before t belongs to a transaction whose id is below x. Consumes a transaction id;
    `conn` must not be inside a transaction."""
    row = await conn.fetchrow("SELECT clock_timestamp(), pg_current_xact_id()::text")
    return row[0], int(row[1])


async def head(conn: Executor) -> Position:
    """The position of the last event every reader may already see."""
    row = await conn.fetchrow(
        "SELECT tx_id::text, global_position FROM events "
        "WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) "
        "ORDER BY events.tx_id DESC, global_position DESC LIMIT 1"
    )
    return START if row is None else Position(int(row[0]), row[1])


async def position_of(conn: Executor, global_position: int) -> Position:
    """The reader position of one stored event (e.g. from an append's result)."""
    tx = await conn.fetchval(
        "SELECT tx_id::text FROM events WHERE global_position = $1", global_position
    )
    if tx is None:
        raise LookupError(f"no event at {global_position}")
    return Position(int(tx), global_position)


async def behind(
    conn: Executor,
    position: Position,
    *,
    timeout: float | None = None,  # noqa: ASYNC109  (the statement's own bound)
) -> tuple[int, float]:
    """How many events follow `position` (counted up to ten million) and the age in seconds of
    the oldest of them (0 when none)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(recorded_at)) AS s FROM "
        "(SELECT recorded_at FROM events WHERE (tx_id, global_position) > "
        "($1::text::xid8, $2::bigint) LIMIT 10000000) AS behind",
        str(position.tx_id),
        position.global_position,
        timeout=timeout,
    )
    assert row is not None
    return int(row["n"]), float(row["s"] or 0.0)


async def count(conn: Executor, *, timeout: float | None = None) -> int:  # noqa: ASYNC109
    """Every event stored."""
    return int(await conn.fetchval("SELECT count(*) FROM events", timeout=timeout))


async def any_of_type(conn: Executor, event_type: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events WHERE event_type = $1)", event_type
        )
    )


async def first_events(
    conn: Executor, stream_ids: Sequence[str], event_type: str, field: str
) -> list[tuple[str, str]]:
    """(stream id, payload[field] as JSON text) of the first event of each of `stream_ids`
    that is of `event_type` (e.g. the slate of each recommendation)."""
    rows = await conn.fetch(
        "SELECT stream_id, (payload->$3)::text FROM events "
        "WHERE stream_id = ANY($1::text[]) AND stream_version = 1 AND event_type = $2",
        list(stream_ids),
        event_type,
        field,
    )
    return [(r[0], r[1]) for r in rows]


# --- for the report -------------------------------------------------------------------------


async def counts_by_type(
    conn: Executor, since: datetime | None, until: datetime | None
) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT event_type, count(*) FROM events "
        "WHERE ($1::timestamptz IS NULL OR recorded_at >= $1) "
        "AND ($2::timestamptz IS NULL OR recorded_at < $2) "
        "GROUP BY event_type ORDER BY event_type",
        since,
        until,
    )
    return {r[0]: int(r[1]) for r in rows}


# Each outcome on the report's time axis: the request time of the slate it answers, found through
# the slate's stream (a probe of the (stream_id, stream_version) index per outcome), or, for an
# outcome that answers no slate in the log (organic listening), the time it occurred by the
# client's clock. Never `recorded_at`: that is when the store wrote it, and a backfill or an
# import writes weeks of outcomes in one minute.
_OUTCOMES_BY_DAY = """
SELECT date_trunc('day', coalesce(s.served_at, o.occurred_at), 'UTC') AS day,
       s.served_at IS NOT NULL AS from_slate, o.kind, count(*) AS n
FROM (
    SELECT payload ->> 'kind' AS kind, (payload ->> 'occurred_at')::timestamptz AS occurred_at,
           ((payload ->> 'recommendation_id')::uuid)::text AS rec
    FROM events WHERE event_type = 'OutcomeRecorded'
) AS o
LEFT JOIN LATERAL (
    SELECT (r.payload ->> 'requested_at')::timestamptz AS served_at
    FROM events r
    WHERE o.rec IS NOT NULL AND r.stream_id = 'recommendation-' || o.rec
      AND r.stream_version = 1 AND r.event_type = 'RecommendationServed'
    LIMIT 1
) AS s ON true
WHERE ($1::timestamptz IS NULL OR coalesce(s.served_at, o.occurred_at) >= $1)
  AND ($2::timestamptz IS NULL OR coalesce(s.served_at, o.occurred_at) < $2)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


async def daily_outcome_counts(
    conn: Executor, since: datetime | None, until: datetime | None
) -> list[tuple[datetime, bool, str, int]]:
    """Outcomes by (UTC day, whether they answer a served slate, kind), the day being the
    answered slate's request day, else the outcome's own `occurred_at` day; the window applies to
    the same time."""
    rows = await conn.fetch(_OUTCOMES_BY_DAY, since, until)
    return [(r["day"], bool(r["from_slate"]), r["kind"], int(r["n"])) for r in rows]


# The rewards projection holds each served slate and the reward attributed to each of its
# impressions; the policy is only in the event, reached through the recommendation's stream.
_REWARDS = """
SELECT date_trunc('day', s.requested_at, 'UTC') AS day, s.surface,
       (e.payload->'policy'->>'name') || ' ' || (e.payload->'policy'->>'version') AS policy,
       count(*) AS slates, coalesce(sum(r.reward), 0)::float8 AS reward
FROM {schema}.served s
JOIN events e ON e.stream_id = 'recommendation-' || s.rec_id::text AND e.stream_version = 1
LEFT JOIN (SELECT rec_id, sum(reward) AS reward FROM {schema}.impressions GROUP BY rec_id) r
       ON r.rec_id = s.rec_id
WHERE ($1::timestamptz IS NULL OR s.requested_at >= $1)
  AND ($2::timestamptz IS NULL OR s.requested_at < $2)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


async def rewards_by_policy(
    conn: Executor, schema: str, since: datetime | None, until: datetime | None
) -> list[asyncpg.Record]:
    """Per UTC serving day, surface and policy of the slates in the rewards projection at
    `schema` (already quoted): slates served and reward attributed (`day, surface, policy,
    slates, reward`)."""
    rows: list[asyncpg.Record] = await conn.fetch(_REWARDS.format(schema=schema), since, until)
    return rows


# --- for offline evaluation -----------------------------------------------------------------

_ATTRIBUTABLE = """
WHERE event_type = 'RecommendationServed'
   OR (event_type = 'OutcomeRecorded' AND payload->>'recommendation_id' IS NOT NULL)
"""


async def count_slates_and_attributed(conn: Executor) -> int:
    """Served slates and the outcomes that name one: what offline evaluation reads."""
    return int(await conn.fetchval(f"SELECT count(*) FROM events {_ATTRIBUTABLE}"))


def slates_and_attributed(conn: asyncpg.Connection, prefetch: int) -> Any:
    """A cursor over those events in log order (`event_type, schema_version, payload::text,
    recorded_at`); iterate it inside a transaction."""
    return conn.cursor(
        "SELECT event_type, schema_version, payload::text, recorded_at FROM events "
        f"{_ATTRIBUTABLE} ORDER BY events.tx_id, events.global_position",
        prefetch=prefetch,
    )


# --- for the Personalizer-compatible routes -------------------------------------------------


async def served_between(
    conn: Executor,
    surface: str,
    after: tuple[datetime, int],
    until: datetime,
    limit: int,
) -> list[tuple[datetime, int, int, str]]:
    """(recorded_at, global position, schema version, payload as JSON text) of the slates
    served on `surface`, recorded after `after` (a recorded_at and a position: where the previous
    page ended) and before `until`, in that order; at most `limit` of them. The plain bound on
    `recorded_at` is what the events table's BRIN index serves; the row comparison pages."""
    rows = await conn.fetch(
        "SELECT recorded_at, global_position, schema_version, payload::text FROM events "
        "WHERE event_type = 'RecommendationServed' AND payload->>'surface' = $1 "
        "AND recorded_at >= $2 AND (recorded_at, global_position) > ($2, $3) "
        "AND recorded_at < $4 "
        "ORDER BY recorded_at, global_position LIMIT $5",
        surface,
        after[0],
        after[1],
        until,
        limit,
    )
    return [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]


# --- for an experiment's status -------------------------------------------------------------

_EXPERIMENT_SLATES = """
SELECT payload->>'recommendation_id', payload->>'user', payload->'experiment'->>'arm',
       payload->>'requested_at'
FROM events
WHERE event_type = 'RecommendationServed' AND payload->'experiment'->>'name' = $1
"""

# The same listeners' slates before the experiment started: the CUPED covariate.
_PRE_SLATES = """
SELECT payload->>'recommendation_id', payload->>'user', payload->>'requested_at'
FROM events
WHERE event_type = 'RecommendationServed' AND payload->>'user' = ANY($1::text[])
  AND recorded_at >= $2 AND recorded_at < $3
"""

_ATTRIBUTED_TO = """
SELECT payload->>'recommendation_id', payload->>'kind', (payload->>'value')::float8,
       payload->>'occurred_at'
FROM events
WHERE event_type = 'OutcomeRecorded' AND payload->>'recommendation_id' = ANY($1::text[])
"""

_FORGOTTEN = """
SELECT DISTINCT payload->>'user' FROM events
WHERE event_type = 'ListenerForgotten' AND payload->>'user' = ANY($1::text[])
"""


async def experiment_log(
    conn: Executor, name: str, pre_from: datetime, started_at: datetime
) -> tuple[list[asyncpg.Record], list[asyncpg.Record], list[asyncpg.Record], set[str]]:
    """What an experiment's analysis reads: its slates (`recommendation_id, user, arm,
    requested_at`), its listeners' slates recorded in [pre_from, started_at)
    (`recommendation_id, user, requested_at`), the outcomes naming any of them
    (`recommendation_id, kind, value, occurred_at`), and which of its listeners were forgotten."""
    slates: list[asyncpg.Record] = await conn.fetch(_EXPERIMENT_SLATES, name)
    users = sorted({r[1] for r in slates})
    pre: list[asyncpg.Record] = await conn.fetch(_PRE_SLATES, users, pre_from, started_at)
    ids = [r[0] for r in slates] + [r[0] for r in pre]
    outcomes: list[asyncpg.Record] = await conn.fetch(_ATTRIBUTED_TO, ids)
    forgotten = {r[0] for r in await conn.fetch(_FORGOTTEN, users)}
    return slates, pre, outcomes, forgotten
