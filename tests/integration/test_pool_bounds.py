"""The app's pool bounds waiting for a connection by its statement bound (decision 68), against a
real server: every connection held, the next caller gets TimeoutError (an unavailable error, so a
503) after about the bound instead of waiting for one to come back."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.store.database import create_pool, unavailable

BOUND = 0.5


async def test_waiting_for_a_connection_is_bounded_by_the_statement_bound(db_url: str) -> None:
    pool = await create_pool(db_url, min_size=1, max_size=1, command_timeout=BOUND)
    try:
        async with pool.acquire() as held:
            assert await held.fetchval("SELECT 1") == 1
            started = time.monotonic()
            with pytest.raises(TimeoutError) as caught:
                await pool.fetchval("SELECT 2")
            waited = time.monotonic() - started
            assert BOUND * 0.9 <= waited < BOUND + 1.0, waited
            assert unavailable(caught.value)
        # Released, the connection serves the next caller at once.
        assert await pool.fetchval("SELECT 3") == 3
        # A caller may still ask for a bound of its own.
        async with pool.acquire() as held:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with pool.acquire(timeout=0.1):
                    pass
            assert time.monotonic() - started < BOUND * 0.9
    finally:
        await pool.close()


async def test_a_pool_without_a_statement_bound_waits_for_a_connection(db_url: str) -> None:
    """Batch work (`segue evaluate`) opens pools without a bound: they wait, as asyncpg does."""
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        held = await pool.acquire()
        waiting = asyncio.ensure_future(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await pool.release(held)
        assert await asyncio.wait_for(waiting, 5) == 1
    finally:
        await pool.close()
