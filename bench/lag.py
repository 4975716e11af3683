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
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.auth import Scope, create_key
from gateway.client import SegueClient, outcome
from gateway.database import migrate
from gateway.projector import status

ROOT = Path(__file__).resolve().parents[1]


def with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--url",
        default=os.environ.get(
            "SEGUE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    ap.add_argument("--rate", type=int, default=5000, help="outcomes per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=100, help="outcomes per request")
    args = ap.parse_args()

    name = f"segue_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_db(args.url, name)
    port = free_port()
    server: subprocess.Popen[bytes] | None = None
    try:
        await migrate(url)
        conn = await asyncpg.connect(url)
        _, key = await create_key(conn, "bench", frozenset(Scope))
        env = {**os.environ, "SEGUE_DATABASE_URL": url, "SEGUE_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        rng = random.Random(3)
        async with SegueClient(base, key, timeout=60) as client:
            deadline = time.monotonic() + 60
            while not await client.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not start")
                await asyncio.sleep(0.2)
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
            # Let the projectors drain, so the tail of the run is sampled too.
            drain_deadline = time.monotonic() + 30
            while time.monotonic() < drain_deadline:
                if not any(s.lag_events for s in await status(conn)):
                    break
                await asyncio.sleep(0.1)  # polling another process's progress
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
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
