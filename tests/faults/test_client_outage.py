"""The Python client across a PostgreSQL outage: a call made while the database is down is
retried (503, `Retry-After`) until it is back, and answers as if nothing had happened; a
recommendation retried is one slate, logged once (its `Idempotency-Key` is made once per call)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway.client import SegueClient, outcome
from gateway.store.database import migrate
from tests.faults.helpers import Gateway, make_key, private_cluster, seed_catalogue, summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOWN_SECONDS = 3.0


async def test_calls_made_during_an_outage_complete_once_it_is_over(tmp_path: Path) -> None:
    with private_cluster() as cluster:
        admin = await asyncpg.connect(cluster.url(), timeout=10)
        try:
            await admin.execute("CREATE DATABASE segue")
        finally:
            await admin.close()
        db_url = cluster.url("segue")
        await migrate(db_url)
        key = await make_key(db_url)
        # Keys cached past the outage: the calls meet the database where they use it.
        gateway = Gateway(db_url, tmp_path, SEGUE_KEY_CACHE_SECONDS="120")
        async with gateway, SegueClient(gateway.base_url, key, retry_seconds=60) as client:
            await seed_catalogue(gateway.base_url, key, 30)
            await client.recommend("warm-up", n=3)  # the key is cached now

            await asyncio.to_thread(cluster.stop, "fast")
            stopped = time.monotonic()
            slate = asyncio.create_task(client.recommend("u1", n=5))
            outcomes_sent = [outcome("u2", f"it-{k}", "stream_30s") for k in range(4)]
            recorded = asyncio.create_task(client.record_outcomes(outcomes_sent))
            await asyncio.sleep(DOWN_SECONDS)
            assert not slate.done()
            assert not recorded.done()
            await asyncio.to_thread(cluster.start)
            answer, accepted = await asyncio.wait_for(asyncio.gather(slate, recorded), 60)
            took = time.monotonic() - stopped

            assert client.retries >= 2  # it did meet the outage
            assert accepted == {"accepted": 4, "duplicates": 0}
            assert len(answer["items"]) == 5
            conn = await asyncpg.connect(db_url, timeout=10)
            try:
                logged = await conn.fetch(
                    "SELECT payload FROM events WHERE stream_id = $1",
                    f"recommendation-{answer['recommendation_id']}",
                )
                stored = await conn.fetchval(
                    "SELECT count(*) FROM event_ids WHERE event_id = ANY($1::uuid[])",
                    [o["event_id"] for o in outcomes_sent],
                )
            finally:
                await conn.close()
            # One slate logged for the call, the one answered, however many attempts it took.
            assert len(logged) == 1
            logged_slate = orjson.loads(logged[0]["payload"])["slate"]
            assert [e["item_id"] for e in logged_slate] == [e["item_id"] for e in answer["items"]]
            assert stored == 4
    summary(
        "client across an outage",
        down_s=DOWN_SECONDS,
        answered_after_s=round(took, 1),
        retries=client.retries,
    )
