"""What bounding the pseudonym cache costs: the hot path's cache hit with and without the expiry
check, and the database round trip an expired entry costs.

    python bench/pseudonym_cache.py [--url URL] [--calls N]

The URL names a server (default: $SEGUE_BENCH_DATABASE_URL, else the local one); the benchmark
creates its own database there, migrates it, and drops it at the end. Prints the median of five
rounds for each figure. An expired entry is looked up again at most once per listener per
`SEGUE_PSEUDONYM_CACHE_SECONDS` per process: N active listeners cost N / TTL lookups a second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from gateway.serving.listeners import Pseudonyms
from gateway.store.database import create_pool

from _common import add_url_argument, throwaway_database

ROUNDS = 5
LISTENERS = 1000


class Unbounded:
    """The cache as it was before erasure: a hit is trusted forever (the hit path only)."""

    def __init__(self, cache: dict[str, str]) -> None:
        self._cache: OrderedDict[str, str] = OrderedDict(cache)

    async def resolve(self, user_ids: list[str]) -> dict[str, str]:
        wanted = set(user_ids)
        out: dict[str, str] = {}
        missing: list[str] = []
        for uid in wanted:
            hit = self._cache.get(uid)
            if hit is None:
                missing.append(uid)
            else:
                out[uid] = hit
        assert not missing
        return out


async def per_call(
    resolve: Callable[[list[str]], Awaitable[dict[str, str]]], ids: list[str], calls: int
) -> float:
    """Microseconds per one-listener resolve."""
    start = time.perf_counter()
    for i in range(calls):
        await resolve([ids[i % len(ids)]])
    return (time.perf_counter() - start) / calls * 1e6


async def run(url: str, calls: int) -> None:
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        users = [f"user-{i}" for i in range(LISTENERS)]
        bounded = Pseudonyms(pool, ttl_seconds=3600)
        mapping = await bounded.resolve(users)
        unbounded = Unbounded(mapping)
        hits_old, hits_new, misses = [], [], []
        expiring = Pseudonyms(pool, ttl_seconds=0)  # every call a round trip
        for _ in range(ROUNDS):
            hits_old.append(await per_call(unbounded.resolve, users, calls))
            hits_new.append(await per_call(bounded.resolve, users, calls))
            misses.append(await per_call(expiring.resolve, users, 2000))
        old, new = statistics.median(hits_old), statistics.median(hits_new)
        print(f"cache hit, trusted forever (before):   {old:6.2f} us per resolve")
        print(
            f"cache hit, with the expiry check (now): {new:6.2f} us per resolve (+{new - old:.2f})"
        )
        print(f"expired entry, one round trip:          {statistics.median(misses):6.1f} us")
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_url_argument(parser)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    async with throwaway_database(args.url) as url:
        await run(url, args.calls)


if __name__ == "__main__":
    asyncio.run(main())
