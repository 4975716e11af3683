"""Scenario 2: PostgreSQL is stopped under load (a clean fast shutdown, then a crash), kept
down for a few seconds and started again, while the gateway keeps running.

While it is down every data route answers 503 problem+json with Retry-After within a bound
(never a 500, never a hang), `/readyz` fails and `/healthz` does not. When it is back the same
gateway process recovers by itself: requests succeed again, the projectors catch up, and every
request that was acknowledged is in the log exactly once.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.http.problems import PROBLEM_JSON
from gateway.store.database import migrate
from tests.faults.helpers import (
    Gateway,
    Load,
    PrivateCluster,
    assert_acknowledged_stored_once,
    data_routes,
    make_key,
    private_cluster,
    ready,
    seed_catalogue,
    summary,
    wait_until,
)
from tests.faults.projections import assert_equal_to_rebuilds, caught_up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOWN_SECONDS = 3.0
BOUND_SECONDS = 5.0  # no request may take longer than this, database or not


async def probe_while_down(base_url: str, key: str) -> tuple[int, float]:
    """Every data route answers 503 problem+json with Retry-After, in bounded time; readiness
    fails, liveness holds. Returns (requests probed, slowest answer in seconds)."""
    headers = {"Authorization": f"Bearer {key}"}
    slowest = 0.0
    n = 0
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=BOUND_SECONDS + 5)
    ) as session:
        for method, path, body in data_routes():
            started = time.monotonic()
            async with session.request(method, base_url + path, json=body, headers=headers) as r:
                raw = await r.read()
                took = time.monotonic() - started
                slowest = max(slowest, took)
                n += 1
                assert r.status == 503, (method, path, r.status, raw[:300])
                assert r.content_type == PROBLEM_JSON, (path, r.content_type)
                assert r.headers.get("Retry-After", "").isdigit(), (path, dict(r.headers))
                assert took < BOUND_SECONDS, (path, took)
        async with session.get(base_url + "/readyz") as r:
            body = await r.json()
            assert r.status == 503, body
            assert body["checks"]["database"].startswith("unreachable"), body
        async with session.get(base_url + "/healthz") as r:
            assert r.status == 200
    return n, slowest


async def test_database_stopped_under_load_and_restarted(tmp_path: Path) -> None:
    with private_cluster() as cluster:
        await _admin(cluster, "CREATE DATABASE segue")
        db_url = cluster.url("segue")
        await migrate(db_url)
        key = await make_key(db_url)
        gateway = Gateway(
            db_url,
            tmp_path,
            # Keys are cached longer than the outage, so requests get past authentication and
            # meet the database where they really use it.
            SEGUE_KEY_CACHE_SECONDS="120",
            SEGUE_SCORES_REFRESH_SECONDS="0.5",
        )
        async with gateway:
            await seed_catalogue(gateway.base_url, key, 40)
            load = Load(gateway.base_url, key)
            probed = 0
            slowest = 0.0
            recoveries: list[float] = []
            modes = ("fast", "immediate")
            async with load.running(outcome_clients=3, recommendation_clients=2):
                for mode in modes:
                    before = load.statuses[200]
                    await wait_until(partial(_more, load, before, 200), "load", 30)
                    await asyncio.to_thread(cluster.stop, mode)
                    down_at = time.monotonic()
                    await asyncio.sleep(0.5)  # what was in flight has failed by now
                    n, slow = await probe_while_down(gateway.base_url, key)
                    probed += n
                    slowest = max(slowest, slow)
                    await asyncio.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
                    await asyncio.to_thread(cluster.start)
                    recoveries.append(
                        await wait_until(lambda: ready(gateway.base_url), "readiness", 30)
                    )
                    after = load.statuses[200]
                    await wait_until(partial(_more, load, after, 200), "recovery", 30)
            assert gateway.alive(), "the gateway must recover without a restart"
            assert gateway.starts == 1
            assert set(load.statuses) <= {200, 503}, load.statuses
            assert load.statuses[503] > 0, "the outage was never seen"
            for _status, ctype, headers, raw in load.problems:
                assert ctype == PROBLEM_JSON, raw[:200]
                assert headers.get("Retry-After"), headers
            assert not load.failures, f"requests without an answer: {load.failures}"
            assert max(load.latencies) < BOUND_SECONDS, max(load.latencies)

            conn = await asyncpg.connect(db_url)
            try:
                checked = await assert_acknowledged_stored_once(conn, load)
                took = await wait_until(lambda: caught_up(conn), "the projectors to catch up", 60)
                events = await assert_equal_to_rebuilds(db_url, conn)
                await _background_tasks_alive(gateway, key)
            finally:
                await conn.close()
            log = gateway.all_logs()
            assert "Task exception was never retrieved" not in log, log[-3000:]
            assert "unhandled error" not in log, log[-3000:]
    summary(
        "postgres stopped",
        outages=len(modes),
        modes="+".join(modes),
        survived=len(modes),
        down_seconds=DOWN_SECONDS,
        requests_503=load.statuses[503],
        probed_routes=probed,
        slowest_answer_s=round(max(slowest, max(load.latencies)), 3),
        ready_again_after_s="/".join(f"{r:.2f}" for r in recoveries),
        acknowledged_checked=checked,
        events_in_log=events,
        projector_catch_up_s=round(took, 2),
    )


async def _background_tasks_alive(gateway: Gateway, key: str) -> None:
    """The score refresher and the index builder still work after the outages."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def metric(name: str) -> float:
            async with session.get(gateway.base_url + "/metrics") as r:
                for line in (await r.text()).splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[1])
            return 0.0

        stamp = await metric("segue_item_scores_refreshed_timestamp_seconds")
        await wait_until(
            lambda: _gt(metric("segue_item_scores_refreshed_timestamp_seconds"), stamp),
            "the item scores to refresh",
            15,
        )
        async with session.post(gateway.base_url + "/v1/admin/index/rebuild", headers=headers):
            pass

        async def indexed() -> bool:
            async with session.get(gateway.base_url + "/v1/admin/status", headers=headers) as r:
                body = await r.json()
                return body["index"]["version"] is not None

        await wait_until(indexed, "an index to be built after the outages", 60)


async def _gt(value: Any, than: float) -> bool:
    return bool(await value > than)


async def _more(load: Load, before: int, n: int) -> bool:
    return load.statuses[200] >= before + n


async def _admin(cluster: PrivateCluster, sql: str) -> None:
    conn = await asyncpg.connect(cluster.url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
