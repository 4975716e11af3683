"""Listener pseudonyms: the gateway's only mapping between a client's user id and the events.

Each user id gets a random pseudonym on first sight; events, projections and analytics only ever
hold the pseudonym. Forgetting a listener deletes the mapping row.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import asyncpg

_ASSIGN = """
WITH ins AS (
    INSERT INTO listeners (user_id) SELECT DISTINCT unnest($1::text[])
    ON CONFLICT (user_id) DO NOTHING
    RETURNING user_id, pseudonym
)
SELECT user_id, pseudonym::text FROM ins
UNION ALL
SELECT user_id, pseudonym::text FROM listeners WHERE user_id = ANY($1::text[])
"""


class Pseudonyms:
    """user id -> pseudonym, with a bounded in-process cache (the mapping never changes while it
    exists; erasure removes it, see `forget`)."""

    def __init__(self, pool: asyncpg.Pool, cache_size: int = 100_000) -> None:
        self._pool = pool
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size

    async def resolve(self, user_ids: Iterable[str]) -> dict[str, str]:
        wanted = set(user_ids)
        out: dict[str, str] = {}
        missing: list[str] = []
        for uid in wanted:
            hit = self._cache.get(uid)
            if hit is None:
                missing.append(uid)
            else:
                out[uid] = hit
        if missing:
            # A row inserted concurrently by another process is neither returned by our INSERT
            # nor visible to the statement's snapshot, hence the second round for stragglers.
            for _ in range(2):
                rows = await self._pool.fetch(_ASSIGN, missing)
                for row in rows:
                    out[row[0]] = row[1]
                    self._remember(row[0], row[1])
                missing = [u for u in missing if u not in out]
                if not missing:
                    break
            if missing:
                raise RuntimeError(f"could not assign pseudonyms for {len(missing)} listeners")
        return out

    async def one(self, user_id: str) -> str:
        return (await self.resolve([user_id]))[user_id]

    def _remember(self, user_id: str, pseudonym: str) -> None:
        self._cache[user_id] = pseudonym
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
