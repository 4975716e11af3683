"""The event store port: the values it takes and gives, its errors, and the Protocol both stores
implement (PostgreSQL in production, in-memory beside it in the contract suite)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from gateway.tracing import stamped

# Expected stream versions: an int is "the stream is exactly at this version" (0: does not exist
# yet); a stream absent from the mapping accepts any version.
NO_STREAM = 0


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A reader's place in the log: commit order first, then position within the commit."""

    tx_id: int
    global_position: int


START = Position(0, 0)


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: UUID
    stream_id: str
    event_type: str
    schema_version: int
    payload: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def with_request_id(event: NewEvent) -> NewEvent:
    """`event` with the id of the request appending it in its metadata, if there is one: an
    analyst joins an event to the request's log lines on it."""
    metadata = stamped(event.metadata)
    return event if metadata is event.metadata else replace(event, metadata=metadata)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    global_position: int
    tx_id: int
    recorded_at: datetime
    stream_id: str
    stream_version: int
    event_id: UUID
    event_type: str
    schema_version: int
    payload: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def position(self) -> Position:
        return Position(self.tx_id, self.global_position)


@dataclass(frozen=True, slots=True)
class Recorded:
    """Where one event of an append landed. For a duplicate, where the original landed."""

    event_id: UUID
    stream_id: str
    stream_version: int
    global_position: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    recorded: tuple[Recorded, ...]

    @property
    def accepted(self) -> int:
        return sum(not r.duplicate for r in self.recorded)

    @property
    def duplicates(self) -> int:
        return sum(r.duplicate for r in self.recorded)


class EventStoreError(Exception):
    pass


class WrongExpectedVersion(EventStoreError):
    """A stream was not at the version the writer expected: nothing of that append was written."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class StoreUnavailable(EventStoreError):
    """The database could not be reached or the append's outcome is unknown; retrying with the same
    event ids is always safe."""


class EventStore(Protocol):
    async def append(
        self, events: Sequence[NewEvent], expected: Mapping[str, int] | None = None
    ) -> AppendResult:
        """Append `events` atomically, after checking `expected` stream versions.

        Events whose `event_id` was stored before are not stored again: they come back as
        duplicates pointing at the original. Returns only after the events are durable.
        Raises `WrongExpectedVersion` (nothing written) on a version conflict.
        """
        ...

    async def read_all(self, after: Position, limit: int) -> list[StoredEvent]:
        """Up to `limit` committed events after `after`, in commit order. Never skips an event that
        commits later: an event is only returned once every transaction before it has ended."""
        ...

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[StoredEvent]:
        """The events of one stream from `from_version` on, in stream order."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version; 0 for a stream with no events."""
        ...

    async def read_events(self, event_ids: Sequence[UUID]) -> dict[UUID, StoredEvent]:
        """The stored events with these ids (an id not stored is absent): what a duplicate was
        a duplicate of."""
        ...
