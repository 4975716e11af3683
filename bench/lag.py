"""Projection lag under load: outcomes posted through the HTTP API at a sustained rate while the
gateway's in-process projectors run; prints p50 and p99 lag in seconds.

    python bench/lag.py [--rate 5000] [--seconds 30] [--batch 100] [--url postgresql://...]

It starts a real `segue serve` on a fresh database, creates a key, puts a catalogue and some
served slates in place, then posts outcomes (60% attributed to a slate) at --rate per second in
requests of --batch. Every 100 ms it samples each projection's lag (age of the oldest event not
yet applied, as `segue status` computes it). The achieved rate is printed beside the target, so a
load generator that falls behind is visible rather than flattering.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import asyncpg

from gateway.client import outcome
from gateway.projections.runner import status

from _common import add_url_argument, bench_key, quantile, serving, throwaway_database


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_url_argument(ap)
    ap.add_argument("--rate", type=int, default=5000, help="outcomes per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=100, help="outcomes per request")
    args = ap.parse_args()

    async with throwaway_database(args.url) as url:
        key = await bench_key(url)
        conn = await asyncpg.connect(url)
        rng = random.Random(3)
        async with serving(url, key, timeout=60, stop_timeout=30) as client:
            items = [{"item_id": f"it{i}", "kind": "track", "attributes": {}} for i in range(2000)]
            for i in range(0, len(items), 1000):
                await client.upsert_items(items[i : i + 1000])
            slates = []
            for u in range(200):
                rec = await client.recommend(f"u{u}", n=10)
                slates.append(
                    (f"u{u}", rec["recommendation_id"], [x["item_id"] for x in rec["items"]])
                )

            kinds = ["stream_30s", "stream_30s", "complete", "skip", "save", "like", "click"]

            def batch() -> list[dict[str, object]]:
                out = []
                for _ in range(args.batch):
                    if rng.random() < 0.6:
                        user, rid, slate = rng.choice(slates)
                        out.append(
                            outcome(
                                user, rng.choice(slate), rng.choice(kinds), recommendation_id=rid
                            )
                        )
                    else:
                        out.append(
                            outcome(
                                f"u{rng.randrange(5000)}",
                                f"it{rng.randrange(2000)}",
                                rng.choice(kinds),
                            )
                        )
                return out

            sent = 0
            stop = asyncio.Event()
            lags: dict[str, list[float]] = {}

            async def sample() -> None:
                while not stop.is_set():
                    for s in await status(conn):
                        lags.setdefault(s.name, []).append(s.lag_seconds)
                    await asyncio.sleep(0.1)

            async def post(body: list[dict[str, object]]) -> None:
                nonlocal sent
                result = await client.record_outcomes(body)
                sent += result["accepted"]

            sampler = asyncio.create_task(sample())
            interval = args.batch / args.rate
            start = time.monotonic()
            inflight: set[asyncio.Task[None]] = set()
            tick = 0
            while time.monotonic() - start < args.seconds:
                tick += 1
                task = asyncio.create_task(post(batch()))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                await asyncio.sleep(max(0.0, start + tick * interval - time.monotonic()))
            await asyncio.gather(*inflight)
            elapsed = time.monotonic() - start
            # Let the projectors drain, so the tail of the run is sampled too. The sampler is
            # still using `conn` meanwhile, and one asyncpg connection runs one statement at a
            # time ("another operation is in progress"): the drain polls on its own.
            watcher = await asyncpg.connect(url)
            try:
                drain_deadline = time.monotonic() + 30
                while time.monotonic() < drain_deadline:
                    if not any(s.lag_events for s in await status(watcher)):
                        break
                    await asyncio.sleep(0.1)  # polling another process's progress
            finally:
                await watcher.close()
            stop.set()
            await sampler
        print(
            f"target {args.rate:,} outcomes/s, achieved {sent / elapsed:,.0f}/s "
            f"({sent:,} in {elapsed:.1f} s, {args.batch} per request)"
        )
        for pname, values in sorted(lags.items()):
            print(
                f"{pname:<10} lag p50 {statistics.median(values):.3f} s   "
                f"p99 {quantile(values, 0.99):.3f} s   max {max(values):.3f} s   "
                f"({len(values)} samples; goal p99 < 1 s)"
            )
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
