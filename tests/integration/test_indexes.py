"""Index builds from the affinity projection: manifest, recall, atomic publish, live swap."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from domain.embeddings import AlsParams
from domain.events import ItemUpserted, OutcomeKind, OutcomeRecorded, to_payload
from gateway.event_store import PostgresEventStore
from gateway.indexes import MANIFEST, IndexHolder, IndexParams, build_and_publish
from gateway.projections import PROJECTIONS
from gateway.projector import Runner
from gateway.store_api import NewEvent
from tests.integration.projection_helpers import log_end

PARAMS = IndexParams(trees=20, als=AlsParams(factors=8, iterations=6, alpha=10.0))


def _event(e: ItemUpserted | OutcomeRecorded) -> NewEvent:
    return NewEvent(uuid.uuid4(), e.stream_id(), e.TYPE, e.SCHEMA_VERSION, to_payload(e))


async def seed(store: PostgresEventStore, pool: asyncpg.Pool, db_url: str) -> None:
    """60 items in two taste groups, 40 listeners who each play within their group."""
    rng = random.Random(5)
    items = [ItemUpserted(f"it{i}", "track", {"artist": f"a{i % 6}"}) for i in range(60)]
    await store.append([_event(i) for i in items])
    # The catalogue table is written by the store's inline projection; write it here directly.
    await pool.executemany(
        "INSERT INTO catalog_items (item_id, kind, attributes, global_position) "
        "VALUES ($1, 'track', $2::jsonb, 0) ON CONFLICT DO NOTHING",
        [(i.item_id, json.dumps(i.attributes)) for i in items],
    )
    now = datetime(2026, 5, 1, tzinfo=UTC)
    outcomes = []
    for u in range(40):
        group = range(0, 30) if u < 20 else range(30, 60)
        for i in rng.sample(list(group), 10):
            outcomes.append(
                OutcomeRecorded(uuid.uuid4(), f"p{u}", f"it{i}", OutcomeKind.STREAM_30S, now)
            )
    await store.append([_event(o) for o in outcomes])
    runner = Runner(db_url, PROJECTIONS["listeners"], batch_size=500)
    task = asyncio.create_task(runner.run())
    try:
        # The log's last event, not `head`: another database's open transaction on a shared
        # server would hold `head` back (docs/decisions.md 16).
        async with pool.acquire() as conn:
            await runner.wait_for(await log_end(conn), timeout=30)
    finally:
        task.cancel()


async def test_build_publish_load_and_query(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    await seed(pg_store, pool, db_url)
    entry = await build_and_publish(db_url, tmp_path, PARAMS)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest == entry
    assert manifest["items"] == 60
    assert manifest["listeners"] == 40
    assert manifest["recall_at_10"] >= 0.9
    assert manifest["position"] > 0
    assert manifest["params"]["seed"] == PARAMS.seed

    holder = IndexHolder(tmp_path)
    assert await holder.refresh()
    index = holder.current
    assert index is not None
    assert index.version == manifest["version"]
    # A listener of the first group is closest to first-group items.
    vector = index.listener_vectors[index.listener_row["p0"]]
    top = [item for item, _ in index.nearest(vector, 10, PARAMS.search_k)]
    assert sum(int(item[2:]) < 30 for item in top) >= 8
    assert not await holder.refresh()  # nothing new


async def test_swap_under_load_and_damaged_files(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    await seed(pg_store, pool, db_url)
    await build_and_publish(db_url, tmp_path, PARAMS)
    holder = IndexHolder(tmp_path)
    await holder.refresh()
    first = holder.current
    assert first is not None

    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def query() -> int:
        served = 0
        while not stop.is_set():
            index = holder.current
            assert index is not None
            try:
                assert len(index.nearest(index.item_vectors[0], 5, 100)) == 5
            except BaseException as exc:  # any failure during a swap is the bug under test
                failures.append(exc)
            served += 1
            await asyncio.sleep(0)
        return served

    clients = [asyncio.create_task(query()) for _ in range(4)]
    for _ in range(3):
        await build_and_publish(db_url, tmp_path, PARAMS)
        assert await holder.refresh()
    stop.set()
    served = await asyncio.gather(*clients)
    assert not failures
    assert min(served) > 0
    assert holder.current is not first
    # Old versions are pruned: the three newest folders remain.
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3

    # A damaged new version is refused; the process keeps serving the one it has.
    good = holder.current
    assert good is not None
    entry = await build_and_publish(db_url, tmp_path, PARAMS)
    (tmp_path / entry["folder"] / "items.ann").write_bytes(b"not an index")
    assert not await holder.refresh()
    assert holder.current is good
    assert holder.error is not None
