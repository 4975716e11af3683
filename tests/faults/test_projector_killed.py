"""Scenario 3, extending tests/integration/test_projector_faults.py (which kills `segue project`
mid-batch while writers append straight to the store, with tiny batches): here the events come
through a real gateway under HTTP load, the projector runs with full-size batches and is killed
with SIGKILL inside a batch, again and again, while a backlog builds up between runs. At the end
the projections equal a rebuild (nothing counted twice or skipped), and the lag the gateway
reports (`/v1/admin/status`, `segue_projection_lag_events`) and `segue status` return to zero.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from gateway.store.api import Position
from tests.faults.helpers import (
    Gateway,
    Load,
    Projector,
    get_json,
    make_key,
    metric,
    seed_catalogue,
    segue,
    summary,
    wait_until,
)
from tests.faults.projections import assert_equal_to_rebuilds, caught_up, live
from tests.integration.projection_helpers import events_up_to

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

KILLS = 5


async def projector_sessions(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'segue-projector-%'"
    )
    return [r[0] for r in rows]


async def in_batch(conn: asyncpg.Connection) -> bool:
    """A projector session is inside a batch's transaction (it has written in it), not in the
    one that creates a projection's first version."""
    if len(await live(conn)) < 2:
        return False
    n = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'segue-projector-%' AND backend_xid IS NOT NULL"
    )
    return bool(n)


async def assert_checkpoints_agree(conn: asyncpg.Connection) -> None:
    for r in await live(conn):
        position = Position(int(r["tx_id"]), r["global_position"])
        assert r["events_applied"] == await events_up_to(conn, position), r["name"]


async def test_projector_killed_mid_batch_under_http_load(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(33)
    key = await make_key(db_url)
    conn = await asyncpg.connect(db_url)
    mid_batch = 0
    try:
        async with Gateway(
            db_url, tmp_path, SEGUE_RUN_PROJECTORS="false", SEGUE_RUN_INDEX_BUILDER="false"
        ) as gateway:
            await seed_catalogue(gateway.base_url, key, 40)
            load = Load(gateway.base_url, key, batch=10)
            with Projector(db_url, tmp_path, SEGUE_PROJECTOR_BATCH_SIZE="500") as projector:
                async with load.running(outcome_clients=2, recommendation_clients=1):
                    for _ in range(KILLS):
                        # A backlog builds up while no projector runs.
                        await asyncio.sleep(rng.uniform(0.2, 0.6))
                        projector.start()
                        await wait_until(
                            partial(_sessions, conn, 2), "the projector's sessions", 20, 0.01
                        )
                        # Let it apply some of the backlog, then kill it inside a batch.
                        goal = await _applied(conn) + rng.randint(200, 1500)
                        await wait_until(partial(_applied_at_least, conn, goal), "progress", 30)
                        try:
                            await wait_until(partial(in_batch, conn), "a batch", 5, 0.002)
                            mid_batch += 1
                        except AssertionError:
                            pass  # it had caught up: killed between batches
                        projector.kill()
                        await wait_until(
                            partial(_sessions, conn, 0), "the killed sessions to end", 20
                        )
                        await assert_checkpoints_agree(conn)
                assert mid_batch >= KILLS // 2, f"only {mid_batch} kills landed inside a batch"
                behind = int(await conn.fetchval("SELECT count(*) FROM events")) - min(
                    r["events_applied"] for r in await live(conn)
                )
                started = time.monotonic()
                projector.start()
                await wait_until(partial(caught_up, conn), "the last projector to catch up", 60)
                recovered = time.monotonic() - started
                # What the gateway and the CLI report: no lag left.
                _, status = await get_json(gateway.base_url, "/v1/admin/status", key)
                assert [p["lag_events"] for p in status["projections"]] == [0, 0], status
                await wait_until(
                    partial(_gauge_zero, gateway.base_url), "the lag gauges to reach zero", 15
                )
                shown = json.loads(segue(db_url, tmp_path, "status", "--json"))
                assert [p["lag_events"] for p in shown] == [0, 0], shown
                events = await assert_equal_to_rebuilds(db_url, conn)
    finally:
        await conn.close()
    summary(
        "projector SIGKILL",
        kills=KILLS,
        mid_batch=mid_batch,
        survived=KILLS,
        backlog_at_last_start=behind,
        lag_recovered_s=round(recovered, 2),
        events_checked=events,
    )


async def _applied(conn: asyncpg.Connection) -> int:
    return sum(r["events_applied"] for r in await live(conn))


async def _applied_at_least(conn: asyncpg.Connection, goal: int) -> bool:
    return await _applied(conn) >= goal


async def _sessions(conn: asyncpg.Connection, n: int) -> bool:
    return len(await projector_sessions(conn)) == n


async def _gauge_zero(base_url: str) -> bool:
    async def lag(name: str) -> float | None:
        return await metric(base_url, f'segue_projection_lag_events{{projection="{name}"}}')

    return await lag("rewards") == 0.0 and await lag("listeners") == 0.0
