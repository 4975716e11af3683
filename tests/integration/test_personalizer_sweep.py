"""The default-reward sweep's read: every Personalizer slate of a window, page after page, and
only those (`reads.served_between`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from domain.events import RecommendationServed, SlateEntry, to_payload
from gateway.store import reads
from gateway.store.api import NewEvent
from gateway.store.postgres import PostgresEventStore


def slate(surface: str) -> NewEvent:
    event = RecommendationServed(
        recommendation_id=uuid.uuid4(),
        user="p",
        surface=surface,
        context={},
        slate=(SlateEntry("a", 0, 0.0, 1.0),),
        policy_name="x",
        policy_version="1",
        index_version="none",
        requested_at=datetime.now(UTC),
    )
    return NewEvent(
        uuid.uuid4(), event.stream_id(), event.TYPE, event.SCHEMA_VERSION, to_payload(event)
    )


async def test_pages_cover_the_window_once(
    pg_store: PostgresEventStore, pool: asyncpg.Pool
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    wanted = []
    for i in range(7):
        # Several in one append share a recorded_at: pages must split them by position.
        batch = (
            [slate("personalizer"), slate("personalizer"), slate("home")]
            if i % 2
            else [slate("personalizer")]
        )
        await pg_store.append(batch)
        wanted += [
            e.payload["recommendation_id"] for e in batch if e.payload["surface"] == "personalizer"
        ]
    until = datetime.now(UTC) + timedelta(seconds=1)
    for size in (1, 2, 100):
        got: list[str] = []
        after = (start, 0)
        while True:
            rows = await reads.served_between(pool, "personalizer", after, until, size)
            got += [orjson.loads(payload)["recommendation_id"] for _, _, _, payload in rows]
            if len(rows) < size:
                break
            after = (rows[-1][0], rows[-1][1])
        assert got == wanted, size
    assert (
        await reads.served_between(pool, "personalizer", (until, 0), until + timedelta(days=1), 10)
        == []
    )
