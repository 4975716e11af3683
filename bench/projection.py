"""Projection catch-up: events per second of the rewards projector over a large log, beside one
SQL statement that computes the same item-reward aggregate (served, attributed reward sum) over
the same events: the database's own limit for this work.

    python bench/projection.py [--events 1000000] [--url postgresql://...]

It makes its own database, fills it with a synthetic log via COPY (slates of 10 items, outcomes
of every kind, some attributed, streams on later days), then times, in one run:
  1. the GROUP BY statement,
  2. the rewards projector catching up from position zero (the real Runner, real tables),
  3. the listeners projector likewise,
and checks that the projector's item rewards equal the statement's before printing the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson

from domain.events import OutcomeKind
from domain.rewards import DEFAULT
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.runner import Runner, head

from _common import EVENT_COLUMNS, add_url_argument, synthetic_log, throwaway_database

START = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_rows(n: int) -> list[tuple[str, str, str]]:
    """(stream_id, event_type, payload json) rows: ~9% slates of 10, the rest outcomes, one
    every 5 s; an attributed outcome occurs up to 10 hours (and some days) after its slate."""

    def attributed_at(rng: random.Random, t: datetime, served_at: datetime) -> datetime:
        return served_at + timedelta(
            minutes=rng.randint(0, 600), days=rng.choice([0, 0, 0, 1, 2, 9])
        )

    return [
        (stream, kind, orjson.dumps(payload).decode())
        for _, _, stream, kind, payload in synthetic_log(
            n, lambda i: START + timedelta(seconds=i * 5), attributed_at
        )
    ]


def group_by_sql() -> str:
    weights = ", ".join(
        f"('{k.value}', {DEFAULT.weights.get(k, Decimal(0))}::numeric, "
        f"{DEFAULT.windows.get(k, 0)}, {'true' if k is OutcomeKind.SKIP else 'false'})"
        for k in OutcomeKind
    )
    return f"""
WITH w(kind, weight, window_s, is_skip) AS (VALUES {weights}),
served AS (
    SELECT (e.payload->>'recommendation_id')::uuid AS rec,
           (e.payload->>'requested_at')::timestamptz AS at,
           s->>'item_id' AS item
    FROM events e, jsonb_array_elements(e.payload->'slate') AS s
    WHERE e.event_type = 'RecommendationServed'
),
outcomes AS (
    SELECT (payload->>'recommendation_id')::uuid AS rec, payload->>'item_id' AS item,
           payload->>'kind' AS kind, (payload->>'occurred_at')::timestamptz AS occurred,
           (payload->>'value')::float8 AS value
    FROM events WHERE event_type = 'OutcomeRecorded' AND payload->>'recommendation_id' IS NOT NULL
),
rewards AS (
    SELECT o.item, sum(CASE WHEN w.is_skip AND o.value >= {DEFAULT.skip_threshold_ms}
                            THEN 0 ELSE w.weight END) AS reward
    FROM outcomes o JOIN w ON w.kind = o.kind
    JOIN served s ON s.rec = o.rec AND s.item = o.item
    WHERE o.occurred BETWEEN s.at - interval '1 minute' AND s.at + w.window_s * interval '1 second'
    GROUP BY o.item
)
SELECT s.item, count(*) AS served, coalesce(max(r.reward), 0) AS reward
FROM served s LEFT JOIN rewards r ON r.item = s.item
GROUP BY s.item
"""


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_url_argument(ap)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=5000)
    args = ap.parse_args()

    async with throwaway_database(args.url) as url:
        conn = await asyncpg.connect(url)
        print(f"generating {args.events:,} events ...", flush=True)
        rows = synthetic_rows(args.events)
        t0 = time.perf_counter()
        for i in range(0, len(rows), 50_000):
            chunk = rows[i : i + 50_000]
            await conn.copy_records_to_table(
                "events",
                records=[
                    (s, 1, uuid.uuid4(), t, 1 if t != "RecommendationServed" else 2, p)
                    for s, t, p in chunk
                ],
                columns=EVENT_COLUMNS[:-1],  # no metadata
            )
        await conn.execute("ANALYZE events")
        print(f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)

        t0 = time.perf_counter()
        baseline = await conn.fetch(group_by_sql())
        sql_s = time.perf_counter() - t0
        print(
            f"GROUP BY statement: {sql_s:.2f} s = {args.events / sql_s:,.0f} events/s", flush=True
        )

        timings: dict[str, float] = {}
        for pname in ("rewards", "listeners"):
            runner = Runner(url, PROJECTIONS[pname], batch_size=args.batch_size)
            target = await head(conn)
            t0 = time.perf_counter()
            task = asyncio.create_task(runner.run())
            await runner.wait_for(target, timeout=3600)
            timings[pname] = time.perf_counter() - t0
            task.cancel()
            print(
                f"{pname} projector catch-up: {timings[pname]:.2f} s = "
                f"{args.events / timings[pname]:,.0f} events/s",
                flush=True,
            )

        schema = await conn.fetchval("SELECT schema_name FROM projections WHERE name = 'rewards'")
        projected = {
            r[0]: (int(r[1]), Decimal(r[2]))
            for r in await conn.fetch(
                f'SELECT item_id, sum(served), sum(reward_sum) FROM "{schema}".item_rewards '
                "GROUP BY item_id"
            )
        }
        expected = {r[0]: (int(r[1]), Decimal(r[2])) for r in baseline}
        same = projected == expected
        print(f"projector item rewards equal the statement's: {same} ({len(expected):,} items)")
        print(f"ratio rewards projector / GROUP BY: {sql_s / timings['rewards']:.3f} (goal >= 0.5)")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
