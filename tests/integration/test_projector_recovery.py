"""A runner that met an event it could not fold finds it one event at a time, and afterwards goes
back to full batches. Found by `bench/fault_soak.py`: it stayed at one event per transaction
until it caught up with the log, which under steady appends it never did (the gateway's
projections fell 190,000 events behind in a minute and a half, and the next broken event was
never even reached)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from domain.events import OutcomeKind, OutcomeRecorded
from domain.rewards import RewardDefinition
from gateway.projections.definitions import PROJECTIONS, Batch
from gateway.projections.runner import Runner
from gateway.store.api import NewEvent
from gateway.store.postgres import Connection
from tests.integration.projection_helpers import (
    eventually,
    log_end,
    loop_errors_fail,
    new_events,
    raw_insert,
    running,
    seeded_uuid,
)

pytestmark = pytest.mark.timeout(60)

LISTENERS = PROJECTIONS["listeners"]
BATCH = 10


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    with loop_errors_fail():
        yield


def outcomes(rng: random.Random, n: int) -> list[NewEvent]:
    return new_events(
        [
            OutcomeRecorded(
                event_id=seeded_uuid(rng),
                user=f"listener-{rng.randrange(5)}",
                item_id=f"it-{rng.randrange(8)}",
                kind=rng.choice(list(OutcomeKind)),
                occurred_at=datetime(2026, 11, 1, tzinfo=UTC),
            )
            for _ in range(n)
        ]
    )


async def insert(conn: asyncpg.Connection, events: Sequence[NewEvent]) -> None:
    async with conn.transaction():
        await raw_insert(conn, events, "listener-test")


async def caught_up(conn: asyncpg.Connection, runner: Runner) -> bool:
    return runner.position >= await log_end(conn)


async def test_after_the_event_it_stopped_at_is_applied_full_batches_resume(
    db_url: str, conn: asyncpg.Connection
) -> None:
    rng = random.Random(12)
    good = outcomes(rng, 81)
    broken = NewEvent(good[20].event_id, good[20].stream_id, good[20].event_type, 1, {"kind": 42})
    await insert(conn, [*good[:20], broken, *good[21:]])
    sizes: list[int] = []
    runner = Runner(
        db_url,
        LISTENERS,
        batch_size=BATCH,
        poll_seconds=0.01,
        retry_seconds=0.05,
        on_batch=lambda _runner, n: sizes.append(n),
    )
    async with running(runner):
        await eventually(lambda: _true(runner.failure is not None), "the runner to stop")
        assert sizes == [BATCH, BATCH]  # everything before the broken event, nothing after
        # The fix: the event rewritten foldable (the owner's opt-in).
        async with conn.transaction():
            await conn.execute("SET LOCAL segue.allow_event_rewrite = on")
            await conn.execute(
                "UPDATE events SET payload = $2::jsonb WHERE event_id = $1",
                broken.event_id,
                orjson.dumps(good[20].payload).decode(),
            )
        await eventually(lambda: caught_up(conn, runner), "the runner to catch up")
    assert runner.failure is None
    # The repaired event alone, then full batches (it was 60 batches of one).
    assert sizes[2:] == [1] + [BATCH] * 6


class FailsOnce:
    """The listeners projection, whose first apply fails: a fault that does not come back."""

    def __init__(self) -> None:
        self.failed = False
        self.name = LISTENERS.name

    def ddl(self, schema: str) -> list[str]:
        return LISTENERS.ddl(schema)

    def tables(self) -> list[str]:
        return LISTENERS.tables()

    async def prepare(self, conn: Connection, schema: str) -> None:
        await LISTENERS.prepare(conn, schema)

    async def apply(
        self, conn: Connection, schema: str, batch: Batch, definition: RewardDefinition
    ) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("once")
        await LISTENERS.apply(conn, schema, batch, definition)


async def test_a_batch_that_failed_once_is_retried_one_at_a_time_then_in_full(
    db_url: str, conn: asyncpg.Connection
) -> None:
    await insert(conn, outcomes(random.Random(13), 50))
    sizes: list[int] = []
    runner = Runner(
        db_url,
        FailsOnce(),
        batch_size=BATCH,
        poll_seconds=0.01,
        retry_seconds=0.05,
        on_batch=lambda _runner, n: sizes.append(n),
    )
    async with running(runner):
        await eventually(lambda: caught_up(conn, runner), "the runner to catch up")
    assert runner.failure is None  # no single event failed: nothing to report
    assert sizes == [1] * BATCH + [BATCH] * 4


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value
