"""The event store contract, written once and run against both stores.

A behaviour that only one of them has is a bug in one of them: the in-memory store stands in for
PostgreSQL wherever a test does not care about storage, so the two must not drift.
"""

from __future__ import annotations

from typing import cast
from uuid import UUID, uuid4

import pytest

from gateway.store.api import (
    NO_STREAM,
    START,
    EventStore,
    NewEvent,
    Position,
    StoredEvent,
    WrongExpectedVersion,
)
from gateway.store.memory import InMemoryEventStore


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> EventStore:
    if request.param == "memory":
        return InMemoryEventStore()
    # Only the PostgreSQL run asks for a database, so the in-memory run needs no server.
    return cast(EventStore, request.getfixturevalue("pg_store"))


def event(stream_id: str, n: int = 0) -> NewEvent:
    return NewEvent(
        event_id=uuid4(),
        stream_id=stream_id,
        event_type="OutcomeRecorded",
        schema_version=1,
        payload={
            "user": stream_id,
            "item_id": f"track-{n}",
            "kind": "stream_30s",
            "value": 31_250.5,
            "nested": {"tags": ["a", "ü", "🎵"], "none": None, "flag": True},
        },
        metadata={"request_id": f"req-{n}", "source": "contract"},
    )


async def everything(store: EventStore) -> list[StoredEvent]:
    return await store.read_all(START, 10_000)


def ids(events: list[StoredEvent]) -> list[UUID]:
    return [e.event_id for e in events]


async def test_append_then_read_back_in_order_with_payload_and_metadata(store: EventStore) -> None:
    first = [event("listener-a", 1), event("listener-b", 2)]
    second = [event("listener-a", 3)]

    r1 = await store.append(first)
    r2 = await store.append(second)

    read = await everything(store)
    assert ids(read) == [e.event_id for e in first + second]
    for new, stored in zip(first + second, read, strict=True):
        assert (stored.stream_id, stored.event_type, stored.schema_version) == (
            new.stream_id,
            new.event_type,
            new.schema_version,
        )
        assert stored.payload == new.payload
        assert stored.metadata == new.metadata
    assert [r.global_position for r in r1.recorded + r2.recorded] == [
        e.global_position for e in read
    ]
    assert (r1.accepted, r1.duplicates, r2.accepted) == (2, 0, 1)
    assert [e.position for e in read] == sorted(e.position for e in read)
    assert len({e.position for e in read}) == 3
    # One append is one transaction: readers see its events together.
    assert read[0].tx_id == read[1].tx_id != read[2].tx_id


async def test_stream_versions_count_from_one_and_read_stream_starts_where_asked(
    store: EventStore,
) -> None:
    await store.append([event("s", 1), event("s", 2)])
    await store.append([event("other", 1)])
    await store.append([event("s", 3), event("s", 4), event("s", 5)])

    whole = await store.read_stream("s")
    assert [e.stream_version for e in whole] == [1, 2, 3, 4, 5]
    assert [e.payload["item_id"] for e in whole] == [f"track-{n}" for n in range(1, 6)]
    tail = await store.read_stream("s", from_version=3)
    assert [e.stream_version for e in tail] == [3, 4, 5]
    assert ids(tail) == ids(whole)[2:]
    assert await store.read_stream("s", from_version=6) == []
    assert await store.stream_version("s") == 5
    assert await store.stream_version("other") == 1
    assert [e.stream_version for e in await store.read_stream("other")] == [1]


async def test_expected_version_that_matches_is_accepted(store: EventStore) -> None:
    await store.append([event("s"), event("s")])

    result = await store.append([event("s"), event("t")], expected={"s": 2, "t": NO_STREAM})

    assert [(r.stream_id, r.stream_version) for r in result.recorded] == [("s", 3), ("t", 1)]
    assert await store.stream_version("s") == 3


async def test_conflict_raises_and_writes_nothing_of_the_append(store: EventStore) -> None:
    await store.append([event("s"), event("s")])
    before = await everything(store)
    rejected = [event("t"), event("s"), event("u")]

    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append(rejected, expected={"t": NO_STREAM, "s": 1})

    assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == ("s", 1, 2)
    assert await everything(store) == before
    assert await store.stream_version("s") == 2
    assert await store.stream_version("t") == 0
    assert await store.read_stream("t") == []
    # Not even the event ids were kept: the same events go in as new ones afterwards.
    accepted = await store.append(rejected, expected={"s": 2})
    assert accepted.accepted == 3


async def test_no_stream_expectation_fails_once_the_stream_exists(store: EventStore) -> None:
    created = await store.append([event("s")], expected={"s": NO_STREAM})
    assert created.recorded[0].stream_version == 1

    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append([event("s")], expected={"s": NO_STREAM})

    assert (caught.value.expected, caught.value.actual) == (NO_STREAM, 1)
    assert await store.stream_version("s") == 1


async def test_expectation_on_a_stream_the_append_does_not_write(store: EventStore) -> None:
    await store.append([event("guard"), event("guard")])

    accepted = await store.append([event("s")], expected={"guard": 2})
    assert accepted.accepted == 1
    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append([event("s")], expected={"guard": NO_STREAM})
    assert (caught.value.stream_id, caught.value.actual) == ("guard", 2)

    assert await store.stream_version("s") == 1
    assert await store.stream_version("guard") == 2


async def test_same_event_id_again_is_a_duplicate_pointing_at_the_original(
    store: EventStore,
) -> None:
    original = event("s", 1)
    first = await store.append([original])
    await store.append([event("s", 2)])

    again = await store.append([original])
    mixed = await store.append([event("s", 3), original])

    (was,) = first.recorded
    (dup,) = again.recorded
    assert not was.duplicate
    assert dup.duplicate
    assert (dup.event_id, dup.stream_id, dup.stream_version, dup.global_position) == (
        was.event_id,
        was.stream_id,
        was.stream_version,
        was.global_position,
    )
    assert (mixed.accepted, mixed.duplicates) == (1, 1)
    assert mixed.recorded[0].stream_version == 3
    assert mixed.recorded[1] == dup
    stored = await everything(store)
    assert ids(stored).count(original.event_id) == 1
    assert len(stored) == 3
    assert await store.stream_version("s") == 3


async def test_read_events_gives_what_a_duplicate_was_a_duplicate_of(store: EventStore) -> None:
    first, second = event("s", 1), event("t", 2)
    await store.append([first, second])
    absent = uuid4()
    found = await store.read_events([second.event_id, absent, first.event_id])
    assert set(found) == {first.event_id, second.event_id}
    for sent in (first, second):
        got = found[sent.event_id]
        assert (got.stream_id, got.event_type, got.payload) == (
            sent.stream_id,
            sent.event_type,
            sent.payload,
        )
    assert await store.read_events([]) == {}


async def test_retry_after_the_stream_moved_on_returns_the_original_result(
    store: EventStore,
) -> None:
    request = [event("s", 1), event("s", 2)]
    first = await store.append(request, expected={"s": NO_STREAM})
    await store.append([event("s", 3)])

    retried = await store.append(request, expected={"s": NO_STREAM})

    assert retried.duplicates == 2
    assert [(r.stream_version, r.global_position) for r in retried.recorded] == [
        (r.stream_version, r.global_position) for r in first.recorded
    ]
    assert len(await everything(store)) == 3


async def test_retry_with_a_new_event_and_a_stale_expectation_is_a_conflict(
    store: EventStore,
) -> None:
    stored = event("s", 1)
    await store.append([stored], expected={"s": NO_STREAM})
    await store.append([event("s", 2)])
    extra = event("s", 3)

    with pytest.raises(WrongExpectedVersion):
        await store.append([stored, extra], expected={"s": NO_STREAM})

    assert extra.event_id not in ids(await everything(store))
    assert await store.stream_version("s") == 2


async def test_duplicates_inside_one_append_are_stored_once(store: EventStore) -> None:
    repeated = event("s", 1)
    result = await store.append([repeated, event("s", 2), repeated])

    first, second, third = result.recorded
    assert (first.duplicate, second.duplicate, third.duplicate) == (False, False, True)
    assert (third.stream_version, third.global_position) == (1, first.global_position)
    assert second.stream_version == 2
    assert (result.accepted, result.duplicates) == (2, 1)
    assert ids(await everything(store)).count(repeated.event_id) == 1
    assert await store.stream_version("s") == 2


async def test_read_all_pages_never_repeat_or_skip(store: EventStore) -> None:
    # Appends of different sizes, so that pages end in the middle of a transaction too.
    for size in (1, 3, 7, 2, 5, 1, 4):
        await store.append([event(f"s{size % 3}", n) for n in range(size)])
    whole = await everything(store)
    assert len(whole) == 23

    for limit in (1, 2, 4, 10, 23, 50):
        pages: list[StoredEvent] = []
        after: Position = START
        while page := await store.read_all(after, limit):
            assert len(page) <= limit
            pages.extend(page)
            after = page[-1].position
        assert ids(pages) == ids(whole), f"limit {limit}"

    assert await store.read_all(whole[-1].position, 10) == []
    assert ids(await store.read_all(whole[10].position, 5)) == ids(whole[11:16])


async def test_unknown_stream_is_at_version_zero_and_empty(store: EventStore) -> None:
    await store.append([event("known")])

    assert await store.stream_version("unknown") == 0
    assert await store.read_stream("unknown") == []


async def test_empty_append_does_nothing(store: EventStore) -> None:
    result = await store.append([])

    assert result.recorded == ()
    assert (result.accepted, result.duplicates) == (0, 0)
    assert await everything(store) == []
