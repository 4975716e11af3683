"""One bad event in a group-commit flush fails only the append that carried it.

Appends that arrive together are written in one statement; if PostgreSQL refuses one of their
events (a NUL in text, a schema version out of range, an inline projection that fails), the
others in the flush must still be written and answered. Tested below the HTTP layer, where the
CLI, import and any new route reach the store, concurrently with good traffic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg
import pytest

from gateway.store.api import NewEvent, StoredEvent
from gateway.store.postgres import Connection, PostgresEventStore


def good(k: int) -> NewEvent:
    return NewEvent(uuid.uuid4(), f"good-{k}", "Probe", 1, {"k": k})


BAD = {
    "nul-in-stream-id": NewEvent(uuid.uuid4(), "bad\x00stream", "Probe", 1, {}),
    "nul-in-payload": NewEvent(uuid.uuid4(), "bad-payload", "Probe", 1, {"text": "a\x00b"}),
    "schema-version-out-of-range": NewEvent(uuid.uuid4(), "bad-version", "Probe", 70000, {}),
    "projection-refuses": NewEvent(uuid.uuid4(), "bad-projection", "Refused", 1, {}),
}


class Refusing:
    """An inline projection that fails on its event type, as a broken one would."""

    event_types = frozenset({"Refused"})

    async def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        raise RuntimeError("this projection refuses the event")


@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
async def test_a_refused_event_fails_only_its_own_append(pool: asyncpg.Pool, bad: str) -> None:
    store = PostgresEventStore(pool, flushers=1, inline=[Refusing()])
    await store.start()
    try:
        for _round in range(3):
            goods = [good(k) for k in range(40)]
            # Queued together, before the one flusher wakes: they share flushes.
            calls = [store.append([e]) for e in goods[:20]]
            calls.append(store.append([BAD[bad]]))
            calls += [store.append([e]) for e in goods[20:]]
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            assert len(failed) == 1, failed
            assert results[20] is failed[0]
            stored = {
                r[0]
                for r in await pool.fetch(
                    "SELECT event_id FROM event_ids WHERE event_id = ANY($1::uuid[])",
                    [e.event_id for e in goods],
                )
            }
            assert stored == {e.event_id for e in goods}
        assert store.flushes >= 3
    finally:
        await store.close()
