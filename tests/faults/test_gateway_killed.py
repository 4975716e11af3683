"""Scenario 1: the gateway is SIGKILLed while clients post outcomes and recommendations as fast
as they are answered, and restarted, several times. Every request answered 2xx is in the log
exactly once, and after the last restart the projections catch up and equal a rebuild."""

from __future__ import annotations

import asyncio
import random
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from tests.faults.helpers import (
    Gateway,
    Load,
    assert_acknowledged_stored_once,
    make_key,
    seed_catalogue,
    summary,
    wait_until,
)
from tests.faults.projections import assert_equal_to_rebuilds, caught_up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

KILLS = 4


async def test_sigkill_under_load_loses_and_duplicates_nothing(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(61)
    key = await make_key(db_url)
    gateway = Gateway(db_url, tmp_path, SEGUE_RUN_INDEX_BUILDER="false")
    conn = await asyncpg.connect(db_url)
    try:
        async with gateway:
            await seed_catalogue(gateway.base_url, key, 40)
            load = Load(gateway.base_url, key)
            async with load.running(outcome_clients=3, recommendation_clients=2):
                for _ in range(KILLS):
                    # Let the clients get going, then kill it with requests in flight.
                    before = load.statuses[200]
                    await wait_until(
                        partial(_more, load, before, 150), "clients to be answered", 30
                    )
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    gateway.kill()
                    await asyncio.sleep(rng.uniform(0.1, 0.5))  # clients meet a closed port
                    await gateway.start()
                last = load.statuses[200]
                await wait_until(lambda: _more(load, last, 100), "answers after the restart", 30)
            assert set(load.statuses) <= {200, 503}, load.statuses
            assert not [p for p in load.problems if p[0] != 503]
            checked = await assert_acknowledged_stored_once(conn, load)
            took = await wait_until(lambda: caught_up(conn), "the projections to catch up", 60)
            events = await assert_equal_to_rebuilds(db_url, conn)
        assert "Traceback" not in gateway.all_logs()
    finally:
        await conn.close()
    summary(
        "gateway SIGKILL",
        kills=KILLS,
        survived=KILLS,
        acknowledged_checked=checked,
        events_in_log=events,
        unanswered_requests=sum(load.failures.values()),
        catch_up_seconds=round(took, 2),
    )


async def _more(load: Load, before: int, n: int) -> bool:
    return load.statuses[200] >= before + n
