"""Projection rebuilds as the admin API starts them: one at a time per projection across the
cluster, and a rebuild that stops before its swap leaves no half-filled version behind."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from domain.events import ItemUpserted
from domain.rewards import DEFAULT
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.rebuilds import Rebuilds
from gateway.projections.runner import _LOCK_NAMESPACE, RebuildRunning, rebuild
from gateway.store.api import Position
from tests.integration.projection_helpers import append_in_order, eventually, log_end

REWARDS = PROJECTIONS["rewards"]


async def versions(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch(
        "SELECT version, status, schema_name FROM projections WHERE name = 'rewards' "
        "ORDER BY version"
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def schema_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", name)
    )


@pytest.fixture
async def log(db_url: str) -> None:
    await append_in_order(db_url, [ItemUpserted(f"it-{i}", "track", {}) for i in range(20)])


class Stop(Exception):
    pass


@pytest.mark.usefixtures("log")
@pytest.mark.parametrize("how", ["failed", "cancelled"])
async def test_a_rebuild_stopped_before_its_swap_retires_its_version(
    db_url: str, conn: asyncpg.Connection, how: str
) -> None:
    def progress(_position: Position, _head: Position, _version: int) -> None:
        # Called while the new version is being filled: stop the rebuild right there.
        if how == "cancelled":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
        else:
            raise Stop()

    attempt = asyncio.create_task(rebuild(db_url, REWARDS, DEFAULT, progress))
    with pytest.raises(asyncio.CancelledError if how == "cancelled" else Stop):
        await attempt
    [(version, status, schema)] = await versions(conn)
    assert (version, status) == (1, "retired")
    assert not await schema_exists(conn, schema)

    # The lock went with the rebuild's connection: the next one runs, and is the live one.
    again = await rebuild(db_url, REWARDS, DEFAULT)
    assert (again.version, again.status) == (2, "live")
    assert await schema_exists(conn, again.schema)


@pytest.mark.usefixtures("log")
async def test_one_rebuild_of_a_projection_at_a_time(db_url: str, conn: asyncpg.Connection) -> None:
    other = await asyncpg.connect(db_url)  # another process's rebuild, as far as the lock goes
    try:
        assert await other.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext('rebuild:rewards'))", _LOCK_NAMESPACE
        )
        with pytest.raises(RebuildRunning, match="already running"):
            await rebuild(db_url, REWARDS, DEFAULT)
        assert await versions(conn) == []  # refused before it made anything

        jobs = Rebuilds(db_url, lambda: datetime.now(UTC))
        first = jobs.start("rewards")
        assert jobs.start("rewards") is first  # this process does not start it twice
        await eventually(lambda: _settled(first.state), "the job to give up")
        assert first.state == "failed"
        assert first.error == "a rebuild of rewards is already running"
        assert first.finished_at is not None
        await jobs.close()
    finally:
        await other.close()

    # Once the other one is gone, the same button works.
    jobs = Rebuilds(db_url, lambda: datetime.now(UTC))
    job = jobs.start("rewards")
    await eventually(lambda: _settled(job.state), "the rebuild")
    assert (job.state, job.version, job.definition_version) == ("done", 1, DEFAULT.version)
    assert job.position == job.target == (await log_end(conn)).global_position
    assert [(v, s) for v, s, _ in await versions(conn)] == [(1, "live")]
    await jobs.close()
    with pytest.raises(KeyError):
        jobs.start("nope")


async def _settled(state: str) -> bool:
    return state != "running"
