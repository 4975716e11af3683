"""Scenario: `segue serve` is started while PostgreSQL is down.

It waits, logging each wait at WARNING with the reason, and comes up and serves once the server
starts a few seconds later; with a short `SEGUE_STARTUP_WAIT_SECONDS` it gives up at the limit
with a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import pytest

from tests.faults.helpers import (
    Gateway,
    PrivateCluster,
    get_json,
    make_key,
    private_cluster,
    seed_catalogue,
    summary,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DOWN_SECONDS = 4.0
SHORT_LIMIT = 2.0


async def test_serve_waits_for_the_database_then_gives_up_at_the_limit(tmp_path: Path) -> None:
    with private_cluster() as cluster:
        await _admin(cluster, "CREATE DATABASE segue")
        db_url = cluster.url("segue")
        await asyncio.to_thread(cluster.stop)

        # Down at start: it waits, then serves once the server is back.
        gateway = Gateway(db_url, tmp_path / "waits", SEGUE_STARTUP_WAIT_SECONDS="60")
        gateway.data_dir.mkdir()
        gateway.spawn()
        try:
            spawned = time.monotonic()
            await asyncio.sleep(DOWN_SECONDS)
            assert gateway.alive(), f"gave up while waiting: {gateway.log()}"
            # The log is JSON lines (stderr is not a terminal): one object per wait.
            lines = [json.loads(x) for x in gateway.log().splitlines() if x.startswith("{")]
            waits = [x for x in lines if "unreachable" in x["message"]]
            assert len(waits) >= 3, gateway.log()
            assert all(w["level"] == "WARNING" and "retrying in" in w["message"] for w in waits), (
                waits
            )
            await asyncio.to_thread(cluster.start)
            back = time.monotonic()
            await wait_until(gateway._healthy, "the gateway to come up", 30, 0.1)
            up_after = time.monotonic() - back
            status, body = await get_json(gateway.base_url, "/readyz")
            assert status == 200, body
            # It migrated and serves: a key, a catalogue, a recommendation.
            key = await make_key(db_url)
            await seed_catalogue(gateway.base_url, key, 10)
            status, body = await get_json(
                gateway.base_url,
                "/v1/recommendations",
                key,
                "POST",
                {"user_id": "user-1", "surface": "home", "n": 3},
            )
            assert status == 200, body
            assert len(body["items"]) == 3
            total_wait = back - spawned
        finally:
            gateway.stop()
        assert "Traceback" not in gateway.log(), gateway.log()

        # Down for longer than the limit: one line, a non-zero exit, at the limit.
        await asyncio.to_thread(cluster.stop)
        quitter = Gateway(db_url, tmp_path / "quits", SEGUE_STARTUP_WAIT_SECONDS=str(SHORT_LIMIT))
        quitter.data_dir.mkdir()
        started = time.monotonic()
        quitter.spawn()
        assert quitter.proc is not None
        code = await asyncio.to_thread(quitter.proc.wait, 30)
        gave_up_after = time.monotonic() - started
        output = quitter.log().strip().splitlines()
        assert code != 0, output
        assert output[-1].startswith("Error: cannot start: the database was unreachable for "), (
            output
        )
        assert f"SEGUE_STARTUP_WAIT_SECONDS={SHORT_LIMIT:g}" in output[-1], output
        assert "Traceback" not in quitter.log(), output
        assert SHORT_LIMIT <= gave_up_after < SHORT_LIMIT + 10, gave_up_after
    summary(
        "postgres down at start-up",
        waited_s=round(total_wait, 1),
        warnings_logged=len(waits),
        serving_after_start_s=round(up_after, 2),
        short_limit_s=SHORT_LIMIT,
        exit_code=code,
        gave_up_after_s=round(gave_up_after, 2),
    )


async def _admin(cluster: PrivateCluster, sql: str) -> None:
    conn = await asyncpg.connect(cluster.url(), timeout=10)
    try:
        await conn.execute(sql, timeout=10)
    finally:
        await conn.close()
