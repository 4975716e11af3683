"""A key's rate limit holds across gateway processes: the spending table on a real PostgreSQL,
then two real `segue serve` processes hammered with one key."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.http.auth import Scope, create_key
from gateway.http.ratelimit import RateLimiter, SharedSpend
from gateway.store.database import create_pool
from tests.integration.test_cli import free_port
from tests.integration.test_index_swap_processes import all_ready, gateway, until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_each_process_debits_what_the_others_spent_once(db_url: str) -> None:
    pool = await create_pool(db_url)
    try:
        a_limiter = RateLimiter(rate=1.0, burst=50.0, clock=Clock())
        b_limiter = RateLimiter(rate=1.0, burst=50.0, clock=Clock())
        a, b = SharedSpend(pool, a_limiter), SharedSpend(pool, b_limiter)
        for _ in range(5):
            a_limiter.acquire("k")
        await a.sync()
        await b.sync()  # B's first look: what was spent before it started is not its concern
        assert b_limiter.acquire("k") == 0.0
        for _ in range(30):
            a_limiter.acquire("k")
        await a.sync()
        await b.sync()
        await b.sync()  # read again: nothing is debited twice
        # B had 49 tokens, A spent 30 since B's first look: 19 left.
        assert sum(b_limiter.acquire("k") == 0.0 for _ in range(25)) == 19
        await b.sync()
        await a.sync()
        # A's 15 tokens go to B's 20 (a row A had not seen: a process started since, all new),
        # which leaves A owing 5, repaid at 1 token a second.
        assert a_limiter.acquire("k") == pytest.approx(6.0)
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT process_id, key_id, spent FROM rate_limit_spend")
            assert {(r["process_id"], r["key_id"], r["spent"]) for r in rows} == {
                (a.process, "k", a_limiter.spent["k"]),
                (b.process, "k", b_limiter.spent["k"]),
            }
            await a.close()
            left = await conn.fetch("SELECT process_id FROM rate_limit_spend")
            assert [r["process_id"] for r in left] == [b.process]
    finally:
        await pool.close()


RATE, BURST, SECONDS = 20.0, 5.0, 4.0


async def _hammer(db_url: str, tmp_path: Path, sync_seconds: str) -> int:
    """Requests granted (anything but 429) to one key hammering two gateways for SECONDS."""
    conn = await asyncpg.connect(db_url)
    try:
        _, key = await create_key(conn, f"hammer-{sync_seconds}", frozenset(Scope))
    finally:
        await conn.close()
    env = {
        **os.environ,
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_DATA_DIR": str(tmp_path),
        "SEGUE_LOG_LEVEL": "WARNING",
        "SEGUE_RUN_INDEX_BUILDER": "false",
        "SEGUE_RUN_PROJECTORS": "false",
        "SEGUE_RATE_LIMIT_PER_SECOND": str(RATE),
        "SEGUE_RATE_LIMIT_BURST": str(BURST),
        "SEGUE_RATE_LIMIT_SYNC_SECONDS": sync_seconds,
    }
    statuses: Counter[int] = Counter()
    async with (
        gateway(env, free_port()) as url0,
        gateway(env, free_port()) as url1,
        aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {key}"}, timeout=aiohttp.ClientTimeout(total=30)
        ) as http,
    ):
        await until(lambda: all_ready(http, [url0, url1]), "both gateways ready")
        end = time.monotonic() + SECONDS

        async def client(url: str) -> None:
            while time.monotonic() < end:
                async with http.get(url + "/v1/items/no-such-item") as resp:
                    statuses[resp.status] += 1
                    if resp.status == 429:
                        assert int(resp.headers["Retry-After"]) >= 1
                        await asyncio.sleep(0.01)  # a hammering client that barely backs off

        await asyncio.gather(*(client(url) for url in (url0, url1) for _ in range(4)))
    assert set(statuses) <= {404, 429}, statuses
    return statuses[404]


@pytest.mark.timeout(120)
async def test_one_key_gets_its_rate_across_two_gateways(db_url: str, tmp_path: Path) -> None:
    shared = await _hammer(db_url, tmp_path, "0.25")
    alone = await _hammer(db_url, tmp_path, "0")
    # Shared: both buckets start full, then the pair refills at RATE, give or take the spending
    # of one sync interval each. Alone, each process grants RATE a second by itself.
    assert RATE * SECONDS * 0.8 <= shared <= 2 * BURST + RATE * SECONDS * 1.25 + 2 * RATE * 0.25
    assert alone >= 2 * RATE * SECONDS * 0.8
    assert alone > shared * 1.4
    print(f"\nrate limit {RATE:.0f}/s over {SECONDS:.0f} s: shared {shared}, per process {alone}")
