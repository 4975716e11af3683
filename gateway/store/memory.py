"""An in-memory event store with the same contract as the PostgreSQL one.

It exists so the contract suite can run the same tests against both: a behaviour only the real
store has is a bug in one of them. Not for production: nothing survives the process.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from uuid import UUID

from gateway.store.api import (
    AppendResult,
    NewEvent,
    Position,
    Recorded,
    StoredEvent,
    WrongExpectedVersion,
    with_request_id,
)


class InMemoryEventStore:
    def __init__(self) -> None:
        self._events: list[StoredEvent] = []
        self._versions: dict[str, int] = {}
        self._ids: dict[UUID, Recorded] = {}
        self._tx = itertools.count(1)
        self._lock = asyncio.Lock()

    async def append(
        self, events: Sequence[NewEvent], expected: Mapping[str, int] | None = None
    ) -> AppendResult:
        events = [with_request_id(e) for e in events]
        async with self._lock:
            fresh_ids = [e.event_id for e in events if e.event_id not in self._ids]
            for stream, exp in (expected or {}).items():
                actual = self._versions.get(stream, 0)
                if actual != exp and fresh_ids:
                    raise WrongExpectedVersion(stream, exp, actual)
            tx_id = next(self._tx)
            now = datetime.now(UTC)
            out: list[Recorded] = []
            for e in events:
                original = self._ids.get(e.event_id)
                if original is not None:
                    out.append(
                        Recorded(
                            original.event_id,
                            original.stream_id,
                            original.stream_version,
                            original.global_position,
                            duplicate=True,
                        )
                    )
                    continue
                version = self._versions.get(e.stream_id, 0) + 1
                self._versions[e.stream_id] = version
                stored = StoredEvent(
                    global_position=len(self._events) + 1,
                    tx_id=tx_id,
                    recorded_at=now,
                    stream_id=e.stream_id,
                    stream_version=version,
                    event_id=e.event_id,
                    event_type=e.event_type,
                    schema_version=e.schema_version,
                    payload=e.payload,
                    metadata=e.metadata,
                )
                self._events.append(stored)
                rec = Recorded(e.event_id, e.stream_id, version, stored.global_position, False)
                self._ids[e.event_id] = rec
                out.append(rec)
            return AppendResult(tuple(out))

    async def read_all(self, after: Position, limit: int) -> list[StoredEvent]:
        return [e for e in self._events if e.position > after][:limit]

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        return [
            e for e in self._events if e.stream_id == stream_id and e.stream_version >= from_version
        ]

    async def stream_version(self, stream_id: str) -> int:
        return self._versions.get(stream_id, 0)

    async def read_events(self, event_ids: Sequence[UUID]) -> dict[UUID, StoredEvent]:
        found = (self._ids.get(i) for i in event_ids)
        return {r.event_id: self._events[r.global_position - 1] for r in found if r is not None}
