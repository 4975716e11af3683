"""`segue project` as a real process under faults: SIGKILLed in the middle of its batches while
events keep arriving, and restarted; two of them at once, the active one killed. Whatever
happens, every committed event is applied exactly once: the tables equal a rebuild from zero,
and the checkpoint's count of applied events equals the number of events it has passed.

Which database sessions belong to which process is told apart by when they appeared; the lock
each runner holds is read from `pg_locks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from domain.rewards import DEFAULT
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.runner import _LOCK_NAMESPACE
from gateway.store.api import Position
from tests.integration.projection_helpers import (
    Written,
    assert_same_rows,
    assert_tables_equal,
    build_from_zero,
    catalogue,
    committed_events,
    days_ago,
    dump,
    events_up_to,
    eventually,
    expected_rewards_tables,
    log_end,
    loop_errors_fail,
    make_world,
    rewards_tables,
    timed,
    traffic,
    write_concurrently,
)

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
SEED = 7_2026
NAMES = ("listeners", "rewards")
T = TypeVar("T")


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    with loop_errors_fail():
        yield


def segue_env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_DATA_DIR": str(tmp_path),
        "SEGUE_LOG_LEVEL": "WARNING",
        **extra,
    }


@contextlib.contextmanager
def project(
    db_url: str, tmp_path: Path, n: int, batch_size: int = 5
) -> Iterator[subprocess.Popen[bytes]]:
    """`segue project` in a process of its own; SIGKILLed on the way out if still running."""
    log_path = tmp_path / f"project-{n}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "project"],
            cwd=ROOT,
            env=segue_env(db_url, tmp_path, SEGUE_PROJECTOR_BATCH_SIZE=str(batch_size)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"project {n} exited with {proc.returncode}: {log_path.read_text()}")


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


async def sessions(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'segue-projector-%'"
    )
    return {r[0] for r in rows}


async def lock_holders(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1 "
        "AND objsubid = 2 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        _LOCK_NAMESPACE,
    )
    return {r[0] for r in rows}


async def new_sessions(conn: asyncpg.Connection, before: set[int], n: int) -> set[int]:
    """The `n` projector sessions that appeared since `before` was taken."""
    found: set[int] = set()

    async def arrived() -> bool:
        found.clear()
        found.update(await sessions(conn) - before)
        return len(found) == n

    await eventually(arrived, f"{n} new projector sessions")
    return set(found)


async def in_batch(conn: asyncpg.Connection, pids: set[int]) -> bool:
    """One of `pids` is inside a batch's transaction (it has taken its checkpoint row)."""
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
            "AND backend_xid IS NOT NULL",
            list(pids),
        )
    )


async def live(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT name, version, schema_name, tx_id::text AS tx_id, global_position, "
        "events_applied FROM projections WHERE status = 'live' ORDER BY name"
    )


async def applied(conn: asyncpg.Connection) -> int:
    return sum(r["events_applied"] for r in await live(conn))


async def caught_up(conn: asyncpg.Connection, target: Position) -> bool:
    rows = await live(conn)
    return len(rows) == len(NAMES) and all(
        Position(int(r["tx_id"]), r["global_position"]) >= target for r in rows
    )


async def assert_checkpoints_agree(conn: asyncpg.Connection) -> None:
    """Every live version has applied exactly the events up to its checkpoint: none twice,
    none skipped."""
    for r in await live(conn):
        position = Position(int(r["tx_id"]), r["global_position"])
        assert r["events_applied"] == await events_up_to(conn, position), r["name"]


async def assert_equal_to_rebuilds(db_url: str, conn: asyncpg.Connection) -> None:
    """Both live versions hold exactly what versions built from zero hold, and have applied
    every event once."""
    count = len(await committed_events(conn))
    for r in await live(conn):
        projection = PROJECTIONS[r["name"]]
        assert r["events_applied"] == count, r["name"]
        rebuilt = await build_from_zero(db_url, conn, projection)
        assert_same_rows(
            await dump(conn, projection, r["schema_name"]),
            await dump(conn, projection, rebuilt.schema),
        )


async def test_a_projector_killed_mid_batch_and_restarted_counts_every_event_once(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    world = make_world(SEED, days_ago(70), items=30)
    sequences = traffic(world, recommendations=250, organic_outcomes=120, changes=6, days=30)
    rng = random.Random(SEED)
    written = Written()
    await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
    writer = asyncio.create_task(
        write_concurrently(db_url, sequences, SEED, written, store_writers=2, raw_writers=1)
    )
    try:
        mid_batch = 0
        for n in range(5):
            before = await sessions(conn)
            with project(db_url, tmp_path, n) as proc:
                pids = await new_sessions(conn, before, len(NAMES))
                # Let it apply a random number of events, then kill it inside a batch.
                start, goal = await applied(conn), rng.randint(20, 300)
                await eventually(
                    partial(_applied_at_least, conn, start + goal),
                    "the projector to apply more events",
                )
                await eventually(
                    partial(_in_batch_or_caught_up, conn, pids, await log_end(conn)),
                    "the projector to be inside a batch",
                )
                mid_batch += await in_batch(conn, pids)
                kill(proc)
            await eventually(partial(_none_of, conn, pids), "the killed sessions to end")
            await assert_checkpoints_agree(conn)
        assert mid_batch >= 3, "most kills should land inside a batch"
        await writer
    finally:
        writer.cancel()

    before = await sessions(conn)
    with project(db_url, tmp_path, 99, batch_size=500):
        await new_sessions(conn, before, len(NAMES))
        target = await log_end(conn)
        await eventually(lambda: caught_up(conn, target), "the last projector to catch up")
        await assert_checkpoints_agree(conn)
        await assert_equal_to_rebuilds(db_url, conn)
    log = timed(await committed_events(conn))
    [rewards] = [r for r in await live(conn) if r["name"] == "rewards"]
    assert_tables_equal(
        await rewards_tables(conn, rewards["schema_name"]), expected_rewards_tables(log)
    )


async def test_two_projector_processes_one_applies_and_killing_it_hands_over(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    world = make_world(SEED + 1, days_ago(70), items=20)
    sequences = traffic(world, recommendations=160, organic_outcomes=60, changes=4, days=30)
    half = len(sequences) // 2
    written = Written()
    await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
    with project(db_url, tmp_path, 1) as first:
        first_pids = await new_sessions(conn, set(), len(NAMES))
        await eventually(
            lambda: _true(lock_holders(conn), lambda h: h == first_pids),
            "the first process to hold both locks",
        )
        with project(db_url, tmp_path, 2):
            second_pids = await new_sessions(conn, first_pids, len(NAMES))
            await write_concurrently(db_url, sequences[:half], SEED + 1, written)
            target = await log_end(conn)
            await eventually(lambda: caught_up(conn, target), "the first process to catch up")
            # Only the first process applied anything; the second one waited.
            assert await lock_holders(conn) == first_pids
            await assert_checkpoints_agree(conn)

            writer = asyncio.create_task(
                write_concurrently(db_url, sequences[half:], SEED + 2, written)
            )
            try:
                await eventually(
                    lambda: _either(in_batch(conn, first_pids), _done(writer)),
                    "the first process to be inside a batch",
                )
                kill(first)
                await eventually(
                    lambda: _true(lock_holders(conn), lambda h: h == second_pids),
                    "the second process to take over",
                )
                await writer
            finally:
                writer.cancel()
            target = await log_end(conn)
            await eventually(lambda: caught_up(conn, target), "the second process to catch up")
            assert await lock_holders(conn) == second_pids
            await assert_checkpoints_agree(conn)
            await assert_equal_to_rebuilds(db_url, conn)


async def test_rebuild_command_recomputes_history_under_a_definition_file(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    doubled = replace(
        DEFAULT,
        version="doubled-from-a-file",
        weights={k: w * 2 for k, w in DEFAULT.weights.items()},
    )
    world = make_world(SEED + 2, days_ago(70), items=15)
    sequences = traffic(world, recommendations=60, organic_outcomes=20, changes=2, days=30)
    written = Written()
    await write_concurrently(db_url, [[catalogue(world)]], SEED, written, raw_writers=0)
    await write_concurrently(db_url, sequences, SEED + 3, written, raw_writers=0)
    definition = tmp_path / "doubled.json"
    definition.write_text(json.dumps(doubled.to_json()))
    env = segue_env(db_url, tmp_path)

    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "rebuild",
            "rewards",
            "--definition",
            str(definition),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "is live" in done.stdout
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "status", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    [rewards] = [p for p in json.loads(shown.stdout) if p["name"] == "rewards"]
    count = len(written.committed)
    assert rewards["definition_version"] == doubled.version
    assert rewards["status"] == "live"
    assert (rewards["events_applied"], rewards["lag_events"]) == (count, 0)
    assert rewards["position"] == (await log_end(conn)).global_position

    [row] = [r for r in await live(conn) if r["name"] == "rewards"]
    log = timed(await committed_events(conn))
    assert_tables_equal(
        await rewards_tables(conn, row["schema_name"]), expected_rewards_tables(log, doubled)
    )


# --- small async predicates for `eventually` -------------------------------------------------


async def _true(value: Awaitable[T], test: Callable[[T], bool]) -> bool:
    return test(await value)


async def _either(a: Awaitable[bool], b: Awaitable[bool]) -> bool:
    first, second = await a, await b  # both awaited: no coroutine is left behind
    return first or second


async def _done(task: asyncio.Task[None]) -> bool:
    return task.done()


async def _applied_at_least(conn: asyncpg.Connection, n: int) -> bool:
    return await applied(conn) >= n


async def _in_batch_or_caught_up(
    conn: asyncpg.Connection, pids: set[int], target: Position
) -> bool:
    return await in_batch(conn, pids) or await caught_up(conn, target)


async def _none_of(conn: asyncpg.Connection, pids: set[int]) -> bool:
    return not (await sessions(conn)) & pids
