"""Annoy recall@10 and speed: the index the gateway builds, beside exact dot-product search.

    python bench/annoy_recall.py [--queries 500] [--repeats 3] [--trees 10,25,50,100]
                                 [--wheel recbole-1.2.1-py3-none-any.whl]

Two item sets, each indexed exactly as gateway.index.build.build does (metric "dot", the configured
seed, one build thread):
  1. MovieLens-100K, read straight from the recbole==1.2.1 wheel (fetched with `pip download` into
     a temporary folder unless --wheel names one), every rating taken as one implicit interaction
     and factorised with domain.embeddings.fit_als at IndexParams().als; the queries are the
     listener vectors, as on the home surface.
  2. 100,000 synthetic 64-dimensional items of rank 16 plus a little noise, with queries drawn from
     the same distribution (seeded).
For each: exact search (vectors @ q, argpartition; float64 as the gateway keeps the vectors,
float32 as Annoy stores them) in this process as the baseline, then Annoy at the configured
IndexParams (trees, search_k, marked *), a sweep of search_k at the configured trees and a sweep
of trees at the configured search_k. recall@10 is the mean overlap of Annoy's
top 10 with the exact top 10 (the manifest's definition), with a 95% interval over queries; q/s
is one query at a time, as a request asks; build seconds include adding the items. Timings are
medians of --repeats runs, with one BLAS thread unless OPENBLAS_NUM_THREADS says otherwise.
Goal: recall@10 >= 0.98 at the configured search_k.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex
from numpy.typing import NDArray

from domain.embeddings import fit_als
from gateway.analysis.wheels import fetch_wheel
from gateway.index.build import IndexParams

K = 10
RECBOLE = "recbole==1.2.1"
ML_100K = "recbole/dataset_example/ml-100k/ml-100k.inter"

Vectors = NDArray[np.float64]
Ids = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Row:
    trees: int
    search_k: int
    recall: float
    interval: float  # half-width of the 95% interval over queries
    qps: float
    build_seconds: float
    size_mb: float


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def movielens_interactions(wheel: Path | None) -> tuple[Ids, Ids, int, int]:
    """(user row, item column, n_users, n_items) of ML-100K, dense ids in order of the raw ids."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            # The data set is never committed: fetch the wheel that ships it, read it from the zip.
            try:
                wheel = fetch_wheel(Path(tmp), RECBOLE)
            except RuntimeError as exc:
                sys.exit(str(exc))
        with zipfile.ZipFile(wheel) as archive:
            text = archive.read(ML_100K).decode()
    lines = text.splitlines()[1:]  # header: user_id:token item_id:token rating:float timestamp
    users = np.array([line.split("\t", 2)[0] for line in lines])
    items = np.array([line.split("\t", 2)[1] for line in lines])
    user_keys, rows = np.unique(users, return_inverse=True)
    item_keys, cols = np.unique(items, return_inverse=True)
    return rows.astype(np.int64), cols.astype(np.int64), len(user_keys), len(item_keys)


def synthetic(
    n_items: int, n_queries: int, dims: int, rank: int, noise: float, seed: int
) -> tuple[Vectors, Vectors]:
    """Items and queries from one low-rank distribution: learned factors are nearly low rank,
    and listener and item vectors live in the same space. Coordinates have unit variance."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(scale=1.0 / np.sqrt(rank), size=(rank, dims))

    def draw(n: int) -> Vectors:
        out: Vectors = rng.normal(size=(n, rank)) @ basis + noise * rng.normal(size=(n, dims))
        return out

    return draw(n_items), draw(n_queries)


def exact_top(vectors: Vectors, queries: Vectors) -> Ids:
    """The exact top K by dot product of every query, in blocks so the score matrix stays small."""
    blocks = []
    for block in np.array_split(queries, max(1, len(queries) * len(vectors) // 10_000_000)):
        scores = block @ vectors.T
        blocks.append(np.argpartition(-scores, K - 1, axis=1)[:, :K])
    return np.vstack(blocks).astype(np.int64)


def exact_qps(
    vectors: NDArray[np.floating[Any]], queries: NDArray[np.floating[Any]], repeats: int
) -> float:
    def run() -> None:
        for q in queries:
            np.argpartition(-(vectors @ q), K - 1)[:K]

    return len(queries) / median_seconds(run, repeats)


def build_annoy(vectors: Vectors, trees: int, seed: int) -> Any:
    # The same steps as gateway.index.build.build, so the figures are the gateway's.
    index = AnnoyIndex(vectors.shape[1], "dot")
    index.set_seed(seed)
    for i, vector in enumerate(vectors):
        index.add_item(i, vector.tolist())
    index.build(trees, n_jobs=1)
    return index


def timed_build(vectors: Vectors, trees: int, seed: int, repeats: int) -> tuple[Any, float]:
    """The last of `repeats` identical builds and their median seconds."""
    index: Any = None
    times = []
    for _ in range(repeats):
        if index is not None:
            index.unload()
        started = time.perf_counter()
        index = build_annoy(vectors, trees, seed)
        times.append(time.perf_counter() - started)
    return index, statistics.median(times)


def annoy_search(index: Any, queries: list[list[float]], search_k: int) -> list[list[int]]:
    return [index.get_nns_by_vector(q, K, search_k=search_k) for q in queries]


def recall(found: Sequence[Sequence[int]], truth: Ids) -> tuple[float, float]:
    per_query = np.array(
        [len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]
    )
    interval = 1.96 * float(per_query.std(ddof=1)) / np.sqrt(len(per_query))
    return float(per_query.mean()), interval


def sweep(
    vectors: Vectors,
    queries: Vectors,
    params: IndexParams,
    search_ks: Sequence[int],
    trees_sweep: Sequence[int],
    repeats: int,
) -> tuple[tuple[float, float], list[Row]]:
    """Exact q/s (float64, float32), then one row per (trees, search_k): every search_k at the
    configured trees, every trees at the configured search_k."""
    truth = exact_top(vectors, queries)
    # float64 is what the gateway keeps beside the index; float32 is what Annoy stores.
    baseline = (
        exact_qps(vectors, queries, repeats),
        exact_qps(vectors.astype(np.float32), queries.astype(np.float32), repeats),
    )
    as_lists = [q.tolist() for q in queries]  # Annoy takes lists; convert outside the clock
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for trees in sorted({*trees_sweep, params.trees}):
            index, build_seconds = timed_build(vectors, trees, params.seed, repeats)
            path = Path(tmp) / f"{trees}.ann"
            index.save(str(path))  # the file size is what every gateway process maps
            size_mb = path.stat().st_size / 1e6
            path.unlink()
            at_trees = (
                sorted({*search_ks, params.search_k})
                if trees == params.trees
                else [params.search_k]
            )
            for search_k in at_trees:
                found = annoy_search(index, as_lists, search_k)
                hit, interval = recall(found, truth)
                seconds = median_seconds(partial(annoy_search, index, as_lists, search_k), repeats)
                rows.append(
                    Row(
                        trees,
                        search_k,
                        hit,
                        interval,
                        len(queries) / seconds,
                        build_seconds,
                        size_mb,
                    )
                )
            index.unload()
    return baseline, rows


def report(
    title: str, baseline: tuple[float, float], rows: Sequence[Row], params: IndexParams
) -> None:
    print(title)
    print(
        f"  exact numpy (vectors @ q, argpartition): float64 {baseline[0]:,.0f} q/s, "
        f"float32 {baseline[1]:,.0f} q/s; 'vs exact' below is against float64"
    )
    print(
        f"  {'':1} {'trees':>5} {'search_k':>8} {'recall@10':>15} {'q/s':>8} {'vs exact':>8} "
        f"{'build s':>8} {'size MB':>8}"
    )
    for r in rows:
        mark = "*" if (r.trees, r.search_k) == (params.trees, params.search_k) else ""
        print(
            f"  {mark:1} {r.trees:>5} {r.search_k:>8} {r.recall:>8.4f} ±{r.interval:.4f} "
            f"{r.qps:>8,.0f} {r.qps / baseline[0]:>7.2f}x {r.build_seconds:>8.2f} {r.size_mb:>8.1f}"
        )
    configured = next(r for r in rows if (r.trees, r.search_k) == (params.trees, params.search_k))
    verdict = "met" if configured.recall >= 0.98 else "NOT met"
    print(f"  goal recall@10 >= 0.98 at the configured search_k: {verdict}\n", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--queries", type=int, default=500, help="synthetic queries")
    ap.add_argument("--items", type=int, default=100_000, help="synthetic items")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    ap.add_argument(
        "--trees", default="10,25,50,100", help="trees swept at the configured search_k"
    )
    ap.add_argument("--seed", type=int, default=7, help="synthetic data seed")
    ap.add_argument("--wheel", type=Path, help="a downloaded recbole-1.2.1 wheel (else fetched)")
    args = ap.parse_args()
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        # One BLAS thread: an Annoy query uses one core, so the exact baseline gets one too, and
        # on a shared machine a second BLAS thread waiting for a busy core makes the baseline
        # erratic. OpenBLAS reads this only when numpy loads, hence starting again with it set.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    params = IndexParams()
    trees_sweep = [int(t) for t in args.trees.split(",") if t]
    started = time.perf_counter()
    print(
        f"IndexParams: trees={params.trees} search_k={params.search_k} seed={params.seed} "
        f"als factors={params.als.factors} iterations={params.als.iterations}; "
        f"{os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']} "
        "(an Annoy query uses one), "
        f"load average {os.getloadavg()[0]:.1f} at start (timings are this machine's, shared)\n",
        flush=True,
    )

    listener_idx, item_idx, n_users, n_items = movielens_interactions(args.wheel)
    fit_started = time.perf_counter()
    factors = fit_als(
        listener_idx, item_idx, np.ones(len(listener_idx)), n_users, n_items, params.als
    )
    fit_seconds = time.perf_counter() - fit_started
    # Small catalogues: search_k near the item count already means reading most of the index.
    baseline, rows = sweep(
        factors.items, factors.users, params, [500, 1000, 2000, 5000], trees_sweep, args.repeats
    )
    report(
        f"MovieLens-100K: {n_items:,} items, {n_users:,} listener vectors as queries, "
        f"{len(listener_idx):,} interactions; fit_als {fit_seconds:.1f} s",
        baseline,
        rows,
        params,
    )

    items, queries = synthetic(
        args.items, args.queries, dims=64, rank=16, noise=0.1, seed=args.seed
    )
    baseline, rows = sweep(
        items,
        queries,
        params,
        [5000, 10_000, 20_000, 25_000, 30_000, 50_000],
        trees_sweep,
        args.repeats,
    )
    report(
        f"synthetic: {len(items):,} items x 64 dims (rank 16 + noise 0.1), "
        f"{len(queries):,} queries from the same distribution, seed {args.seed}",
        baseline,
        rows,
        params,
    )
    print(
        f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f} at end"
    )


if __name__ == "__main__":
    main()
