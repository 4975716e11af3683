"""Scenario: PostgreSQL is up but answers nothing (every process of the cluster SIGSTOPped, as
behind a network black hole) while clients post outcomes and recommendations.

Connections stay open and new ones are accepted by the kernel, so nothing fails by itself: only
the pool's per-statement bound (`SEGUE_QUERY_TIMEOUT_SECONDS`), which also bounds waiting for
a connection and making one, stands between a request and a wait without end. While the server
is frozen every data route answers 503 problem+json with Retry-After within the bound and
`/readyz` fails; after SIGCONT the same gateway process recovers by itself and every
acknowledged request is in the log exactly once.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

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
from tests.faults.projections import caught_up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

QUERY_TIMEOUT = 1.0
FROZEN_SECONDS = 4.0
# The worst a request can meet, each part bounded by the statement bound (BoundedPool): waiting
# for a connection and making one, the statement, and the release (the cancellation, which
# cannot reach a frozen server either, then the reset); plus slack for two shared cores. Before
# waiting for a connection was bounded, requests queued behind each other's reconnects: 6.5 s
# typical, 10 s once, against 2 s now.
BOUND_SECONDS = 3 * QUERY_TIMEOUT + 1.5


async def probe_while_frozen(base_url: str, key: str) -> tuple[int, float]:
    """Every data route at once answers 503 problem+json with Retry-After within the bound, and
    readiness fails. Returns (requests probed, slowest answer in seconds)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=BOUND_SECONDS + 5)
    ) as session:

        async def probe(method: str, path: str, body: object) -> float:
            started = time.monotonic()
            async with session.request(method, base_url + path, json=body, headers=headers) as r:
                raw = await r.read()
                took = time.monotonic() - started
                assert r.status == 503, (method, path, r.status, raw[:300])
                assert r.content_type == PROBLEM_JSON, (path, r.content_type)
                assert r.headers.get("Retry-After", "").isdigit(), (path, dict(r.headers))
                assert took < BOUND_SECONDS, (path, took)
                return took

        took = await asyncio.gather(*(probe(*route) for route in data_routes()))
        async with session.get(base_url + "/readyz") as r:
            body = await r.json()
            assert r.status == 503, body
            assert body["checks"]["database"].startswith("unreachable"), body
        async with session.get(base_url + "/healthz") as r:
            assert r.status == 200
    return len(took), max(took)


async def test_database_frozen_under_load_and_thawed(tmp_path: Path) -> None:
    with private_cluster() as cluster:
        await _admin(cluster, "CREATE DATABASE segue")
        db_url = cluster.url("segue")
        await migrate(db_url)
        key = await make_key(db_url)
        gateway = Gateway(
            db_url,
            tmp_path,
            SEGUE_QUERY_TIMEOUT_SECONDS=str(QUERY_TIMEOUT),
            # Keys are cached longer than the outage, so requests get past authentication and
            # meet the database where they really use it.
            SEGUE_KEY_CACHE_SECONDS="120",
            SEGUE_RUN_INDEX_BUILDER="false",
        )
        async with gateway:
            await seed_catalogue(gateway.base_url, key, 40)
            load = Load(gateway.base_url, key, timeout=BOUND_SECONDS + 2)
            pids: list[int] = []
            try:
                async with load.running(outcome_clients=3, recommendation_clients=2):
                    await wait_until(partial(_more, load, 0, 200), "load", 30)
                    pids = cluster.freeze()
                    frozen_processes = len(pids)
                    frozen_at = time.monotonic()
                    await asyncio.sleep(0.5)
                    probed, slowest = await probe_while_frozen(gateway.base_url, key)
                    await asyncio.sleep(max(0.0, FROZEN_SECONDS - (time.monotonic() - frozen_at)))
                    frozen_for = time.monotonic() - frozen_at
                    cluster.thaw(pids)
                    pids = []
                    recovered = await wait_until(lambda: ready(gateway.base_url), "readiness", 30)
                    after = load.statuses[200]
                    await wait_until(partial(_more, load, after, 200), "recovery", 30)
            finally:
                cluster.thaw(pids)  # whatever failed, never leave the cluster stopped
            assert gateway.alive(), "the gateway must recover without a restart"
            assert gateway.starts == 1
            assert set(load.statuses) <= {200, 503}, load.statuses
            assert load.statuses[503] > 0, "the stall was never seen"
            for _status, ctype, headers, raw in load.problems:
                assert ctype == PROBLEM_JSON, raw[:200]
                assert headers.get("Retry-After"), headers
            assert not load.failures, f"requests without an answer: {load.failures}"
            assert max(load.latencies) < BOUND_SECONDS, max(load.latencies)

            # The test's own connection is bounded too: a server stopped again must not hold it.
            conn = await asyncpg.connect(db_url, timeout=10, command_timeout=20)
            try:
                checked = await assert_acknowledged_stored_once(conn, load)
                # The projectors' own connections have no statement bound: they simply resume.
                took = await wait_until(lambda: caught_up(conn), "the projectors to catch up", 30)
            finally:
                await conn.close()
            log = gateway.all_logs()
            assert "Task exception was never retrieved" not in log, log[-3000:]
            assert "unhandled error" not in log, log[-3000:]
    summary(
        "postgres frozen",
        query_timeout_s=QUERY_TIMEOUT,
        frozen_s=round(frozen_for, 1),
        processes_frozen=frozen_processes,
        requests_503=load.statuses[503],
        requests_200=load.statuses[200],
        probed_routes=probed,
        slowest_probe_s=round(slowest, 3),
        slowest_answer_s=round(max(load.latencies), 3),
        bound_s=BOUND_SECONDS,
        ready_again_after_s=round(recovered, 2),
        acknowledged_checked=checked,
        projector_catch_up_s=round(took, 2),
    )


async def _more(load: Load, before: int, n: int) -> bool:
    return load.statuses[200] >= before + n


async def _admin(cluster: PrivateCluster, sql: str) -> None:
    conn = await asyncpg.connect(cluster.url(), timeout=10)
    try:
        await conn.execute(sql, timeout=10)
    finally:
        await conn.close()
