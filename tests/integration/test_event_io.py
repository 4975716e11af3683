"""Export and import of the log (JSON Lines, Parquet) against real PostgreSQL databases: the
filters, exact round trips, identical projections after importing into an empty database,
idempotent re-imports, and bad files refused whole, naming the line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from domain.events import (
    DomainEvent,
    ListenerForgotten,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
)
from gateway.analysis.event_io import (
    BadLine,
    Filters,
    ImportResult,
    JsonlSink,
    ParquetSink,
    export_events,
    import_events,
    read_jsonl,
    read_parquet,
)
from gateway.projections.catalog import CatalogProjection
from gateway.projections.definitions import PROJECTIONS
from gateway.store.database import create_pool
from gateway.store.postgres import PostgresEventStore
from tests.conftest import fresh_database
from tests.integration.projection_helpers import (
    Written,
    assert_same_rows,
    build_from_zero,
    catalogue,
    deal,
    dump,
    make_world,
    store_writer,
    traffic,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = datetime(2026, 10, 1, tzinfo=UTC)

# Everything a faithful copy must agree on, in commit order.
_LOG = (
    "SELECT event_type, event_id, recorded_at, schema_version, stream_id, stream_version, "
    "payload, metadata FROM events ORDER BY events.tx_id, global_position"
)


@pytest.fixture
async def other_db_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    """A second, empty (migrated) database to import into."""
    async with fresh_database(server_url, template_url) as url:
        yield url


async def seed_log(dsn: str, seed: int = 7) -> None:
    """Realistic traffic appended by concurrent writers through a store that keeps the
    catalogue, as the gateway's does; two listeners are forgotten, one of them then heard of
    again (a gateway that had not yet heard)."""
    world = make_world(seed, BASE, items=25, users=12)
    sequences = traffic(world, recommendations=40, organic_outcomes=25, changes=6, days=20)
    pool = await create_pool(dsn, min_size=1, max_size=8)
    store = PostgresEventStore(pool, inline=[CatalogProjection()])
    await store.start()
    try:
        written = Written()
        await store_writer(store, [[catalogue(world)]], written)
        await asyncio.gather(*(store_writer(store, hand, written) for hand in deal(sequences, 3)))
        late = OutcomeRecorded(
            uuid4(), world.users[0], world.items[0], OutcomeKind.STREAM_30S, BASE
        )
        tail: list[DomainEvent] = [
            ListenerForgotten(world.users[0]),
            ListenerForgotten(world.users[1]),
            late,
        ]
        await store_writer(store, [[tail]], written)
    finally:
        await store.close()
        await pool.close()


async def export_file(
    conn: asyncpg.Connection, path: Path, fmt: str, filters: Filters | None = None
) -> int:
    """Export in small batches, so that batch boundaries are crossed."""
    if fmt == "parquet":
        sink = ParquetSink(path)
        try:
            return await export_events(conn, sink, filters or Filters(), batch_rows=37)
        finally:
            sink.close()
    with path.open("wb") as f:
        lines_sink = JsonlSink(f)
        n = await export_events(conn, lines_sink, filters or Filters(), batch_rows=37)
        lines_sink.close()
        return n


async def import_file(dsn: str, path: Path, fmt: str) -> ImportResult:
    conn = await asyncpg.connect(dsn)
    try:
        rows = read_parquet(path) if fmt == "parquet" else read_jsonl(path)
        return await import_events(conn, rows, batch_rows=41)
    finally:
        await conn.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --- filters --------------------------------------------------------------------------------


def slate(surface: str, user: str, items: list[str]) -> RecommendationServed:
    return RecommendationServed(
        recommendation_id=uuid4(),
        user=user,
        surface=surface,
        context={},
        slate=tuple(SlateEntry(i, p, 0.5, 0.5) for p, i in enumerate(items)),
        policy_name="test",
        policy_version="1",
        index_version="none",
        requested_at=BASE,
    )


async def test_export_filters_by_time_type_and_surface(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    music, home = slate("music", "p-1", ["a", "b"]), slate("home", "p-2", ["c"])
    events: list[DomainEvent] = [
        music,
        home,
        OutcomeRecorded(uuid4(), "p-1", "a", OutcomeKind.SAVE, BASE, music.recommendation_id),
        OutcomeRecorded(uuid4(), "p-2", "c", OutcomeKind.SKIP, BASE, home.recommendation_id),
        OutcomeRecorded(uuid4(), "p-2", "a", OutcomeKind.LIKE, BASE),  # organic: no surface
        ListenerForgotten("p-3"),
    ]
    pool = await create_pool(db_url, min_size=1, max_size=2)
    store = PostgresEventStore(pool)
    await store.start()
    try:
        for e in events:  # one transaction each, so each has its own recorded_at
            await store_writer(store, [[[e]]], Written())
    finally:
        await store.close()
        await pool.close()
    times = [r[0] for r in await conn.fetch("SELECT recorded_at FROM events ORDER BY 1")]
    assert len(set(times)) == len(events)

    async def exported(filters: Filters) -> list[str]:
        path = tmp_path / f"{uuid4()}.jsonl"
        n = await export_file(conn, path, "jsonl", filters)
        got = lines(path)
        assert len(got) == n
        return [
            f"{g['type']}:{g['payload'].get('surface', g['payload'].get('kind', ''))}" for g in got
        ]

    assert len(await exported(Filters())) == len(events)
    assert await exported(Filters(since=times[1], until=times[3])) == [
        "RecommendationServed:home",
        "OutcomeRecorded:save",
    ]
    assert await exported(Filters(since=times[5])) == ["ListenerForgotten:"]
    assert await exported(Filters(until=times[0])) == []
    assert await exported(Filters(types=("OutcomeRecorded",))) == [
        "OutcomeRecorded:save",
        "OutcomeRecorded:skip",
        "OutcomeRecorded:like",
    ]
    assert await exported(Filters(types=("ListenerForgotten", "RecommendationServed"))) == [
        "RecommendationServed:music",
        "RecommendationServed:home",
        "ListenerForgotten:",
    ]
    assert await exported(Filters(surfaces=("music",))) == [
        "RecommendationServed:music",
        "OutcomeRecorded:save",
    ]
    assert await exported(
        Filters(surfaces=("music", "home"), types=("OutcomeRecorded",), since=times[3])
    ) == ["OutcomeRecorded:skip"]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
async def test_import_of_an_export_reproduces_the_log_and_the_projections(
    fmt: str, db_url: str, other_db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_log(db_url)
    path = tmp_path / f"log.{fmt}"
    n = await export_file(conn, path, fmt)
    assert n == await conn.fetchval("SELECT count(*) FROM events") > 300

    first = await import_file(other_db_url, path, fmt)
    assert (first.read, first.imported, first.duplicates) == (n, n, 0)
    other = await asyncpg.connect(other_db_url)
    try:
        assert [tuple(r) for r in await other.fetch(_LOG)] == [
            tuple(r) for r in await conn.fetch(_LOG)
        ]
        for table, key in (("streams", "stream_id"), ("event_ids", "event_id")):
            sql = f"SELECT {key}, " + (
                "version" if table == "streams" else "stream_id, stream_version"
            )
            sql += f" FROM {table} ORDER BY 1"
            assert [tuple(r) for r in await other.fetch(sql)] == [
                tuple(r) for r in await conn.fetch(sql)
            ], table
        catalogue_sql = (
            "SELECT item_id, kind, attributes, vector, retired FROM catalog_items ORDER BY 1"
        )
        want_catalogue = [tuple(r) for r in await conn.fetch(catalogue_sql)]
        assert want_catalogue, "the seeded log has a catalogue"
        assert [tuple(r) for r in await other.fetch(catalogue_sql)] == want_catalogue

        for projection in PROJECTIONS.values():
            here = await build_from_zero(db_url, conn, projection)
            there = await build_from_zero(other_db_url, other, projection)
            want = await dump(conn, projection, here.schema)
            assert any(want.values())
            assert_same_rows(await dump(other, projection, there.schema), want)

        # Importing the same file again adds nothing, and neither does exporting the copy and
        # importing that into the original.
        before = await other.fetchval("SELECT count(*) FROM events")
        again = await import_file(other_db_url, path, fmt)
        assert (again.imported, again.duplicates) == (0, n)
        assert await other.fetchval("SELECT count(*) FROM events") == before
        back = tmp_path / f"back.{fmt}"
        await export_file(other, back, fmt)
        assert (await import_file(db_url, back, fmt)).imported == 0
    finally:
        await other.close()


async def test_jsonl_and_parquet_exports_hold_the_same_lines(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_log(db_url, seed=11)
    await export_file(conn, tmp_path / "a.jsonl", "jsonl")
    await export_file(conn, tmp_path / "a.parquet", "parquet")
    from_jsonl = list(read_jsonl(tmp_path / "a.jsonl"))
    from_parquet = list(read_parquet(tmp_path / "a.parquet"))
    assert from_jsonl == from_parquet
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.field("recorded_at").type == pa.timestamp("us", tz="UTC")
    first = lines(tmp_path / "a.jsonl")[0]
    assert list(first) == [
        "type",
        "event_id",
        "recorded_at",
        "schema_version",
        "stream_id",
        "stream_version",
        "payload",
        "metadata",
    ]


async def test_import_appends_after_what_a_stream_already_holds(
    db_url: str, other_db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Into a database that is not empty: new events continue their streams' versions."""
    outcome = OutcomeRecorded(uuid4(), "p-9", "x", OutcomeKind.SAVE, BASE)
    theirs = OutcomeRecorded(uuid4(), "p-9", "y", OutcomeKind.LIKE, BASE)
    for dsn, e in ((db_url, outcome), (other_db_url, theirs)):
        pool = await create_pool(dsn, min_size=1, max_size=2)
        store = PostgresEventStore(pool)
        await store.start()
        await store_writer(store, [[[e]]], Written())
        await store.close()
        await pool.close()
    path = tmp_path / "one.jsonl"
    await export_file(conn, path, "jsonl")
    assert (await import_file(other_db_url, path, "jsonl")).imported == 1
    other = await asyncpg.connect(other_db_url)
    try:
        rows = await other.fetch(
            "SELECT event_id, stream_version FROM events WHERE stream_id = 'listener-p-9' "
            "ORDER BY global_position"
        )
        assert [(r[0], r[1]) for r in rows] == [(theirs.event_id, 1), (outcome.event_id, 2)]
        assert (
            await other.fetchval("SELECT version FROM streams WHERE stream_id = 'listener-p-9'")
            == 2
        )
    finally:
        await other.close()


# --- bad files ------------------------------------------------------------------------------


GOOD: dict[str, Any] = {
    "type": "OutcomeRecorded",
    "event_id": "7d5f7f4e-1c1e-4a3e-9a51-0c3e2b1d9f00",
    "recorded_at": "2026-10-01T12:00:00+00:00",
    "payload": {
        "event_id": "7d5f7f4e-1c1e-4a3e-9a51-0c3e2b1d9f00",
        "user": "p-1",
        "item_id": "a",
        "kind": "save",
        "occurred_at": "2026-10-01T12:00:00+00:00",
        "recommendation_id": None,
        "value": None,
    },
}


def good(n: int) -> dict[str, Any]:
    event_id = str(uuid4())
    return {**GOOD, "event_id": event_id, "payload": {**GOOD["payload"], "event_id": event_id}}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({**GOOD, "type": "Teleported"}), "unknown event type 'Teleported'"),
        (orjson.dumps({**GOOD, "event_id": "nope"}), "is not a UUID"),
        (orjson.dumps({**GOOD, "recorded_at": "2026-10-01T12:00:00"}), "needs a time zone"),
        (orjson.dumps({**GOOD, "recorded_at": 1759320000}), "is not an RFC 3339 time"),
        (orjson.dumps({**GOOD, "stream_version": 0}), "stream_version 0 is not a positive"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "payload"}), "missing 'payload'"),
        (orjson.dumps({**GOOD, "colour": "red"}), "unknown field 'colour'"),
        (orjson.dumps({**GOOD, "payload": {"user": "p-1"}}), "does not decode"),
        (orjson.dumps({**GOOD, "schema_version": 9}), "does not decode"),
        (
            orjson.dumps({**GOOD, "payload": {**GOOD["payload"], "item_id": "a\x00"}}),
            "NUL",
        ),
    ],
)
async def test_a_bad_line_is_named_and_nothing_is_imported(
    bad: bytes, reason: str, db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b"\n".join([orjson.dumps(good(1)), orjson.dumps(good(2)), b"", bad, orjson.dumps(good(5))])
    )
    with pytest.raises(BadLine) as caught:
        await import_file(db_url, path, "jsonl")
    assert caught.value.number == 4
    assert str(caught.value).startswith("line 4: ")
    assert reason in caught.value.reason
    assert await conn.fetchval("SELECT count(*) FROM events") == 0
    assert await conn.fetchval("SELECT count(*) FROM event_ids") == 0


async def test_a_bad_parquet_row_is_named(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    rows = [good(i) for i in range(3)]
    rows[2]["payload"] = "{broken"  # JSON text column, as exports write it
    table = pa.table(
        {
            "type": [r["type"] for r in rows],
            "event_id": [r["event_id"] for r in rows],
            "recorded_at": [datetime.fromisoformat(r["recorded_at"]) for r in rows],
            "payload": [
                p if isinstance(p, str) else orjson.dumps(p).decode()
                for p in (r["payload"] for r in rows)
            ],
        }
    )
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(BadLine, match=r"^row 3: payload is not JSON text"):
        await import_file(db_url, tmp_path / "bad.parquet", "parquet")
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


# --- the CLI, as an admin runs it -----------------------------------------------------------


def segue(args: list[str], dsn: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGUE_DATABASE_URL": dsn, "SEGUE_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_cli_export_and_import(
    db_url: str, other_db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_log(db_url, seed=3)
    total = await conn.fetchval("SELECT count(*) FROM events")
    out = tmp_path / "log.parquet"
    exported = await asyncio.to_thread(segue, ["export", "--output", str(out)], db_url, tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert f"exported {total} events" in exported.stderr
    assert "exporting" in exported.stderr  # the progress bar, on stderr
    assert exported.stdout == ""

    only = tmp_path / "outcomes.jsonl"
    filtered = await asyncio.to_thread(
        segue,
        ["export", "-o", str(only), "--type", "OutcomeRecorded", "--since", "2000-01-01"],
        db_url,
        tmp_path,
    )
    assert filtered.returncode == 0, filtered.stderr
    assert {line["type"] for line in lines(only)} == {"OutcomeRecorded"}

    imported = await asyncio.to_thread(segue, ["import", str(out)], other_db_url, tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert f"{total} events read, {total} imported, 0 duplicates" in imported.stderr
    again = await asyncio.to_thread(segue, ["import", str(out)], other_db_url, tmp_path)
    assert f"{total} events read, 0 imported, {total} duplicates" in again.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(orjson.dumps(good(1)) + b"\n" + b'{"type": "OutcomeRecorded"}\n')
    refused = await asyncio.to_thread(segue, ["import", str(bad)], db_url, tmp_path)
    assert refused.returncode == 1
    assert "bad.jsonl: line 2: missing 'event_id' (nothing was imported)" in refused.stderr
    assert await conn.fetchval("SELECT count(*) FROM events") == total

    unknown = await asyncio.to_thread(
        segue, ["export", "-o", str(tmp_path / "x.csv")], db_url, tmp_path
    )
    assert unknown.returncode == 2
    assert "--format" in unknown.stderr
    late = await asyncio.to_thread(
        segue,
        ["export", "-o", str(tmp_path / "y.jsonl"), "--since", "2026-10-01T00:00"],
        db_url,
        tmp_path,
    )
    assert late.returncode == 2
    assert "needs a time zone" in late.stderr
    assert not (tmp_path / "y.jsonl").exists()


async def test_import_while_the_store_appends_keeps_streams_and_ids_consistent(
    db_url: str, other_db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """The import takes the store's stream locks: appends to the same streams going on meanwhile
    interleave whole, and every stream stays gapless, with its version and ids in step."""
    await seed_log(db_url, seed=5)
    path = tmp_path / "log.jsonl"
    await export_file(conn, path, "jsonl")
    users = sorted({line["payload"]["user"] for line in lines(path) if "user" in line["payload"]})
    pool = await create_pool(other_db_url, min_size=1, max_size=6)
    store = PostgresEventStore(pool)
    await store.start()
    stop, started = asyncio.Event(), asyncio.Event()

    async def appender(k: int) -> int:
        n = 0
        while not stop.is_set():
            user = users[(k + n) % len(users)]
            e = OutcomeRecorded(uuid4(), user, "it-000", OutcomeKind.SAVE, BASE)
            await store_writer(store, [[[e]]], Written())
            started.set()
            n += 1
        return n

    try:
        tasks = [asyncio.create_task(appender(k)) for k in range(3)]
        await started.wait()
        result = await import_file(other_db_url, path, "jsonl")
        stop.set()
        appended = sum(await asyncio.gather(*tasks))
    finally:
        await store.close()
        await pool.close()
    assert appended > 0
    other = await asyncpg.connect(other_db_url)
    try:
        total = await other.fetchval("SELECT count(*) FROM events")
        assert total == result.imported + appended
        assert await other.fetchval("SELECT count(*) FROM event_ids") == total
        gaps = await other.fetch(
            "SELECT e.stream_id FROM events e JOIN streams s USING (stream_id) "
            "GROUP BY e.stream_id, s.version "
            "HAVING count(*) <> s.version OR count(DISTINCT e.stream_version) <> s.version "
            "OR max(e.stream_version) <> s.version"
        )
        assert gaps == []
        # Within a stream, commit order is version order, as readers rely on.
        disorder = await other.fetchval(
            "SELECT count(*) FROM (SELECT stream_version, lag(stream_version) OVER "
            "(PARTITION BY stream_id ORDER BY events.tx_id, global_position) AS before "
            "FROM events) AS x WHERE before IS NOT NULL AND stream_version <> before + 1"
        )
        assert disorder == 0
    finally:
        await other.close()


async def test_a_forgetting_in_the_file_deletes_the_mapping_here(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A mapping that came back (say, restored from a backup) must not outlive an imported
    ListenerForgotten of its pseudonym."""
    kept = await conn.fetchval(
        "INSERT INTO listeners (user_id) VALUES ('still-here') RETURNING pseudonym::text"
    )
    gone = await conn.fetchval(
        "INSERT INTO listeners (user_id) VALUES ('restored') RETURNING pseudonym::text"
    )
    path = tmp_path / "forget.jsonl"
    path.write_bytes(
        b"\n".join(
            orjson.dumps(
                {
                    "type": "ListenerForgotten",
                    "event_id": str(uuid4()),
                    "recorded_at": "2026-10-01T12:00:00+00:00",
                    "payload": {"user": user},
                }
            )
            for user in (gone, "not-a-uuid-pseudonym")
        )
    )
    assert (await import_file(db_url, path, "jsonl")).imported == 2
    rows = await conn.fetch("SELECT user_id, pseudonym::text FROM listeners")
    assert [(r[0], r[1]) for r in rows] == [("still-here", kept)]
