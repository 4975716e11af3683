"""Building an index: from the affinity projection to a published version folder.

A build reads the affinity matrix and the live catalogue, learns embeddings (domain.embeddings),
and writes, into a new folder `index/v<version>/`: the Annoy file, the dense id map (Annoy only
knows integers), the listener vectors, and measured recall@10 against exact search. Publishing is
one `os.replace` of `index/manifest.json`; built folders are never modified.

Holding, verifying, mapping and swapping versions in the serving processes is `holder`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from annoy import AnnoyIndex
from numpy.typing import NDArray

from domain.embeddings import AlsParams, Factors, blend_content, fit_als
from gateway.index.files import CANDIDATE_FILES, FILES, MANIFEST, digest
from gateway.projections.definitions import q
from gateway.projections.runner import live_version

log = logging.getLogger(__name__)

CANDIDATES_K = 200  # per listener: what a request takes from the index
# Listener x item dot products above which the candidates come from Annoy instead of exactly.
EXACT_PAIRS = 4_000_000_000


@dataclass(frozen=True, slots=True)
class IndexParams:
    trees: int = 50
    search_k: int = 30_000  # recall@10 >= 0.98 at 100k items: bench/annoy_recall.py
    seed: int = 42
    als: AlsParams = field(default_factory=AlsParams)
    # How much content similarity (items' own vectors, when given) adds to learned affinity.
    content_weight: float = 0.5
    content_dims: int = 32
    # search_k is doubled from `search_k` until Annoy's recall@10 reaches this, up to the cap.
    target_recall: float = 0.98
    max_search_k: int = 1_000_000


@dataclass(frozen=True, slots=True)
class TrainingData:
    listeners: list[str]
    items: list[str]
    kinds: list[str]
    groups: list[str | None]
    content: list[list[float] | None]
    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    weights: NDArray[np.float64]
    position: int  # the affinity projection's checkpoint: what the index reflects


async def read_training_data(conn: asyncpg.Connection) -> TrainingData:
    """The affinity matrix restricted to live items, with dense ids for both sides."""
    version = await live_version(conn, "listeners")
    catalogue = await conn.fetch(
        "SELECT item_id, kind, attributes->>'artist', attributes->>'show', vector "
        "FROM catalog_items WHERE NOT retired ORDER BY item_id"
    )
    items = [r[0] for r in catalogue]
    item_row = {item: i for i, item in enumerate(items)}
    listeners: list[str] = []
    rows: list[int] = []
    cols: list[int] = []
    weights: list[float] = []
    position = 0
    if version is not None:
        position = int(
            await conn.fetchval(
                "SELECT global_position FROM projections WHERE name = $1 AND version = $2",
                version.name,
                version.version,
            )
        )
        listener_row: dict[str, int] = {}
        for listener, item, weight in await conn.fetch(
            f"SELECT listener, item_id, weight::float8 FROM {q(version.schema)}.affinity "
            "ORDER BY listener, item_id"
        ):
            i = item_row.get(item)
            if i is None:
                continue
            r = listener_row.setdefault(listener, len(listener_row))
            rows.append(r)
            cols.append(i)
            weights.append(weight)
        listeners = list(listener_row)
    return TrainingData(
        listeners=listeners,
        items=items,
        kinds=[r[1] for r in catalogue],
        groups=[r[2] or r[3] for r in catalogue],
        content=[list(r[4]) if r[4] else None for r in catalogue],
        rows=np.asarray(rows, dtype=np.int64),
        cols=np.asarray(cols, dtype=np.int64),
        weights=np.asarray(weights, dtype=np.float64),
        position=position,
    )


def recall_at_10(
    index: AnnoyIndex, vectors: NDArray[np.float64], queries: NDArray[np.float64], search_k: int
) -> float:
    """Mean overlap of Annoy's top 10 with exact top 10 (by dot product) over `queries`."""
    if len(queries) == 0 or len(vectors) == 0:
        return 1.0
    k = min(10, len(vectors))
    hits = 0
    for q_vec in queries:
        exact = set(np.argsort(-(vectors @ q_vec))[:k].tolist())
        found = set(index.get_nns_by_vector(q_vec.tolist(), k, search_k=search_k))
        hits += len(exact & found)
    return hits / (k * len(queries))


def tune_search_k(
    index: AnnoyIndex,
    vectors: NDArray[np.float64],
    queries: NDArray[np.float64],
    params: IndexParams,
) -> tuple[int, float]:
    """The smallest search_k, doubling from `params.search_k`, at which Annoy's recall@10
    reaches `params.target_recall` (or the cap), and that recall."""
    search_k = params.search_k
    recall = recall_at_10(index, vectors, queries, search_k)
    while recall < params.target_recall and search_k < params.max_search_k:
        search_k = min(search_k * 2, params.max_search_k)
        recall = recall_at_10(index, vectors, queries, search_k)
    return search_k, recall


def search_timings(
    index: AnnoyIndex,
    vectors: NDArray[np.float64],
    queries: NDArray[np.float64],
    search_k: int,
    k: int = 200,
) -> tuple[float, float]:
    """Milliseconds per query of Annoy at `search_k` and of exact search (median of the
    queries), for a listener the build has not seen: whichever is faster serves them."""
    if len(queries) == 0 or len(vectors) == 0:
        return 0.0, 0.0
    k = min(k, len(vectors))
    annoy_ms, exact_ms = [], []
    for q_vec in queries[:50]:
        started = time.perf_counter()
        index.get_nns_by_vector(q_vec.tolist(), k, search_k=search_k)
        annoy_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        exact_nearest(vectors, q_vec, k)
        exact_ms.append((time.perf_counter() - started) * 1000)
    return float(np.median(annoy_ms)), float(np.median(exact_ms))


def exact_nearest(
    vectors: NDArray[np.float64], query: NDArray[np.float64], k: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The `k` rows of highest dot product with `query`, best first."""
    scores = vectors @ query
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    top = np.argpartition(-scores, k - 1)[:k]
    order = np.argsort(-scores[top], kind="stable")
    return top[order].astype(np.int64), scores[top[order]].astype(np.float64)


def _exact_top(
    queries: NDArray[np.float64], vectors: NDArray[np.float64], k: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The `k` items of highest dot product per query, best first, computed in blocks of
    queries small enough that a block's scores stay under ~256 MB."""
    rows = np.zeros((len(queries), k), dtype=np.int32)
    dots = np.zeros((len(queries), k), dtype=np.float32)
    block = max(1, 32_000_000 // max(len(vectors), 1))
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        rows[start : start + block] = np.take_along_axis(top, order, axis=1)
        dots[start : start + block] = np.take_along_axis(top_scores, order, axis=1)
    return rows, dots


def top_candidates(
    users: NDArray[np.float64],
    items: NDArray[np.float64],
    index: AnnoyIndex,
    search_k: int,
    k: int = CANDIDATES_K,
    exact_pairs: int = EXACT_PAIRS,
) -> tuple[NDArray[np.int32], NDArray[np.float32], str]:
    """Every listener's candidates, precomputed so that serving a listener of the last build
    does no tree search: exact top-k by blocked matrix products while listeners x items stays
    under `exact_pairs`, else Annoy's. Rows short of k (tiny catalogues) are padded with -1."""
    k = min(k, len(items))
    if len(users) == 0 or k == 0:
        return np.zeros((len(users), k), np.int32), np.zeros((len(users), k), np.float32), "none"
    if len(users) * len(items) <= exact_pairs:
        rows, dots = _exact_top(users, items, k)
        return rows, dots, "exact"
    rows = np.full((len(users), k), -1, dtype=np.int32)
    dots = np.zeros((len(users), k), dtype=np.float32)
    for u, vector in enumerate(users):
        found, dist = index.get_nns_by_vector(
            vector.tolist(), k, search_k=search_k, include_distances=True
        )
        rows[u, : len(found)] = found
        dots[u, : len(found)] = dist
    return rows, dots, "annoy"


def candidate_recall(
    candidates: NDArray[np.int32],
    users: NDArray[np.float64],
    items: NDArray[np.float64],
    sample: NDArray[np.int64],
) -> float:
    """Mean overlap of the precomputed top 10 with the exact top 10 over the `sample` rows."""
    if len(sample) == 0 or len(items) == 0:
        return 1.0
    k = min(10, len(items))
    exact, _ = _exact_top(users[sample], items, k)
    hits = sum(
        len(set(exact[j].tolist()) & set(candidates[u, :k].tolist()))
        for j, u in enumerate(sample.tolist())
    )
    return hits / (k * len(sample))


def build(data: TrainingData, folder: Path, version: str, params: IndexParams) -> dict[str, Any]:
    """Learn embeddings and write a complete index folder; returns its manifest entry.

    CPU-bound: call it in a worker thread (numpy and Annoy release the GIL while they work).
    """
    started = time.perf_counter()
    dims = params.als.factors
    if len(data.rows):
        factors = fit_als(
            data.rows, data.cols, data.weights, len(data.listeners), len(data.items), params.als
        )
    else:
        factors = Factors(np.zeros((0, dims)), np.zeros((len(data.items), dims)))
    factors = blend_content(
        factors,
        data.content,
        data.rows,
        data.cols,
        data.weights,
        params.content_weight,
        params.content_dims,
        params.seed,
    )
    dims = factors.items.shape[1]
    index = AnnoyIndex(dims, "dot")
    index.set_seed(params.seed)
    for i, vector in enumerate(factors.items):
        index.add_item(i, vector.tolist())
    index.build(params.trees, n_jobs=1)
    folder.mkdir(parents=True)
    index.save(str(folder / "items.ann"))
    np.save(folder / "listeners.npy", factors.users)
    np.save(folder / "item_vectors.npy", factors.items)
    (folder / "ids.json").write_text(
        json.dumps(
            {
                "items": data.items,
                "kinds": data.kinds,
                "groups": data.groups,
                "listeners": data.listeners,
            }
        )
    )
    rng = np.random.default_rng(params.seed)
    sample = (
        factors.users[rng.choice(len(factors.users), min(200, len(factors.users)), replace=False)]
        if len(factors.users)
        else factors.items[:200]
    )
    search_k, recall = tune_search_k(index, factors.items, sample, params)
    annoy_ms, exact_ms = search_timings(index, factors.items, sample, search_k)
    candidates, candidate_scores, method = top_candidates(
        factors.users, factors.items, index, search_k
    )
    np.save(folder / "candidates.npy", candidates)
    np.save(folder / "candidate_scores.npy", candidate_scores)
    listeners_sample = (
        rng.choice(len(factors.users), min(200, len(factors.users)), replace=False)
        if len(factors.users)
        else np.zeros(0, dtype=np.int64)
    )
    candidates_recall = candidate_recall(candidates, factors.users, factors.items, listeners_sample)
    index.unload()
    files = {name: digest((folder / name).read_bytes()) for name in FILES + CANDIDATE_FILES}
    return {
        "version": version,
        "built_at": datetime.now(UTC).isoformat(),
        "position": data.position,
        "items": len(data.items),
        "listeners": len(data.listeners),
        "recall_at_10": recall,
        # What requests of listeners in this build are answered from (recall: its top 10
        # against the exact top 10 on up to 200 listeners).
        # How a listener the build has not seen is searched: the faster of Annoy at the tuned
        # search_k and exact search (per-query milliseconds measured on the sample).
        "search": {
            "method": "exact" if exact_ms < annoy_ms else "annoy",
            "search_k": search_k,
            "target_recall": params.target_recall,
            "annoy_ms": round(annoy_ms, 3),
            "exact_ms": round(exact_ms, 3),
        },
        "candidates": {
            "k": int(candidates.shape[1]),
            "method": method,
            "recall_at_10": candidates_recall,
            "sampled": len(listeners_sample),
        },
        "seconds": round(time.perf_counter() - started, 3),
        "params": {
            "trees": params.trees,
            "search_k": search_k,
            "target_recall": params.target_recall,
            "seed": params.seed,
            "factors": params.als.factors,
            "iterations": params.als.iterations,
            "regularization": params.als.regularization,
            "alpha": params.als.alpha,
            "solver": params.als.solver,
            "content_weight": params.content_weight,
            "dimensions": dims,
        },
        "folder": folder.name,
        "files": files,
    }


def publish(root: Path, entry: dict[str, Any], keep: int = 3) -> None:
    """Point the manifest at `entry` (one atomic rename), then prune old folders."""
    with tempfile.NamedTemporaryFile("w", dir=root, delete=False, suffix=".tmp") as tmp:
        json.dump(entry, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, root / MANIFEST)
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("v")),
        key=lambda p: p.stat().st_mtime,
    )
    for old in folders[:-keep]:
        if old.name != entry["folder"]:
            shutil.rmtree(old, ignore_errors=True)


async def build_and_publish(
    dsn: str, root: Path, params: IndexParams = IndexParams()
) -> dict[str, Any]:
    """Read, build (in a thread) and publish a new index version under `root`."""
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    conn = await asyncpg.connect(dsn)
    try:
        data = await read_training_data(conn)
    finally:
        await conn.close()
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    entry = await asyncio.to_thread(build, data, root / f"v{version}", version, params)
    await asyncio.to_thread(publish, root, entry)
    log.info(
        "index %s published: %d items, recall@10 %.3f",
        version,
        entry["items"],
        entry["recall_at_10"],
    )
    return entry
