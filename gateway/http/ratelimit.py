"""Per-key rate limits: a token bucket per API key, shared by every gateway process.

A key may make `rate` requests a second on average and `burst` at once. Each process decides
from its own buckets, so no request waits on a round trip; `SharedSpend` makes the limit hold
across processes by publishing, every fraction of a second, how many tokens this process spent
per key, and debiting from its buckets what the others spent. Every bucket then refills at
`rate` and drains at the whole service's spending, so together the processes admit `rate` a
second; between two syncs each may admit up to what its own bucket holds (the overshoot is
bounded by processes x (burst + rate x sync interval), spent once, not per second). While the
database is out of reach each process limits alone, as before.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from gateway.store.background import run_every

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        # Tokens this process has granted per key since it started: what SharedSpend publishes.
        self.spent: dict[str, int] = {}

    def _refill(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 100_000:  # keys are few; this only bounds a pathological case
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def debit(self, key: str, tokens: float) -> None:
        """Take what other processes granted `key` out of this process's bucket. The bucket may
        go into debt: a process whose clients spend every token as it refills holds an empty
        bucket, and the others' spending must still count, or each process would grant the
        full rate. The debt is capped at a burst plus a second of refill, so one process's
        clients wait at most about that long however the load was spread."""
        bucket = self._refill(key, self._clock())
        bucket.tokens = max(-(self.burst + self.rate), bucket.tokens - tokens)

    def acquire(self, key: str) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds until one is available."""
        bucket = self._refill(key, self._clock())
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self.spent[key] = self.spent.get(key, 0) + 1
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a client that obeys it is let in."""
    return str(max(1, math.ceil(seconds)))


class SharedSpend:
    """Publishes this process's spending per key to `rate_limit_spend` (an unlogged table: a
    crash may lose the last second of counts, which only matters for a second) and debits the
    other processes' spending from `limiter`.

    Each row is a process's running total for one key, so reading a row twice, or late, debits
    nothing twice: only the growth since the row was last seen is debited. Rows seen at start-up
    are taken as already paid for; a process that stops deletes its rows, and rows untouched for
    an hour (a killed process) are deleted by whichever process notices.
    """

    def __init__(self, pool: asyncpg.Pool, limiter: RateLimiter, every: float = 0.25) -> None:
        self._pool = pool
        self._limiter = limiter
        self.every = every
        self.process = uuid.uuid4()
        self._published: dict[str, int] = {}
        self._seen: dict[tuple[uuid.UUID, str], int] | None = None  # None: not read yet
        self._syncs = 0

    async def sync(self) -> None:
        spent = dict(self._limiter.spent)
        changed = [(k, n) for k, n in spent.items() if self._published.get(k) != n]
        async with self._pool.acquire() as conn:
            if changed:
                await conn.execute(
                    "INSERT INTO rate_limit_spend AS t (process_id, key_id, spent, updated_at) "
                    "SELECT $1, k, n, now() FROM unnest($2::text[], $3::bigint[]) AS u(k, n) "
                    "ON CONFLICT (process_id, key_id) "
                    "DO UPDATE SET spent = excluded.spent, updated_at = excluded.updated_at",
                    self.process,
                    [k for k, _ in changed],
                    [n for _, n in changed],
                )
                self._published.update(changed)
            rows = await conn.fetch(
                "SELECT process_id, key_id, spent FROM rate_limit_spend WHERE process_id <> $1",
                self.process,
            )
            self._syncs += 1
            if self._syncs % 1000 == 1:
                await conn.execute(
                    "DELETE FROM rate_limit_spend WHERE updated_at < now() - interval '1 hour'"
                )
        first = self._seen is None
        seen = self._seen or {}
        current: dict[tuple[uuid.UUID, str], int] = {}
        for process, key, total in rows:
            current[(process, key)] = total
            if first:
                continue
            # A row not seen before belongs to a process that started since: all of it is new.
            grown = total - seen.get((process, key), 0)
            if grown > 0:
                self._limiter.debit(key, grown)
        self._seen = current

    async def run(self) -> None:
        """Sync every `every` seconds for as long as the process runs. While the database is
        away the process limits alone and tries again, backing off."""
        await run_every(self.every, self.sync, "share rate-limit spending", log)

    async def close(self) -> None:
        """Remove this process's rows: its spending no longer needs to be counted."""
        async with self._pool.acquire() as conn:
            await conn.execute("DELETE FROM rate_limit_spend WHERE process_id = $1", self.process)
