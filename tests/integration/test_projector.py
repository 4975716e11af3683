"""The projector on a real PostgreSQL: incremental projection against rebuilds and the pure folds,
one live runner per projection, the `wait_for` barrier, time travel, reward definitions changed
over history, and the attribution rules end to end.

Runners poll; every wait here is either the runner's own `wait_for` barrier or a poll of the
database under a deadline (`eventually`). Scenarios are seeded, so a failure can be replayed;
what the writers interleave into is decided by the database, and every comparison is against
the log as it was committed.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from uuid import UUID

import asyncpg
import numpy as np
import pytest

from domain.events import (
    DomainEvent,
    ItemUpserted,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
)
from domain.longterm import fit_prior, observed_days, posterior, uninformed_prior
from domain.reward_fold import ORGANIC, RewardChanges, day_number
from domain.rewards import DEFAULT
from gateway.projections.definitions import PROJECTIONS, q
from gateway.projections.rewards import LiveVersions, RewardsReader, SurfaceRewards
from gateway.projections.runner import (
    _LOCK_NAMESPACE,
    Runner,
    create_version,
    position_of,
    rebuild,
    status,
)
from gateway.store.api import Position
from gateway.store.reads import NotSettled
from tests.integration.projection_helpers import (
    Timed,
    Written,
    alive,
    append_in_order,
    assert_same_rows,
    assert_tables_equal,
    catalogue,
    committed_events,
    day_start,
    days_ago,
    dump,
    events_up_to,
    eventually,
    expected_item,
    expected_listener_tables,
    expected_rewards_tables,
    fold_all,
    holds,
    listener_tables,
    log_end,
    loop_errors_fail,
    make_world,
    new_events,
    raw_insert,
    rewards_tables,
    running,
    stores,
    timed,
    traffic,
    version_row,
    write_concurrently,
)

pytestmark = pytest.mark.timeout(60)

SEED = 20261125
REWARDS = PROJECTIONS["rewards"]
LISTENERS = PROJECTIONS["listeners"]
K = OutcomeKind
# The additive tables, keyed by the recorded_at of the events behind each delta.
TIME_KEYED = ("item_rewards", "item_positions", "item_outcomes", "lt_starts", "lt_active")


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    with loop_errors_fail():
        yield


async def db_now(conn: asyncpg.Connection) -> datetime:
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


async def lock_holder(conn: asyncpg.Connection, name: str, version: int) -> int | None:
    """The backend holding a projection version's runner lock, if any."""
    pid: int | None = await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1 "
        "AND objid = (hashtext($2)::bigint & 4294967295)::oid AND objsubid = 2 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        _LOCK_NAMESPACE,
        f"{name}:{version}",
    )
    return pid


async def sessions(conn: asyncpg.Connection, name: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1",
        f"segue-projector-{name}",
    )
    return [r[0] for r in rows]


# --- incremental equals a rebuild from zero --------------------------------------------------


async def test_incremental_projection_equals_a_rebuild_from_zero(
    db_url: str, conn: asyncpg.Connection
) -> None:
    world = make_world(SEED, days_ago(80))
    sequences = traffic(world, recommendations=320, organic_outcomes=250, changes=12, days=45)
    written = Written()
    runners = [Runner(db_url, p, batch_size=23, poll_seconds=0.01) for p in (REWARDS, LISTENERS)]
    async with running(*runners) as tasks:
        await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
        await write_concurrently(db_url, sequences, SEED, written, store_writers=2, raw_writers=3)
        target = await log_end(conn)
        for runner in runners:
            await runner.wait_for(target, timeout=40)
        alive(tasks)

    log = await committed_events(conn)
    stored_ids = {r[0] for r in await conn.fetch("SELECT event_id FROM events")}
    assert stored_ids == written.committed
    assert written.rolled_back, "the seed should roll some transactions back"
    assert not stored_ids & written.rolled_back
    assert len(log) >= 2000
    events = timed(log)

    incremental = {}
    for runner in runners:
        assert runner.version is not None
        row = await version_row(conn, runner.projection.name, runner.version.version)
        assert row["events_applied"] == len(log)
        assert Position(int(row["tx_id"]), row["global_position"]) == target
        incremental[runner.projection.name] = await dump(
            conn, runner.projection, runner.version.schema
        )
    assert runners[0].version is not None
    assert runners[1].version is not None
    rewards_schema, listeners_schema = runners[0].version.schema, runners[1].version.schema

    # What the pure folds of the committed log say, table by table.
    want = expected_rewards_tables(events)
    assert_tables_equal(await rewards_tables(conn, rewards_schema), want)
    assert_tables_equal(
        await listener_tables(conn, listeners_schema), expected_listener_tables(events)
    )
    # ...and the scenario exercised what it is meant to.
    assert len(want["traces"]) > 50
    assert len(want["activity"]) > 30
    assert any(v < 0 for v in want["impressions"].values())
    assert {k[1] for k in want["item_outcomes"]} == {ORGANIC, "home", "search", "podcasts", "music"}
    started = set(want["lt_starts"])
    assert any((item, start, at) in started for item, start, _, at in want["lt_active"]), (
        "no trace saw come-backs reported before it started"
    )

    # A rebuild from zero (other batch boundaries, no concurrency) gives the same bytes. The
    # live runners keep going meanwhile: should the rebuild swap before the log's end (another
    # database's transaction can hold every reader back), they finish it.
    live = [Runner(db_url, p, poll_seconds=0.01) for p in (REWARDS, LISTENERS)]
    async with running(*live) as tasks:
        for runner in runners:
            assert runner.version is not None
            old = runner.version
            rebuilt = await rebuild(db_url, runner.projection, DEFAULT)
            assert rebuilt.version == old.version + 1
            assert rebuilt.status == "live"
            await eventually(
                partial(_reached, conn, tasks, old.name, rebuilt.version, target),
                f"the rebuilt {old.name} to reach the end of the log",
            )
            assert_same_rows(
                await dump(conn, runner.projection, rebuilt.schema), incremental[old.name]
            )
            row = await version_row(conn, old.name, rebuilt.version)
            assert row["events_applied"] == len(log)
            assert (await version_row(conn, old.name, old.version))["status"] == "retired"


async def _reached(
    conn: asyncpg.Connection,
    tasks: list[asyncio.Task[None]],
    name: str,
    version: int,
    target: Position,
) -> bool:
    row = await version_row(conn, name, version)
    return await holds(tasks, Position(int(row["tx_id"]), row["global_position"]) >= target)


async def test_any_batch_split_gives_the_same_tables(conn: asyncpg.Connection) -> None:
    """The set-based apply straight from events: one batch, random batches, the pure fold."""
    world = make_world(SEED + 7, days_ago(70), items=25, users=15)
    sequences = traffic(world, recommendations=120, organic_outcomes=80, changes=8, days=30)
    rng = random.Random(SEED + 7)
    events: Timed = []
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for e in catalogue(world):
        events.append((at, e))
    for sequence in sequences:
        for tx in sequence:
            at += timedelta(milliseconds=rng.randint(1, 500))
            events.extend((at, e) for e in tx)
    whole = await create_version(conn, REWARDS, DEFAULT, "building")
    pieces = await create_version(conn, REWARDS, DEFAULT, "building")
    async with conn.transaction():
        await REWARDS.apply(conn, whole.schema, events, DEFAULT)
    i = 0
    while i < len(events):
        n = rng.choice([1, 2, 3, 5, 8, 13, 40])
        async with conn.transaction():
            await REWARDS.apply(conn, pieces.schema, events[i : i + n], DEFAULT)
        i += n
    assert_same_rows(
        await dump(conn, REWARDS, pieces.schema), await dump(conn, REWARDS, whole.schema)
    )
    assert_tables_equal(await rewards_tables(conn, whole.schema), expected_rewards_tables(events))


# --- one live runner per projection ---------------------------------------------------------


async def test_two_runners_only_one_applies_and_cancelling_it_hands_over(
    db_url: str, conn: asyncpg.Connection
) -> None:
    world = make_world(SEED + 1, days_ago(70), items=20)
    sequences = traffic(world, recommendations=120, organic_outcomes=60, changes=4, days=30)
    half = len(sequences) // 2
    applied: dict[str, int] = {"a": 0, "b": 0}
    overlaps: list[str] = []

    def record(name: str) -> Callable[[Runner, int], None]:
        def on_batch(runner: Runner, n: int) -> None:
            applied[name] += n
            if a.active and b.active:
                overlaps.append(name)

        return on_batch

    def runner(name: str) -> Runner:
        return Runner(
            db_url,
            REWARDS,
            batch_size=7,
            poll_seconds=0.01,
            lock_poll_seconds=0.02,
            on_batch=record(name),
        )

    a, b = runner("a"), runner("b")
    written = Written()
    async with running(a) as (task_a,):
        await eventually(lambda: holds([task_a], a.active), "the first runner to take the lock")
        async with running(b) as (task_b,):
            await eventually(lambda: _connected(conn, "rewards", 2), "the second runner to connect")
            await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
            await write_concurrently(db_url, sequences[:half], SEED + 1, written)
            target = await log_end(conn)
            await a.wait_for(target, timeout=30)
            assert a.version is not None
            assert (a.active, b.active) == (True, False)
            assert applied["b"] == 0
            count = len(await committed_events(conn))
            assert applied["a"] == count
            row = await version_row(conn, "rewards", a.version.version)
            assert row["events_applied"] == count
            holder = await lock_holder(conn, "rewards", a.version.version)
            assert holder is not None

            # Cancel the active runner while it is busy: the other one takes over.
            writer = asyncio.create_task(
                write_concurrently(db_url, sequences[half:], SEED + 2, written)
            )
            try:
                await eventually(
                    lambda: holds([task_a], applied["a"] >= count + 40 or writer.done()),
                    "more batches applied",
                )
                task_a.cancel()
                await eventually(
                    lambda: holds([task_b], b.active), "the second runner to take over"
                )
                await writer
            finally:
                writer.cancel()
            await append_in_order(db_url, [ItemUpserted("it-after", "track", {})])
            target = await log_end(conn)
            await b.wait_for(target, timeout=30)
            alive([task_b])
            assert await lock_holder(conn, "rewards", a.version.version) not in (None, holder)
            # The second runner went on from the checkpoint the first one left behind.
            assert b.version is not None
            handed_over = await events_up_to(conn, b.version.position)

    log = await committed_events(conn)
    assert count <= handed_over < len(log)
    assert applied["b"] == len(log) - handed_over
    # The first runner may have been cancelled after committing its last batch but before
    # reporting it; it never reports more than it committed.
    assert handed_over - 7 <= applied["a"] <= handed_over
    assert not overlaps
    row = await version_row(conn, "rewards", a.version.version)
    assert row["events_applied"] == len(log)
    assert_tables_equal(
        await rewards_tables(conn, row["schema_name"]), expected_rewards_tables(timed(log))
    )


async def test_a_runner_whose_session_is_terminated_hands_over_and_recovers(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """The database ends the active runner's session (an admin, a failover) in the middle of a
    batch: the standby takes over, and the terminated runner reconnects and waits."""
    world = make_world(SEED + 2, days_ago(70), items=20)
    sequences = traffic(world, recommendations=140, organic_outcomes=60, changes=4, days=30)
    runners = {
        name: Runner(db_url, REWARDS, batch_size=5, poll_seconds=0.01, lock_poll_seconds=0.02)
        for name in ("a", "b")
    }
    written = Written()
    await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
    async with running(runners["a"]) as (task_a,):
        await eventually(
            lambda: holds([task_a], runners["a"].active), "the first runner to take the lock"
        )
        async with running(runners["b"]) as (task_b,):
            tasks = [task_a, task_b]
            writer = asyncio.create_task(write_concurrently(db_url, sequences, SEED + 3, written))
            try:
                for _ in range(2):
                    await eventually(lambda: _connected(conn, "rewards", 2), "both runners")
                    active = [n for n, r in runners.items() if r.active]
                    assert len(active) == 1, active
                    victim = runners[active[0]]
                    other = runners["b" if active[0] == "a" else "a"]
                    assert victim.version is not None
                    pid = await lock_holder(conn, "rewards", victim.version.version)
                    assert pid is not None
                    await eventually(
                        partial(_in_batch, conn, pid, writer), "the runner to be mid-batch"
                    )
                    assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                    await eventually(partial(_active, tasks, other), "the standby to take over")
                    alive(tasks)
                await writer
            finally:
                writer.cancel()
            target = await log_end(conn)
            await eventually(
                lambda: holds(
                    tasks, any(r.active and r.position >= target for r in runners.values())
                ),
                "the active runner to catch up",
            )
            # The terminated runners did not die: both are back, one active, one waiting.
            await eventually(lambda: _connected(conn, "rewards", 2), "both runners back")
            alive(tasks)
            assert sum(r.active for r in runners.values()) == 1

    log = await committed_events(conn)
    version = runners["a"].version
    assert version is not None
    row = await version_row(conn, "rewards", version.version)
    assert row["events_applied"] == len(log)
    assert_tables_equal(
        await rewards_tables(conn, row["schema_name"]), expected_rewards_tables(timed(log))
    )


async def test_a_runner_survives_its_session_ending_at_any_moment(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """The server ends the runner's session at random moments (seeded) while events arrive: in
    the middle of a query, of a batch, or while idle. It reconnects every time, and every event
    is applied exactly once."""
    world = make_world(SEED + 5, days_ago(70), items=15)
    sequences = traffic(world, recommendations=80, organic_outcomes=40, changes=2, days=30)
    rng = random.Random(SEED + 5)
    runner = Runner(db_url, REWARDS, batch_size=3, poll_seconds=0.001, retry_seconds=0.02)
    written = Written()
    await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
    async with running(runner) as tasks:
        writer = asyncio.create_task(write_concurrently(db_url, sequences, SEED + 6, written))
        ended: set[int] = set()

        async def back() -> bool:
            alive(tasks)
            return runner.active and bool(set(await sessions(conn, "rewards")) - ended)

        try:
            for _ in range(50):
                await eventually(back, "the runner to reconnect")
                # A random moment of its work to end the session at (fault injection, not a wait).
                await asyncio.sleep(rng.uniform(0, 0.015))
                for pid in await sessions(conn, "rewards"):
                    await conn.execute("SELECT pg_terminate_backend($1)", pid)
                    ended.add(pid)
            await writer
        finally:
            writer.cancel()
        target = await log_end(conn)
        await eventually(lambda: holds(tasks, runner.position >= target), "the runner to catch up")

    log = await committed_events(conn)
    assert runner.version is not None
    row = await version_row(conn, "rewards", runner.version.version)
    assert row["events_applied"] == len(log)
    assert_tables_equal(
        await rewards_tables(conn, row["schema_name"]), expected_rewards_tables(timed(log))
    )


async def _connected(conn: asyncpg.Connection, name: str, n: int) -> bool:
    return len(await sessions(conn, name)) == n


async def _active(tasks: list[asyncio.Task[None]], runner: Runner) -> bool:
    return await holds(tasks, runner.active)


async def _in_batch(conn: asyncpg.Connection, pid: int, writer: asyncio.Task[None]) -> bool:
    """The backend is inside a batch's transaction (it has taken the checkpoint row), or there
    may be no batch left to be inside of."""
    inside = await conn.fetchval(
        "SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = $1", pid
    )
    return bool(inside) or writer.done()


# --- the barrier ----------------------------------------------------------------------------


async def test_wait_for_returns_once_applied_and_times_out_otherwise(
    db_url: str, conn: asyncpg.Connection
) -> None:
    runner = Runner(db_url, REWARDS, poll_seconds=0.01)
    item = ItemUpserted("it-1", "episode", {"show": "s"})
    async with running(runner), stores(db_url, 1) as (store,):
        result = await store.append(new_events([item]))
        first = await position_of(conn, result.recorded[0].global_position)
        await runner.wait_for(first, timeout=10)
        assert runner.position >= first
        assert runner.version is not None
        schema = q(runner.version.schema)
        assert await conn.fetchval(f"SELECT show FROM {schema}.item_shows") == "s"

        # A transaction left open holds back everything committed after it began writing.
        held = await asyncpg.connect(db_url)
        try:
            tx = held.transaction()
            await tx.start()
            await raw_insert(held, new_events([ItemUpserted("it-2", "track", {})]), "held")
            result = await store.append(new_events([ItemUpserted("it-3", "track", {})]))
            later = await position_of(conn, result.recorded[0].global_position)
            with pytest.raises(TimeoutError):
                await runner.wait_for(later, timeout=0.3)
            assert runner.position < later
            shows = await conn.fetch(f"SELECT item_id FROM {schema}.item_shows ORDER BY 1")
            assert [r[0] for r in shows] == ["it-1"]
            await tx.commit()
        finally:
            await held.close()
        await runner.wait_for(later, timeout=10)
        shows = await conn.fetch(f"SELECT item_id FROM {schema}.item_shows ORDER BY 1")
        assert [r[0] for r in shows] == ["it-1", "it-2", "it-3"]
        row = await version_row(conn, "rewards", runner.version.version)
        assert Position(int(row["tx_id"]), row["global_position"]) >= later
        assert row["events_applied"] == 3

        # A position nothing will ever reach.
        with pytest.raises(TimeoutError):
            await runner.wait_for(Position(later.tx_id + 1_000_000, 0), timeout=0.2)
        [live] = [s for s in await status(conn) if s.name == "rewards"]
        assert (live.lag_events, live.definition_version) == (0, DEFAULT.version)


# --- time travel ----------------------------------------------------------------------------


async def test_time_travel_at_several_instants_equals_truncated_rebuilds(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    world = make_world(SEED + 3, days_ago(95), items=8, users=10, shows=2)
    sequences = traffic(world, recommendations=200, organic_outcomes=40, changes=0, days=30)
    waves = [sequences[i::4] for i in range(4)]
    written = Written()
    runner = Runner(db_url, REWARDS, batch_size=50, poll_seconds=0.01)
    instants: list[datetime] = []
    async with running(runner) as tasks:
        await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
        for n, wave in enumerate(waves):
            # Nothing is in flight between waves, so an instant taken here separates them.
            instants.append(await conn.fetchval("SELECT clock_timestamp()"))
            await write_concurrently(db_url, wave, SEED + 10 * n, written, store_writers=1)
        instants.append(await conn.fetchval("SELECT clock_timestamp()"))
        await runner.wait_for(await log_end(conn), timeout=30)
        # Time travel answers only instants the projection is settled past.
        await runner.wait_settled(instants[-1], timeout=30)
        alive(tasks)
    assert runner.version is not None
    live = runner.version.schema
    log = await committed_events(conn)

    reader = RewardsReader(pool, LiveVersions(pool))
    fitted = 0
    for t in instants:
        prefix = [(at, e) for _, at, e in log if at <= t]
        # Recorded up to t is a prefix of the log: what a rebuild stopped at t reads.
        assert all(at <= t for _, at, _ in log[: len(prefix)])
        _, changes = fold_all(prefix)
        for item in world.items:
            got = await reader.item(item, t, current=False)
            assert got is not None
            want = expected_item(changes, item, t)
            assert got.total == want.total, (item, t)
            assert got.by_surface == want.by_surface, (item, t)
            assert got.positions == want.positions, (item, t)
            assert got.long_term.observed_traces == want.long_term.observed_traces
            assert got.long_term.estimate == pytest.approx(want.long_term.estimate, rel=1e-9)
            assert got.long_term.variance == pytest.approx(
                want.long_term.variance, rel=1e-9, abs=1e-12
            )
        fitted += _prior_is_fitted(changes, t)

        truncated = await create_version(conn, REWARDS, DEFAULT, "building")
        async with conn.transaction():
            await REWARDS.apply(conn, truncated.schema, prefix, DEFAULT)
        for table in TIME_KEYED:
            as_of = await conn.fetch(
                f"SELECT r::text FROM {q(live)}.{table} r WHERE at <= $1 ORDER BY 1", t
            )
            rebuilt = await conn.fetch(
                f"SELECT r::text FROM {q(truncated.schema)}.{table} r ORDER BY 1"
            )
            assert [r[0] for r in as_of] == [r[0] for r in rebuilt], (table, t)
    # The instants saw both an uninformed prior and one fitted on complete traces.
    assert 0 < fitted < len(instants)

    # Now, through the cached path the API uses.
    now = await conn.fetchval("SELECT clock_timestamp()")
    _, changes = fold_all(timed(log))
    for item in world.items:
        got = await reader.item(item, now, current=True)
        assert got is not None
        want = expected_item(changes, item, now)
        assert (got.total, got.by_surface, got.positions) == (
            want.total,
            want.by_surface,
            want.positions,
        )
        assert got.long_term.estimate == pytest.approx(want.long_term.estimate, rel=1e-9)


async def test_time_travel_to_an_instant_taken_with_a_commit_in_flight_equals_a_rebuild(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """An outcome stamped before the instant whose transaction commits after it, and after
    later traffic: time travel to the instant waits for it and counts it, as a rebuild of the
    events recorded up to the instant does (issue 12 part 2; decisions §83)."""
    world = make_world(SEED + 5, days_ago(40), items=6, users=8, shows=2)
    sequences = traffic(world, recommendations=60, organic_outcomes=20, changes=0, days=10)
    written = Written()
    runner = Runner(db_url, REWARDS, batch_size=20, poll_seconds=0.01)
    item = world.items[0]
    late_outcome = OutcomeRecorded(
        event_id=UUID(int=SEED),
        user="listener-late",
        item_id=item,
        kind=K.SAVE,
        occurred_at=days_ago(1),
    )
    async with running(runner) as tasks:
        await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
        await write_concurrently(db_url, sequences[::2], SEED + 1, written, store_writers=1)
        late = await asyncpg.connect(db_url)
        try:
            await late.execute("BEGIN")
            await raw_insert(late, new_events([late_outcome]), late_outcome.stream_id())
            instant = await conn.fetchval("SELECT clock_timestamp()")
            # Traffic after the instant commits before the late outcome does.
            await write_concurrently(db_url, sequences[1::2], SEED + 2, written, store_writers=1)
            reader = RewardsReader(pool, LiveVersions(pool), settle_seconds=0.5)
            with pytest.raises(NotSettled):
                await reader.item(item, instant, current=False)
            await late.execute("COMMIT")
        finally:
            await late.close()
        await runner.wait_settled(instant, timeout=30)
        alive(tasks)
    assert runner.version is not None
    log = await committed_events(conn)
    recorded = {e.event_id: at for _, at, e in log if isinstance(e, OutcomeRecorded)}
    assert recorded[late_outcome.event_id] < instant  # stamped before, committed after
    upto = [(at, e) for _, at, e in log if at <= instant]
    _, changes = fold_all(upto)
    got = await RewardsReader(pool, LiveVersions(pool)).item(item, instant, current=False)
    assert got is not None
    want = expected_item(changes, item, instant)
    assert got.total == want.total
    assert got.total.outcomes.get("save", 0) >= 1
    truncated = await create_version(conn, REWARDS, DEFAULT, "building")
    async with conn.transaction():
        await REWARDS.apply(conn, truncated.schema, upto, DEFAULT)
    for table in TIME_KEYED:
        as_of = await conn.fetch(
            f"SELECT r::text FROM {q(runner.version.schema)}.{table} r WHERE at <= $1 ORDER BY 1",
            instant,
        )
        rebuilt = await conn.fetch(
            f"SELECT r::text FROM {q(truncated.schema)}.{table} r ORDER BY 1"
        )
        assert [r[0] for r in as_of] == [r[0] for r in rebuilt], table


def _prior_is_fitted(changes: RewardChanges, t: datetime) -> bool:
    starts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (item, start, _), n in changes.lt_starts.items():
        starts[item][start] += n
    if not starts:
        return False
    h = DEFAULT.horizon_days
    rows = [observed_days(dict(s), {}, day_number(t), h) for s in starts.values()]
    return fit_prior(np.array([r[0] for r in rows]), np.array([r[1] for r in rows])) is not None


# --- reward definitions change over history -------------------------------------------------


async def test_rebuilding_under_a_new_definition_recomputes_history(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    doubled = replace(
        DEFAULT,
        version="music-podcasts-1-doubled",
        weights={k: w * 2 for k, w in DEFAULT.weights.items()},
    )
    world = make_world(SEED + 4, days_ago(70), items=15)
    sequences = traffic(world, recommendations=150, organic_outcomes=50, changes=3, days=30)
    half = len(sequences) // 2
    written = Written()
    runner = Runner(db_url, REWARDS, batch_size=25, poll_seconds=0.01)
    # A reader that keeps the live version it saw for an hour: it must notice the swap anyway.
    reader = RewardsReader(pool, LiveVersions(pool, ttl=3600))
    async with running(runner) as tasks:
        await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
        await write_concurrently(db_url, sequences[:half], SEED + 1, written)
        await runner.wait_for(await log_end(conn), timeout=30)
        old = runner.version
        assert old is not None
        assert old.definition == DEFAULT
        seen = await reader.item(world.items[0], await db_now(conn), current=True)
        assert seen is not None
        assert seen.definition_version == DEFAULT.version

        # Rebuild while the rest of the traffic arrives and the live runner keeps applying it.
        new, _ = await asyncio.gather(
            rebuild(db_url, REWARDS, doubled),
            write_concurrently(db_url, sequences[half:], SEED + 2, written),
        )
        assert (new.version, new.status, new.definition) == (old.version + 1, "live", doubled)
        # The live runner moves to the new version at its next batch.
        await append_in_order(db_url, [ItemUpserted("it-late", "track", {})])
        target = await log_end(conn)
        await eventually(
            lambda: holds(
                tasks,
                runner.version is not None
                and runner.version.version == new.version
                and runner.position >= target,
            ),
            "the live runner to switch to the rebuilt version",
        )
        alive(tasks)

    log = await committed_events(conn)
    events = timed(log)
    now = await db_now(conn)
    _, under = fold_all(events, DEFAULT)
    for item in world.items:
        read = await reader.item(item, now, current=True)
        assert read is not None
        assert read.definition_version == doubled.version
        total = expected_item(under, item, now).total
        assert read.total.reward_sum == 2 * total.reward_sum
        assert read.total.served == total.served
    got = await rewards_tables(conn, new.schema)
    assert_tables_equal(got, expected_rewards_tables(events, doubled))
    under_default = expected_rewards_tables(events, DEFAULT)["item_rewards"]
    assert got["item_rewards"].keys() == under_default.keys()
    for key, (served, total, squares) in under_default.items():
        assert got["item_rewards"][key] == (served, 2 * total, 4 * squares), key
    assert any(v[1] != 0 for v in got["item_rewards"].values())

    assert (await version_row(conn, "rewards", new.version))["events_applied"] == len(log)
    assert (await version_row(conn, "rewards", old.version))["status"] == "retired"
    assert not await conn.fetchval(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", old.schema
    )
    [shown] = [s for s in await status(conn) if s.name == "rewards"]
    assert (shown.version, shown.definition_version, shown.lag_events) == (
        new.version,
        doubled.version,
        0,
    )


# --- attribution rules end to end -----------------------------------------------------------

D0 = day_number(datetime.now(UTC)) - 20
T0 = day_start(D0) + timedelta(hours=12)
R1 = UUID("00000000-0000-4000-8000-000000000001")


def _o(
    n: int,
    user: str,
    item: str,
    kind: OutcomeKind,
    at: datetime,
    *,
    rec: UUID | None = None,
    value: float | None = None,
) -> OutcomeRecorded:
    return OutcomeRecorded(UUID(int=n, version=4), user, item, kind, at, rec, value)


def _day(d: int, hour: int = 9) -> datetime:
    return day_start(D0 + d) + timedelta(hours=hour)


CATALOGUE: list[DomainEvent] = [
    ItemUpserted("ep-1", "episode", {"show": "daily"}),
    ItemUpserted("ep-2", "episode", {"show": "daily"}),
    ItemUpserted("tr-1", "track", {"artist": "someone"}),
]
SLATE = RecommendationServed(
    recommendation_id=R1,
    user="u1",
    surface="podcasts",
    context={},
    slate=(SlateEntry("ep-1", 0, 0.9, 0.5), SlateEntry("tr-1", 1, 0.4, 0.25)),
    policy_name="test",
    policy_version="1",
    index_version="none",
    requested_at=T0,
)
# Coming back to the show before the trace exists: reported first, counted all the same.
EARLY = [_o(2, "u1", "ep-2", K.STREAM_30S, _day(3))]
ATTRIBUTED_AND_NOT = [
    _o(4, "u1", "ep-1", K.STREAM_30S, T0 + timedelta(minutes=10), rec=R1),  # +1, starts a trace
    _o(5, "u1", "tr-1", K.COMPLETE, T0 + timedelta(days=2), rec=R1),  # after its 1-day window
    _o(6, "u1", "ep-1", K.SAVE, T0 + timedelta(days=8), rec=R1),  # after its 7-day window
    _o(7, "u1", "ep-1", K.LIKE, T0 + timedelta(days=6), rec=R1),  # +1
    _o(8, "u1", "tr-1", K.SKIP, T0 + timedelta(minutes=5), rec=R1, value=40_000.0),  # 0: late skip
    _o(9, "u1", "tr-1", K.SKIP, T0 + timedelta(minutes=6), rec=R1, value=2_000.0),  # -0.5
    _o(10, "u1", "ep-1", K.CLICK, T0 - timedelta(seconds=30), rec=R1),  # +0.1: clock skew
    _o(11, "u1", "tr-1", K.CLICK, T0 - timedelta(minutes=5), rec=R1),  # before the slate
    _o(12, "u1", "ep-2", K.STREAM_30S, T0 + timedelta(minutes=15), rec=R1),  # not in the slate
]
COME_BACKS = [
    _o(13, "u1", "ep-1", K.STREAM_30S, _day(5)),  # offset 5
    _o(14, "u1", "ep-2", K.COMPLETE, _day(5, 20)),  # offset 5 again: counted once
    _o(15, "u1", "ep-1", K.STREAM_START, _day(7)),  # not a stream kind
    _o(16, "u2", "ep-1", K.STREAM_30S, _day(8)),  # another listener
    _o(17, "u1", "ep-2", K.STREAM_30S, _day(60)),  # the horizon's last day
    _o(18, "u1", "ep-2", K.STREAM_30S, _day(61)),  # past the horizon
    _o(19, "u1", "tr-1", K.STREAM_30S, _day(4)),  # not of the show
]


async def test_attribution_rules_end_to_end(
    db_url: str, conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    events = [*CATALOGUE, *EARLY, SLATE, *ATTRIBUTED_AND_NOT, *COME_BACKS]
    await append_in_order(db_url, events)
    runner = Runner(db_url, REWARDS, batch_size=3, poll_seconds=0.01)
    async with running(runner) as tasks:
        await runner.wait_for(await log_end(conn), timeout=10)
        now = await conn.fetchval("SELECT clock_timestamp()")
        await runner.wait_settled(now)
        alive(tasks)
    assert runner.version is not None
    s = q(runner.version.schema)

    traces = await conn.fetch(
        f"SELECT rec_id, item_id, listener, target, start_day FROM {s}.traces"
    )
    assert [tuple(r) for r in traces] == [(R1, "ep-1", "u1", "show:daily", D0)]
    activity = await conn.fetch(f"SELECT day_offset FROM {s}.activity ORDER BY 1")
    assert [r[0] for r in activity] == [3, 5, 60]
    lt = await conn.fetch(
        f"SELECT item_id, start_day, day_offset, sum(active) FROM {s}.lt_active "
        "GROUP BY 1, 2, 3 ORDER BY 3"
    )
    assert [tuple(r) for r in lt] == [("ep-1", D0, d, 1) for d in (3, 5, 60)]

    reader = RewardsReader(pool, LiveVersions(pool))
    ep1 = await reader.item("ep-1", now, current=False)
    tr1 = await reader.item("tr-1", now, current=False)
    ep2 = await reader.item("ep-2", now, current=False)
    assert ep1 is not None
    assert tr1 is not None
    assert ep2 is not None

    assert ep1.total == SurfaceRewards(
        1,
        {"stream_30s": 3, "save": 1, "like": 1, "click": 1, "stream_start": 1},
        Decimal("2.1"),
        Decimal("4.41"),
    )
    assert ep1.by_surface == {
        "podcasts": SurfaceRewards(
            1, {"stream_30s": 1, "like": 1, "click": 1}, Decimal("2.1"), Decimal("4.41")
        )
    }
    assert ep1.total.mean == pytest.approx(2.1)
    assert ep1.positions == {0: 1}
    assert tr1.total == SurfaceRewards(
        1,
        {"complete": 1, "skip": 2, "click": 1, "stream_30s": 1},
        Decimal("-0.5"),
        Decimal("0.25"),
    )
    assert tr1.by_surface == {
        "podcasts": SurfaceRewards(1, {"skip": 2}, Decimal("-0.5"), Decimal("0.25"))
    }
    assert tr1.positions == {1: 1}
    assert ep2.total == SurfaceRewards(0, {"stream_30s": 4, "complete": 1}, Decimal(0), Decimal(0))
    assert (ep2.by_surface, ep2.positions) == ({}, {})

    # Twenty days on, days 1..19 of the trace are over; it was active on days 3 and 5. (D0 was
    # taken at import: a run that crosses midnight UTC is a day further on.)
    elapsed = day_number(now) - D0
    assert elapsed in (20, 21)
    sums, counts = np.zeros(60), np.zeros(60)
    counts[: elapsed - 1] = 1
    sums[[2, 4]] = 1
    want = posterior(uninformed_prior(60), sums, counts)
    assert ep1.long_term.observed_traces == 1
    assert ep1.long_term.estimate == pytest.approx(want.estimate, rel=1e-9)
    assert ep1.long_term.variance == pytest.approx(want.variance, rel=1e-9)
    assert tr1.long_term.observed_traces == 0

    # The come-backs in another order, in batches of one: the same activity.
    rng = random.Random(SEED)
    shuffled = [*COME_BACKS, *EARLY]
    rng.shuffle(shuffled)
    for order in (
        [*CATALOGUE, SLATE, *ATTRIBUTED_AND_NOT, *shuffled],
        [*CATALOGUE, *shuffled, SLATE, *ATTRIBUTED_AND_NOT],
    ):
        other = await create_version(conn, REWARDS, DEFAULT, "building")
        at = datetime(2026, 1, 1, tzinfo=UTC)
        for e in order:
            at += timedelta(seconds=1)
            async with conn.transaction():
                await REWARDS.apply(conn, other.schema, [(at, e)], DEFAULT)
        o = q(other.schema)
        for sql in (
            "SELECT rec_id, item_id, day_offset FROM {}.activity ORDER BY 3",
            "SELECT item_id, start_day, sum(traces) FROM {}.lt_starts GROUP BY 1, 2",
            "SELECT item_id, surface, kind, sum(n) FROM {}.item_outcomes GROUP BY 1, 2, 3 "
            "ORDER BY 1, 2, 3",
            "SELECT item_id, surface, sum(reward_sum), sum(reward_sq) FROM {}.item_rewards "
            "GROUP BY 1, 2 ORDER BY 1, 2",
        ):
            want_rows = [tuple(r) for r in await conn.fetch(sql.format(s))]
            got_rows = [tuple(r) for r in await conn.fetch(sql.format(o))]
            assert got_rows == want_rows, sql
