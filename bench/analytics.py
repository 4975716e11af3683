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
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from _common import EVENT_COLUMNS, add_url_argument, synthetic_log, throwaway_database

START = datetime(2026, 1, 1, tzinfo=UTC)

Record = tuple[datetime, str, int, uuid.UUID, str, int, str]


def synthetic_records(n: int, days: int) -> list[Record]:
    """COPY records for events: one slate of 10 in 11, the rest outcomes, recorded in time
    order over `days` days; an attributed outcome occurs within 10 hours of its slate."""
    step = timedelta(days=days) / n

    def attributed_at(rng: random.Random, t: datetime, served_at: datetime) -> datetime:
        return min(t, served_at + timedelta(minutes=rng.randint(0, 600)))

    return [
        (
            t,
            stream,
            1 if kind == "RecommendationServed" else i,
            uuid.uuid4(),
            kind,
            3 if kind == "RecommendationServed" else 1,
            orjson.dumps(payload).decode(),
        )
        for i, t, stream, kind, payload in synthetic_log(
            n, lambda i: START + step * i, attributed_at, {"members": []}
        )
    ]


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
    add_url_argument(ap)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the database to explore it")
    args = ap.parse_args()

    async with throwaway_database(args.url, keep=args.keep) as url:
        conn = await asyncpg.connect(url)
        print(f"generating {args.events:,} events over {args.days} days ...", flush=True)
        rows = synthetic_records(args.events, args.days)
        t0 = time.perf_counter()
        for i in range(0, len(rows), 50_000):
            await conn.copy_records_to_table(
                "events",
                records=rows[i : i + 50_000],
                columns=["recorded_at", *EVENT_COLUMNS[:-1]],  # no metadata
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


if __name__ == "__main__":
    asyncio.run(main())
