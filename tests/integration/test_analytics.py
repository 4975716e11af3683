"""The analytics views: they read every stored schema version, attribute outcomes exactly as the
rewards fold does, add up to what the rewards projection holds, are documented column by
column, and let a filter on time reach the events table's indexes."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest

from domain.events import (
    DomainEvent,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
    to_payload,
)
from domain.reward_fold import ORGANIC, RewardChanges, RewardState, fold
from domain.rewards import DEFAULT, HOUR, RewardDefinition
from domain.upcasting import decode
from gateway.projections.definitions import RewardsProjection, q
from gateway.projections.runner import create_version
from gateway.store.postgres import Connection
from gateway.store.schemas import event_schemas
from tests.integration.projection_helpers import (
    K,
    Timed,
    build_from_zero,
    catalogue,
    committed_events,
    make_world,
    seeded_uuid,
    timed,
    traffic,
)

BASE = datetime(2026, 3, 1, tzinfo=UTC)

# A definition unlike the default in every way the views read: windows, weights, skip threshold.
CUSTOM = RewardDefinition.from_json(
    {
        "version": "test-custom-1",
        "weights": {"stream_30s": "2", "skip": "-1", "save": "0.25", "click": "1"},
        "windows_seconds": {"stream_30s": 1800, "skip": 600, "save": 2 * 86_400, "click": 60},
        "skip_threshold_ms": 10_000,
    }
)


@dataclass(frozen=True)
class Row:
    """One event to insert as stored: any schema version, with its own recorded_at."""

    stream_id: str
    event_type: str
    schema_version: int
    payload: dict[str, Any]
    event_id: UUID


def as_row(event: DomainEvent, version: int | None = None) -> Row:
    """`event` as stored, optionally in an older RecommendationServed shape."""
    payload = to_payload(event)
    if not isinstance(event, RecommendationServed):
        version = None
    elif version is not None and version < 3:
        payload = {k: v for k, v in payload.items() if k != "members"}
        if version == 1:
            policy = payload.pop("policy")
            del payload["request"]
            payload["policy_name"], payload["policy_version"] = policy["name"], policy["version"]
    event_id = event.event_id if isinstance(event, OutcomeRecorded) else seeded_uuid(RNG)
    return Row(event.stream_id(), event.TYPE, version or event.SCHEMA_VERSION, payload, event_id)


RNG = random.Random(7)


async def insert(conn: Connection, transactions: Sequence[tuple[datetime, list[Row]]]) -> None:
    """Each (recorded_at, rows) in a transaction of its own, in order: the log holds them so."""
    versions: dict[str, int] = defaultdict(int)
    for at, rows in transactions:
        numbered = []
        for r in rows:
            versions[r.stream_id] += 1
            numbered.append((r, versions[r.stream_id]))
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO events (recorded_at, stream_id, stream_version, event_id, "
                "event_type, schema_version, payload) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
                [
                    (
                        at,
                        r.stream_id,
                        v,
                        r.event_id,
                        r.event_type,
                        r.schema_version,
                        orjson.dumps(r.payload).decode(),
                    )
                    for r, v in numbered
                ],
            )


def _when(event: DomainEvent, fallback: datetime) -> datetime:
    if isinstance(event, RecommendationServed):
        return event.requested_at
    if isinstance(event, OutcomeRecorded):
        # Clients report late, sometimes the next day; never before it happened.
        return event.occurred_at + timedelta(seconds=RNG.choice([1, 30, 600, 20 * HOUR]))
    return fallback


def edge_cases(definition: RewardDefinition, base: datetime) -> list[list[DomainEvent]]:
    """Slates and outcomes on every boundary of the attribution rule."""
    at = base + timedelta(days=2, hours=9)
    rec = seeded_uuid(RNG)
    slate = RecommendationServed(
        recommendation_id=rec,
        user="edge-listener",
        surface="home",
        context={},
        # An item listed twice counts at its last position, as in the fold.
        slate=(
            SlateEntry("edge-a", 0, 0.9, 0.5),
            SlateEntry("edge-b", 1, 0.5, 0.25),
            SlateEntry("edge-a", 2, 0.1, 0.25),
        ),
        policy_name="edge",
        policy_version="1",
        index_version="none",
        requested_at=at,
    )
    w = definition.window(K.STREAM_30S)
    tick = timedelta(microseconds=1)

    def out(item: str, kind: K, when: datetime, value: float | None = None) -> OutcomeRecorded:
        return OutcomeRecorded(seeded_uuid(RNG), "edge-listener", item, kind, when, rec, value)

    later_rec = seeded_uuid(RNG)
    later = RecommendationServed(
        recommendation_id=later_rec,
        user="edge-listener",
        surface="music",
        context={},
        slate=(SlateEntry("edge-c", 0, 1.0, 1.0),),
        policy_name="edge",
        policy_version="1",
        index_version="none",
        requested_at=at,
    )
    threshold = definition.skip_threshold_ms
    return [
        [slate],
        [
            out("edge-a", K.STREAM_30S, at - timedelta(minutes=1)),
            out("edge-a", K.STREAM_30S, at - timedelta(minutes=1) - tick),
            out("edge-b", K.STREAM_30S, at + w),
            out("edge-b", K.STREAM_30S, at + w + tick),
            out("edge-b", K.SKIP, at, threshold),
            out("edge-b", K.SKIP, at, threshold - 1),
            out("edge-a", K.SKIP, at, None),
            out("edge-c", K.STREAM_30S, at),  # not in the slate it names
        ],
        # Logged before the slate it names: the fold has not seen that slate yet.
        [OutcomeRecorded(seeded_uuid(RNG), "edge-listener", "edge-c", K.SAVE, at, later_rec)],
        [later],
        [OutcomeRecorded(seeded_uuid(RNG), "edge-listener", "edge-c", K.SAVE, at, later_rec)],
    ]


async def scenario(conn: Connection, definition: RewardDefinition, base: datetime = BASE) -> Timed:
    """Seeded traffic over the six days from `base`, old slate versions among it, and the edge
    cases; returns what the projector reads, in its order."""
    world = make_world(11, base, items=30, users=15)
    txs: list[tuple[datetime, list[Row]]] = [(base, [as_row(e) for e in catalogue(world)])]
    for sequence in traffic(world, recommendations=70, organic_outcomes=25, changes=5, days=6):
        for tx in sequence:
            version = RNG.choice([1, 2, 3, 3])
            when = max(_when(e, base) for e in tx)
            txs.append((when, [as_row(e, version) for e in tx]))
    for tx in edge_cases(definition, base):
        txs.append((max(_when(e, base) for e in tx), [as_row(e) for e in tx]))
    await insert(conn, txs)
    return timed(await committed_events(conn))


def fold_attribution(
    events: Timed, definition: RewardDefinition
) -> tuple[dict[UUID, tuple[UUID, int, str, Decimal]], int]:
    """Per outcome, what the pure fold attributes it to: (recommendation, position, surface,
    reward). Also how many outcomes there were in all."""
    state = RewardState()
    attributed: dict[UUID, tuple[UUID, int, str, Decimal]] = {}
    outcomes = 0
    for at, event in events:
        changes = RewardChanges()
        fold(state, changes, [(at, event)], definition)
        if not isinstance(event, OutcomeRecorded):
            continue
        outcomes += 1
        surfaces = {surface for (_, surface, _, _) in changes.outcomes}
        assert len(surfaces) == 1
        surface = surfaces.pop()
        if surface == ORGANIC:
            continue
        assert event.recommendation_id is not None
        position = state.served[event.recommendation_id].positions[event.item_id]
        reward = sum((v[1] for v in changes.item_rewards.values()), Decimal(0))
        attributed[event.event_id] = (event.recommendation_id, position, surface, reward)
    return attributed, outcomes


@pytest.mark.parametrize(
    ("definition", "live"), [(DEFAULT, False), (CUSTOM, True)], ids=["default", "live-custom"]
)
async def test_attribution_agrees_with_the_reward_fold(
    pool: asyncpg.Pool, definition: RewardDefinition, live: bool
) -> None:
    async with pool.acquire() as conn:
        if live:
            await create_version(conn, RewardsProjection(), definition, "live")
        events = await scenario(conn, definition)
        assert await conn.fetchval("SELECT version FROM analytics.reward_definition") == (
            definition.version
        )
        rows = await conn.fetch(
            "SELECT event_id, recommendation_id, position, surface, reward, definition_version "
            "FROM analytics.attributed_outcomes"
        )
    want, outcomes = fold_attribution(events, definition)
    got = {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
    assert {r[5] for r in rows} == {definition.version}
    # Both answers are far from trivial: many outcomes attributed, many not.
    assert 50 < len(want) < outcomes - 50
    assert got.keys() == want.keys()
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    assert not wrong, f"{len(wrong)} outcomes differ, e.g. {list(wrong.items())[:3]}"


async def test_item_rewards_daily_agrees_with_the_rewards_projection(
    db_url: str, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        await scenario(conn, DEFAULT)
        version = await build_from_zero(db_url, conn, RewardsProjection(), DEFAULT)
        s = q(version.schema)
        want: dict[tuple[str, date, str | None], list[Any]] = defaultdict(
            lambda: [0, 0, {}, Decimal(0)]
        )
        day = "(at AT TIME ZONE 'UTC')::date"
        for item, surface, d, served, reward in await conn.fetch(
            f"SELECT item_id, surface, {day}, sum(served), sum(reward_sum) "
            f"FROM {s}.item_rewards GROUP BY 1, 2, 3"
        ):
            key = (item, d, surface or None)
            want[key][0] += served
            want[key][3] += reward
        for item, surface, kind, d, n in await conn.fetch(
            f"SELECT item_id, surface, kind, {day}, sum(n) FROM {s}.item_outcomes "
            "GROUP BY 1, 2, 3, 4"
        ):
            key = (item, d, surface or None)
            want[key][1] += n
            want[key][2][kind] = n
        rows = await conn.fetch(
            "SELECT item_id, day, surface, served, outcomes, outcome_counts::text, reward "
            "FROM analytics.item_rewards_daily"
        )
    got = {(r[0], r[1], r[2]): [r[3], r[4], json.loads(r[5]), r[6]] for r in rows}
    assert len({k[1] for k in want}) >= 6, "the scenario spans several days"
    assert sum(v[3] != 0 for v in want.values()) > 50
    assert got.keys() == want.keys()
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    assert not wrong, f"{len(wrong)} rows differ, e.g. {list(wrong.items())[:3]}"


async def test_recommendations_read_every_schema_version(pool: asyncpg.Pool) -> None:
    rng = random.Random(3)
    served = [
        RecommendationServed(
            recommendation_id=seeded_uuid(rng),
            user=f"p-{v}",
            surface="podcasts",
            context={"device": "car"},
            slate=(SlateEntry("ep-1", 0, 0.75, 0.5), SlateEntry("ep-2", 1, 0.25, 0.125)),
            policy_name="mixture",
            policy_version=f"v{v}",
            index_version="idx-3",
            requested_at=BASE + timedelta(minutes=v),
            candidates=None,
            n=2,
            members=("p-3", "p-4") if v == 3 else (),
        )
        for v in (1, 2, 3)
    ]
    rows = [as_row(e, v) for v, e in zip((1, 2, 3), served, strict=True)]
    async with pool.acquire() as conn:
        await insert(conn, [(BASE + timedelta(hours=1), rows)])
        got = await conn.fetch(
            "SELECT recommendation_id, listener, surface, position, item_id, score, propensity, "
            "policy_name, policy_version, index_version, requested_at, slate_size, "
            "request::text, members::text, context::text, schema_version "
            "FROM analytics.recommendations ORDER BY global_position, position"
        )
    # What the view says is what the upcasters make of each stored version.
    want = []
    for row in rows:
        e = decode(row.event_type, row.schema_version, row.payload)
        assert isinstance(e, RecommendationServed)
        current = to_payload(e)
        for s in e.slate:
            want.append(
                (
                    e.recommendation_id,
                    e.user,
                    e.surface,
                    s.position,
                    s.item_id,
                    s.score,
                    s.propensity,
                    e.policy_name,
                    e.policy_version,
                    e.index_version,
                    e.requested_at,
                    len(e.slate),
                    current["request"],
                    current["members"],
                    e.context,
                    row.schema_version,
                )
            )
    decoded = [
        (*r[:12], json.loads(r[12]), json.loads(r[13]), json.loads(r[14]), r[15]) for r in got
    ]
    assert decoded == want
    assert [r[15] for r in got] == [1, 1, 2, 2, 3, 3]


async def test_outcomes_view_reads_every_outcome(pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    outcomes = [
        OutcomeRecorded(seeded_uuid(rng), "p-1", "tr-1", K.SKIP, BASE, seeded_uuid(rng), 1500.0),
        OutcomeRecorded(seeded_uuid(rng), "p-2", "tr-2", K.SAVE, BASE + timedelta(hours=3)),
    ]
    async with pool.acquire() as conn:
        await insert(conn, [(BASE + timedelta(hours=4), [as_row(o) for o in outcomes])])
        got = await conn.fetch(
            "SELECT event_id, listener, item_id, kind, value, occurred_at, recommendation_id, "
            "recorded_at FROM analytics.outcomes ORDER BY global_position"
        )
    assert [tuple(r) for r in got] == [
        (
            o.event_id,
            o.user,
            o.item_id,
            o.kind.value,
            o.value,
            o.occurred_at,
            o.recommendation_id,
            BASE + timedelta(hours=4),
        )
        for o in outcomes
    ]


async def test_event_types_table_is_what_the_generator_produces(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT event_type, schema_version, is_current, description, json_schema::text "
        "FROM analytics.event_types ORDER BY 1, 2"
    )
    want = [
        (s.event_type, s.schema_version, s.current, s.description, s.schema)
        for s in event_schemas()
    ]
    assert [(*r[:4], json.loads(r[4])) for r in rows] == want


async def test_every_view_and_column_is_documented(pool: asyncpg.Pool) -> None:
    relations = await pool.fetch(
        "SELECT c.oid, c.relname, c.relkind, obj_description(c.oid, 'pg_class') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'analytics' AND c.relkind IN ('v', 'r', 'm')"
    )
    names = {r[1] for r in relations}
    assert {
        "recommendations",
        "outcomes",
        "attributed_outcomes",
        "item_rewards_daily",
        "event_types",
    } <= names
    assert [r[1] for r in relations if not r[3]] == []
    undocumented = await pool.fetch(
        "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'analytics' AND c.relkind IN ('v', 'r', 'm') AND a.attnum > 0 "
        "AND NOT a.attisdropped AND col_description(c.oid, a.attnum) IS NULL"
    )
    assert [tuple(r) for r in undocumented] == []


async def _plan(conn: Connection, sql: str, *args: Any) -> str:
    rows = await conn.fetch(f"EXPLAIN {sql}", *args)
    return "\n".join(r[0] for r in rows)


async def test_time_filters_reach_the_indexes_of_the_log(pool: asyncpg.Pool) -> None:
    """With sequential scans priced out, a plan can only avoid one if the filter was pushed
    down to the events table; on a small table the planner would rightly scan anyway."""
    since = BASE + timedelta(days=3)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        for view in ("recommendations", "outcomes", "attributed_outcomes"):
            plan = await _plan(
                conn, f"SELECT * FROM analytics.{view} WHERE recorded_at >= $1", since
            )
            assert "ix_events_recorded_at_brin" in plan, plan
            assert "Seq Scan on events" not in plan, plan
        plan = await _plan(
            conn, "SELECT * FROM analytics.attributed_outcomes WHERE recorded_at >= $1", since
        )
        assert "ix_events_stream" in plan, plan  # each outcome finds its slate by its stream
        plan = await _plan(
            conn, "SELECT * FROM analytics.item_rewards_daily WHERE day >= $1", since.date()
        )
        # Both halves (slates served, outcomes) read only the days asked for.
        assert plan.count("ix_events_recorded_day_brin") == 2, plan
        assert "Seq Scan on events" not in plan, plan
