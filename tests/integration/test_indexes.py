"""Index builds from the affinity projection: manifest, recall, atomic publish, live swap."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
from annoy import AnnoyIndex

from domain.embeddings import AlsParams
from domain.events import ItemUpserted, OutcomeKind, OutcomeRecorded, to_payload
from gateway.index.build import (
    IndexParams,
    build_and_publish,
    candidate_recall,
    exact_nearest,
    recall_at_10,
    top_candidates,
    tune_search_k,
)
from gateway.index.files import MANIFEST, MAPPED, hash_file
from gateway.index.holder import IndexHolder, load
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.runner import Runner
from gateway.store.api import NewEvent
from gateway.store.postgres import PostgresEventStore
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

    # Every listener's candidates were precomputed, exactly at this size, and their recall
    # against exact search is in the manifest.
    assert manifest["candidates"] == {
        "k": 60,
        "method": "exact",
        "recall_at_10": 1.0,
        "sampled": 40,
    }
    for listener, row in index.listener_row.items():
        known = index.listener_candidates(listener)
        assert known is not None
        rows, dots = known
        exact = index.item_vectors @ index.listener_vectors[row]
        assert sorted(rows.tolist()) == list(range(60))
        assert np.allclose(dots, exact[rows], atol=1e-5)
        assert np.all(np.diff(dots) <= 1e-6)  # best first
    assert index.listener_candidates("never-seen") is None


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
    assert len([p for p in tmp_path.iterdir() if p.is_dir() and p.name != MAPPED]) == 3

    # A damaged new version is refused; the process keeps serving the one it has.
    good = holder.current
    assert good is not None
    entry = await build_and_publish(db_url, tmp_path, PARAMS)
    (tmp_path / entry["folder"] / "items.ann").write_bytes(b"not an index")
    assert not await holder.refresh()
    assert holder.current is good
    assert holder.error is not None


def test_candidates_by_annoy_beyond_the_exact_budget_and_their_recall() -> None:
    """Above `exact_pairs` the candidates come from the tree; recall is measured, not assumed."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(500, 8))
    users = rng.normal(size=(30, 8))
    tree = AnnoyIndex(8, "dot")
    for i, v in enumerate(items):
        tree.add_item(i, v.tolist())
    tree.build(10, n_jobs=1)
    exact_rows, _exact_dots, method = top_candidates(users, items, tree, 10_000, k=50)
    assert method == "exact"
    want = np.argsort(-(users @ items.T), axis=1)[:, :50]
    assert (exact_rows == want).all()
    annoy_rows, _, method = top_candidates(users, items, tree, 10_000, k=50, exact_pairs=0)
    assert method == "annoy"
    sample = np.arange(30)
    assert candidate_recall(exact_rows, users, items, sample) == 1.0
    assert 0.5 <= candidate_recall(annoy_rows, users, items, sample) <= 1.0
    # A listener whose list lost its true best items is measured as such.
    worse = annoy_rows.copy()
    worse[:, :10] = worse[:, 40:50]
    assert candidate_recall(worse, users, items, sample) < 0.5


async def test_the_processes_of_a_host_share_one_verified_read_only_copy(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    await seed(pg_store, pool, db_url)
    entry = await build_and_publish(db_url, tmp_path, PARAMS)
    first, second = load(tmp_path, entry), load(tmp_path, entry)
    copies = {p.name.split("-", 2)[2]: p for p in (tmp_path / MAPPED).iterdir()}
    assert set(copies) == {
        "items.ann",
        "item_vectors.npy",
        "listeners.npy",
        "candidates.npy",
        "candidate_scores.npy",
    }
    for path in copies.values():
        assert path.name.startswith(entry["version"] + "-")
        assert path.stat().st_mode & 0o222 == 0  # nobody writes a mapped file in place
    # Both map the same file: its pages are shared, not copied into each process.
    # (Plain ndarray views of numpy memmaps, which do the mapping.)
    first_map, second_map = first.item_vectors.base, second.item_vectors.base
    assert isinstance(first_map, np.memmap)
    assert isinstance(second_map, np.memmap)
    assert first_map.filename == second_map.filename

    # A copy damaged since is not used: the next loader replaces it with a verified one.
    # (Put in its place, not written into it: the processes above map it, and writing a mapped
    # file in place is exactly what must never happen to them.)
    damaged = copies["item_vectors.npy"]
    damaged.unlink()
    damaged.write_bytes(b"garbage")
    third = load(tmp_path, entry)
    published = np.load(tmp_path / entry["folder"] / "item_vectors.npy")
    assert np.array_equal(third.item_vectors, published)
    assert np.array_equal(first.item_vectors, published)
    want = entry["files"]["item_vectors.npy"]
    assert hash_file(damaged) == (want["bytes"], want["sha256"])

    # Truncating the published files does not reach what the processes map.
    (tmp_path / entry["folder"] / "items.ann").write_bytes(b"")
    assert len(third.nearest(third.item_vectors[0], 5)) == 5

    # Loading a newer version removes the older version's copies.
    newer = await build_and_publish(db_url, tmp_path, PARAMS)
    holder = IndexHolder(tmp_path)
    assert await holder.refresh()
    left = [p.name for p in (tmp_path / MAPPED).iterdir()]
    assert left
    assert all(name.startswith(newer["version"] + "-") for name in left)
    assert len(first.nearest(first.item_vectors[0], 5)) == 5  # its pages are still mapped

    # With the index dir shared by many hosts, the copies go where SEGUE_INDEX_CACHE_DIR says
    # (a host-local folder), and nothing is written under the shared dir's own .mapped.
    local = tmp_path.parent / f"{tmp_path.name}-local-copies"
    elsewhere = IndexHolder(tmp_path, cache=local)
    assert await elsewhere.refresh()
    here = sorted(p.name for p in local.iterdir())
    assert here == sorted(left)
    assert sorted(p.name for p in (tmp_path / MAPPED).iterdir()) == sorted(left)  # untouched
    assert elsewhere.current is not None
    mapped = elsewhere.current.item_vectors.base
    assert isinstance(mapped, np.memmap)
    assert Path(str(mapped.filename)).parent == local


def test_search_k_is_raised_until_the_recall_target_and_exact_search_is_exact() -> None:
    rng = np.random.default_rng(4)
    items = rng.normal(size=(3000, 16))
    queries = rng.normal(size=(40, 16))
    tree = AnnoyIndex(16, "dot")
    for i, v in enumerate(items):
        tree.add_item(i, v.tolist())
    tree.build(10, n_jobs=1)
    low = IndexParams(search_k=10, target_recall=0.97, max_search_k=100_000)
    search_k, recall = tune_search_k(tree, items, queries, low)
    assert recall_at_10(tree, items, queries, 10) < 0.97  # the start was not enough...
    assert recall >= 0.97  # ...the tuned one is
    assert search_k > 10
    assert recall_at_10(tree, items, queries, search_k // 2) < 0.97 or search_k == 20
    capped = IndexParams(search_k=10, target_recall=1.01, max_search_k=80)
    assert tune_search_k(tree, items, queries, capped)[0] == 80  # never past the cap
    rows, dots = exact_nearest(items, queries[0], 25)
    want = np.argsort(-(items @ queries[0]))[:25]
    assert rows.tolist() == want.tolist()
    assert np.allclose(dots, (items @ queries[0])[want])


async def test_a_search_can_be_bounded_below_the_builds_search_k(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    """The recency-turned search asks for a lower search_k (RECENT_SEARCH_K); a bound above the
    build's own is not taken, and the exact method ignores it."""
    await seed(pg_store, pool, db_url)
    entry = await build_and_publish(db_url, tmp_path, PARAMS)
    index = load(tmp_path, entry)
    vector = index.item_vectors[0].astype(np.float64)
    index.manifest["search"] = {"method": "annoy"}
    full = index.nearest_rows(vector, 10)
    assert index.nearest_rows(vector, 10, search_k=10**9)[0].tolist() == full[0].tolist()
    # A bound of one node leaves Annoy a single leaf to read: not the full search's answer.
    assert index.nearest_rows(vector, 10, search_k=1)[0].tolist() != full[0].tolist()
    index.manifest["search"] = {"method": "exact"}
    assert len(index.nearest_rows(vector, 10, search_k=1)[0]) == 10
