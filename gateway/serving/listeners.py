"""Listener pseudonyms: the gateway's only mapping between a client's user id and the events.

Each user id gets a random pseudonym on first sight; events, projections and analytics only ever
hold the pseudonym. Forgetting a listener (`gateway.serving.erasure`) deletes the mapping row, after
which nothing can recompute the pseudonym from the id: the random row is the per-user secret.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import asyncpg

_ASSIGN = """
WITH ins AS (
    -- In id order: two requests assigning overlapping new ids must take the rows' locks in the
    -- same order, or each waits for the other ("deadlock detected", a 500 to both).
    INSERT INTO listeners (user_id)
    SELECT u FROM (SELECT DISTINCT unnest($1::text[]) AS u) AS ids ORDER BY u
    ON CONFLICT (user_id) DO NOTHING
    RETURNING user_id, pseudonym
)
SELECT user_id, pseudonym::text FROM ins
UNION ALL
SELECT user_id, pseudonym::text FROM listeners WHERE user_id = ANY($1::text[])
"""


class Pseudonyms:
    """user id -> pseudonym, with a bounded in-process cache.

    A mapping only changes when its listener is forgotten, which may happen in another process,
    so a cached entry is trusted for `ttl_seconds` and then looked up again: that bounds how long
    another gateway keeps using a forgotten listener's pseudonym (the process that forgets evicts
    at once)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        cache_size: int = 100_000,
        ttl_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._cache_size = cache_size
        self._ttl = ttl_seconds
        self._clock = clock

    async def resolve(self, user_ids: Iterable[str]) -> dict[str, str]:
        """The pseudonym of every id, assigning new ones to ids not seen before (or forgotten)."""
        wanted = set(user_ids)
        out: dict[str, str] = {}
        missing: list[str] = []
        now = self._clock()
        for uid in wanted:
            hit = self._cache.get(uid)
            if hit is None or hit[1] <= now:
                missing.append(uid)
            else:
                out[uid] = hit[0]
        if missing:
            # A row inserted concurrently by another process is neither returned by our INSERT
            # nor visible to the statement's snapshot, hence the second round for stragglers.
            for _ in range(2):
                rows = await self._pool.fetch(_ASSIGN, missing)
                for row in rows:
                    out[row[0]] = row[1]
                    self._remember(row[0], row[1], now + self._ttl)
                missing = [u for u in missing if u not in out]
                if not missing:
                    break
            if missing:
                raise RuntimeError(f"could not assign pseudonyms for {len(missing)} listeners")
            self._expire(now)
        return out

    async def one(self, user_id: str) -> str:
        return (await self.resolve([user_id]))[user_id]

    async def lookup(self, user_id: str) -> str | None:
        """The stored pseudonym of `user_id`, if it has one; never assigns, never cached."""
        value = await self._pool.fetchval(
            "SELECT pseudonym::text FROM listeners WHERE user_id = $1", user_id
        )
        return str(value) if value is not None else None

    async def delete(self, user_id: str, pseudonym: str) -> None:
        """Delete the mapping (if it is still this one) and forget it in this process."""
        self.evict(user_id)
        await self._pool.execute(
            "DELETE FROM listeners WHERE user_id = $1 AND pseudonym = $2::uuid", user_id, pseudonym
        )
        # Again: a resolve that was in flight may have cached the old row meanwhile.
        self.evict(user_id)

    def evict(self, user_id: str) -> None:
        self._cache.pop(user_id, None)

    def _expire(self, now: float) -> None:
        # Entries are kept in refresh order with one lifetime, so the expired ones are at the
        # front. Dropping them keeps a forgotten listener's id out of this process's memory too,
        # at no cost to a cache hit (this runs after a lookup that went to the database anyway).
        while self._cache:
            expires = next(iter(self._cache.values()))[1]
            if expires > now:
                break
            self._cache.popitem(last=False)

    def _remember(self, user_id: str, pseudonym: str, expires: float) -> None:
        self._cache[user_id] = (pseudonym, expires)
        self._cache.move_to_end(user_id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
