"""Forgetting listeners in the middle of concurrent traffic: the projectors, applying small
batches while writers append (some of them rolling back), end exactly where the pure folds of the
committed log say, with no row of a forgotten listener's profile, and a rebuild from zero gives
the same bytes."""

from __future__ import annotations

import random

import asyncpg

from domain.events import ListenerForgotten, OutcomeRecorded
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.runner import Runner
from tests.integration.projection_helpers import (
    Sequence_,
    Written,
    alive,
    assert_same_rows,
    assert_tables_equal,
    build_from_zero,
    catalogue,
    committed_events,
    days_ago,
    dump,
    expected_listener_tables,
    expected_rewards_tables,
    listener_tables,
    log_end,
    make_world,
    rewards_tables,
    running,
    timed,
    traffic,
    write_concurrently,
)

SEED = 61
REWARDS, LISTENERS = PROJECTIONS["rewards"], PROJECTIONS["listeners"]


async def test_forgetting_amid_traffic_matches_the_folds_and_a_rebuild(
    db_url: str, conn: asyncpg.Connection
) -> None:
    world = make_world(SEED, days_ago(40), users=15)
    sequences = traffic(world, recommendations=120, organic_outcomes=120, changes=6, days=30)
    rng = random.Random(SEED)
    forgotten = rng.sample(world.users, 5)
    forgets: list[Sequence_] = [[[ListenerForgotten(u)]] for u in forgotten]
    # At random points: outcomes of theirs land both before and after (a gateway that had not
    # heard yet), and other writers' transactions interleave.
    for f in forgets:
        sequences.insert(rng.randrange(len(sequences) // 4, len(sequences)), f)
    written = Written()
    runners = [Runner(db_url, p, batch_size=7, poll_seconds=0.01) for p in (REWARDS, LISTENERS)]
    async with running(*runners) as tasks:
        await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
        await write_concurrently(db_url, sequences, SEED, written, store_writers=2, raw_writers=2)
        target = await log_end(conn)
        for runner in runners:
            await runner.wait_for(target, timeout=60)
        alive(tasks)

    events = timed(await committed_events(conn))
    # The scenario exercises the late path: outcomes of a listener after their forgetting.
    seen_forgotten: set[str] = set()
    late = 0
    for _, e in events:
        if isinstance(e, ListenerForgotten):
            seen_forgotten.add(e.user)
        elif isinstance(e, OutcomeRecorded) and e.user in seen_forgotten:
            late += 1
    assert seen_forgotten, "no forgetting committed (all rolled back?)"
    assert late > 0

    assert runners[0].version is not None
    assert runners[1].version is not None
    rewards_schema, listeners_schema = runners[0].version.schema, runners[1].version.schema
    assert_tables_equal(await rewards_tables(conn, rewards_schema), expected_rewards_tables(events))
    profiles = await listener_tables(conn, listeners_schema)
    assert_tables_equal(profiles, expected_listener_tables(events))
    assert not {k[0] for k in profiles["affinity"]} & seen_forgotten
    assert {k[0] for k in profiles["affinity"]} - seen_forgotten  # the others keep theirs
    assert not await conn.fetchval(
        f'SELECT count(*) FROM "{rewards_schema}".user_days WHERE listener = ANY($1::text[])',
        list(seen_forgotten),
    )

    for runner in runners:
        assert runner.version is not None
        incremental = await dump(conn, runner.projection, runner.version.schema)
        rebuilt = await build_from_zero(db_url, conn, runner.projection)
        assert_same_rows(await dump(conn, runner.projection, rebuilt.schema), incremental)
