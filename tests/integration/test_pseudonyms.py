"""The pseudonym cache against a real database, on a fake clock: a mapping deleted elsewhere
(another process forgetting the listener) stops being used once the cached entry expires, and
expired entries do not linger in memory."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from gateway.serving.listeners import Pseudonyms


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_entry_is_trusted_for_its_lifetime_only(pool: asyncpg.Pool) -> None:
    clock = Clock()
    cache = Pseudonyms(pool, ttl_seconds=5, clock=clock)
    old = await cache.one("u-1")
    assert await cache.lookup("u-1") == old
    # Another process forgets u-1: the row goes, this process has not heard.
    await pool.execute("DELETE FROM listeners WHERE user_id = 'u-1'")
    clock.now += 4.9
    assert await cache.one("u-1") == old  # within the bound
    clock.now += 0.2
    new = await cache.one("u-1")
    assert new != old
    assert await cache.lookup("u-1") == new


async def test_expired_entries_leave_memory(pool: asyncpg.Pool) -> None:
    clock = Clock()
    cache = Pseudonyms(pool, ttl_seconds=5, clock=clock)
    await cache.resolve(["gone-1", "gone-2"])
    clock.now += 6
    await cache.one("someone-else")  # any lookup that reaches the database sweeps
    assert set(cache._cache) == {"someone-else"}


async def test_delete_evicts_at_once_and_only_the_current_mapping(pool: asyncpg.Pool) -> None:
    cache = Pseudonyms(pool, ttl_seconds=3600)
    first = await cache.one("u-2")
    await cache.delete("u-2", first)
    second = await cache.one("u-2")
    assert second != first
    await cache.delete("u-2", first)  # a late delete of the old mapping leaves the new one
    assert await cache.lookup("u-2") == second


async def test_concurrent_first_sightings_of_overlapping_ids_do_not_deadlock(
    pool: asyncpg.Pool,
) -> None:
    """Outcome batches arriving together often name the same new listeners in another order
    (MovieLens's bench hit it at once: "deadlock detected", a 500 to both requests)."""
    rng = random.Random(4)
    for attempt in range(10):
        ids = [f"new-{attempt}-{k}" for k in range(300)]
        batches = []
        for _ in range(6):
            batch = rng.sample(ids, 200)
            rng.shuffle(batch)
            batches.append(batch)
        # Separate caches: each request meets the ids as a process seeing them first would.
        results = await asyncio.gather(*(Pseudonyms(pool).resolve(b) for b in batches))
        merged: dict[str, str] = {}
        for got in results:
            for uid, pseudonym in got.items():
                assert merged.setdefault(uid, pseudonym) == pseudonym
