"""Analytics views at volume: how long an analyst waits for one day of a month-long log, against
the same question over the whole month.

    python bench/analytics.py [--events 500000] [--days 30] [--url postgresql://...]

It makes its own database, migrates it, loads a synthetic log with COPY (slates of 10 items, then
outcomes of every kind, 60% naming a recent slate), recorded in time order across `--days` days,
as a live log is. Then, for each view, it times `count(*)` over the last day (a filter on
`recorded_at`, or `day` for the daily view) and over everything, and prints both with their
ratio. The one-day figure should be a small fraction of the full one: the filter reaches the
events table's BRIN indexes instead of scanning the log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from domain.events import OutcomeKind
from gateway.database import migrate

KINDS = [k for k in OutcomeKind if k is not OutcomeKind.ACTIVE_DAY]
START = datetime(2026, 1, 1, tzinfo=UTC)


def with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


Record = tuple[datetime, str, int, uuid.UUID, str, int, str]


def synthetic_log(n: int, days: int, seed: int = 1) -> list[Record]:
    """COPY records for events: one slate of 10 in 11, the rest outcomes."""
    rng = random.Random(seed)
    items = [f"it{i}" for i in range(20_000)]
    users = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(50_000)]
    step = timedelta(days=days) / n
    recent: list[tuple[uuid.UUID, str, list[str], datetime]] = []
    rows: list[Record] = []
    for i in range(n):
        t = START + step * i
        if i % 11 == 0 or not recent:
            rid = uuid.UUID(int=rng.getrandbits(128))
            user = rng.choice(users)
            slate = rng.sample(items, 10)
            recent.append((rid, user, slate, t))
            if len(recent) > 500:
                recent.pop(0)
            payload = {
                "recommendation_id": str(rid),
                "user": user,
                "surface": rng.choice(["home", "search", "podcasts"]),
                "context": {},
                "slate": [
                    {"item_id": it, "position": p, "score": 0.0, "propensity": 0.1}
                    for p, it in enumerate(slate)
                ],
                "policy": {"name": "uniform", "version": "1"},
                "index_version": "none",
                "requested_at": t.isoformat(),
                "request": {"n": 10, "candidates": None, "exclude": [], "kinds": []},
                "members": [],
            }
            rows.append(
                (
                    t,
                    f"recommendation-{rid}",
                    1,
                    uuid.uuid4(),
                    "RecommendationServed",
                    3,
                    orjson.dumps(payload).decode(),
                )
            )
            continue
        kind = rng.choice(KINDS)
        if rng.random() < 0.6:
            rid, user, slate, served_at = rng.choice(recent)
            item = rng.choice(slate)
            rec: str | None = str(rid)
            occurred = min(t, served_at + timedelta(minutes=rng.randint(0, 600)))
        else:
            user, item, rec, occurred = rng.choice(users), rng.choice(items), None, t
        outcome = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "user": user,
            "item_id": item,
            "kind": kind.value,
            "occurred_at": occurred.isoformat(),
            "recommendation_id": rec,
            "value": float(rng.randint(0, 60_000)),
        }
        rows.append(
            (
                t,
                f"listener-{user}",
                i,
                uuid.uuid4(),
                "OutcomeRecorded",
                1,
                orjson.dumps(outcome).decode(),
            )
        )
    return rows


QUERIES = {
    "recommendations": "SELECT count(*) FROM analytics.recommendations{where}",
    "outcomes": "SELECT count(*) FROM analytics.outcomes{where}",
    "attributed_outcomes": "SELECT count(*), sum(reward) FROM analytics.attributed_outcomes{where}",
    "item_rewards_daily": "SELECT count(*), sum(served), sum(reward) "
    "FROM analytics.item_rewards_daily{day}",
}


async def timed(conn: asyncpg.Connection, sql: str, *args: object) -> tuple[float, object]:
    t0 = time.perf_counter()
    row = await conn.fetchrow(sql, *args)
    return time.perf_counter() - t0, tuple(row) if row is not None else None


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
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the database to explore it")
    args = ap.parse_args()

    name = f"segue_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_db(args.url, name)
    try:
        await migrate(url)
        conn = await asyncpg.connect(url)
        print(f"generating {args.events:,} events over {args.days} days ...", flush=True)
        rows = synthetic_log(args.events, args.days)
        t0 = time.perf_counter()
        for i in range(0, len(rows), 50_000):
            await conn.copy_records_to_table(
                "events",
                records=rows[i : i + 50_000],
                columns=[
                    "recorded_at",
                    "stream_id",
                    "stream_version",
                    "event_id",
                    "event_type",
                    "schema_version",
                    "payload",
                ],
            )
        await conn.execute("VACUUM ANALYZE events")
        print(f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)

        last_day = START + timedelta(days=args.days - 1)
        print(f"{'view':<22}{'last day (s)':>14}{'all days (s)':>14}{'ratio':>8}")
        for view, sql in QUERIES.items():
            one_sql = sql.format(where=" WHERE recorded_at >= $1", day=" WHERE day >= $1")
            arg: object = last_day.date() if "{day}" in sql else last_day
            one, _ = await timed(conn, one_sql, arg)
            full, _ = await timed(conn, sql.format(where="", day=""))
            print(f"{view:<22}{one:>14.3f}{full:>14.3f}{one / full:>8.3f}", flush=True)
        await conn.close()
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
