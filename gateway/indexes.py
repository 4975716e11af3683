"""Annoy indexes: built from the affinity projection, published atomically, swapped in live.

A build reads the affinity matrix and the live catalogue, learns embeddings (domain.embeddings),
and writes, into a new folder `index/v<version>/`: the Annoy file, the dense id map (Annoy only
knows integers), the listener vectors, and measured recall@10 against exact search. Publishing is
one `os.replace` of `index/manifest.json`; built folders are never modified.

Every gateway process polls the manifest and loads a new version in a worker thread, then swaps
one reference: a request holds the index it started with, so a swap never fails or slows one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from annoy import AnnoyIndex
from numpy.typing import NDArray

from domain.embeddings import AlsParams, Factors, blend_content, fit_als
from gateway.metrics import INDEX_DAMAGED, INDEX_LOAD_FAILURES, INDEX_LOADED
from gateway.projections import q
from gateway.projector import live_version

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Everything a version folder holds; the manifest records each file's size and SHA-256.
FILES = ("items.ann", "ids.json", "listeners.npy", "item_vectors.npy")
# The precomputed candidates, in every folder built since they were introduced.
CANDIDATE_FILES = ("candidates.npy", "candidate_scores.npy")
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
    recall = recall_at_10(index, factors.items, sample, params.search_k)
    candidates, candidate_scores, method = top_candidates(
        factors.users, factors.items, index, params.search_k
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
    files = {name: _digest((folder / name).read_bytes()) for name in FILES + CANDIDATE_FILES}
    return {
        "version": version,
        "built_at": datetime.now(UTC).isoformat(),
        "position": data.position,
        "items": len(data.items),
        "listeners": len(data.listeners),
        "recall_at_10": recall,
        # What requests of listeners in this build are answered from (recall: its top 10
        # against the exact top 10 on up to 200 listeners).
        "candidates": {
            "k": int(candidates.shape[1]),
            "method": method,
            "recall_at_10": candidates_recall,
            "sampled": len(listeners_sample),
        },
        "seconds": round(time.perf_counter() - started, 3),
        "params": {
            "trees": params.trees,
            "search_k": params.search_k,
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


@dataclass(frozen=True)
class LoadedIndex:
    """One immutable index version in memory (the Annoy file is memory-mapped)."""

    manifest: dict[str, Any]
    annoy: AnnoyIndex
    items: list[str]
    kinds: list[str]
    groups: list[str | None]
    item_row: dict[str, int]
    listener_row: dict[str, int]
    listener_vectors: NDArray[np.float64]
    item_vectors: NDArray[np.float64]
    # Per listener row: its precomputed candidates (item rows, -1 padding) and their dots.
    candidates: NDArray[np.int32]
    candidate_scores: NDArray[np.float32]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def search_k(self) -> int:
        """The search_k the index was built and its recall measured for."""
        return int(self.manifest["params"]["search_k"])

    def nearest(
        self, vector: Sequence[float] | NDArray[np.float64], n: int, search_k: int | None = None
    ) -> list[tuple[str, float]]:
        ids, dists = self.annoy.get_nns_by_vector(
            list(vector), n, search_k=search_k or self.search_k, include_distances=True
        )
        return [(self.items[i], float(d)) for i, d in zip(ids, dists, strict=True)]

    def nearest_rows(
        self, vector: NDArray[np.float64], n: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """`nearest` as item rows and dot products, at the search_k the build measured."""
        ids, dists = self.annoy.get_nns_by_vector(
            vector.tolist(), n, search_k=self.search_k, include_distances=True
        )
        return np.asarray(ids, dtype=np.int64), np.asarray(dists, dtype=np.float64)

    def listener_candidates(
        self, user: str
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]] | None:
        """The precomputed candidates of a listener of this build, or None."""
        row = self.listener_row.get(user)
        if row is None or row >= len(self.candidates):
            return None
        rows = self.candidates[row].astype(np.int64)
        keep = rows >= 0
        return rows[keep], self.candidate_scores[row][keep].astype(np.float64)


def _digest(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _check(manifest: dict[str, Any], name: str, size: int, sha256: str) -> None:
    expected = manifest.get("files", {}).get(name)
    if expected is None:
        return  # published before checksums were recorded: nothing to compare with
    if expected["bytes"] != size or expected["sha256"] != sha256:
        raise ValueError(
            f"index {manifest['version']} is damaged: {name} has {size} bytes and another "
            f"checksum than the {expected['bytes']} bytes it was published with"
        )


def _read(folder: Path, manifest: dict[str, Any], name: str) -> bytes:
    data = (folder / name).read_bytes()
    _check(manifest, name, len(data), hashlib.sha256(data).hexdigest())
    return data


def _private_copy(source: Path, manifest: dict[str, Any]) -> Path:
    """A copy of the Annoy file that only this process can reach, checked against the manifest.

    Annoy memory-maps the file it loads. Mapping the published file would tie the process to
    whatever later happens to it: a truncation makes the next read of a page past the new end
    raise SIGBUS, which kills the process, and garbage written in place is read as tree nodes.
    The copy is unlinked as soon as Annoy has mapped it, so nothing can reach it any more, and
    the space is freed when the index is dropped or the process ends, however it ends."""
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(prefix=f"segue-index-{manifest['version']}-", suffix=".ann")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        _check(manifest, "items.ann", size, digest.hexdigest())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _files(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The files of a version: indexes published before candidates were precomputed have none
    (their listeners search the tree, as every listener did then)."""
    listed = manifest.get("files", {})
    return FILES + tuple(name for name in CANDIDATE_FILES if name in listed)


def verify(root: Path, manifest: dict[str, Any]) -> None:
    """Raise (OSError, ValueError) unless every published file of `manifest` is intact."""
    folder = root / manifest["folder"]
    for name in _files(manifest):
        _read(folder, manifest, name)


MAPPED = ".mapped"  # under the index root: the verified copies this host's processes map


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _shared_copy(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    """A verified, read-only copy of a published file that every process of this host maps.

    Mapping the published file would tie the processes to whatever later happens to it (see
    `_private_copy`); one private copy per process would cost a host one copy of a large index
    per worker, in memory as well as on disk. So the copy is made once per host and version,
    under a name carrying the file's checksum, written beside it and renamed into place (never
    written in place), made read-only, and hashed again by every process before it maps it: a
    copy damaged since is replaced, not used. Copies of other versions are removed once a newer
    one is loaded (`prune_mapped`); processes still mapping them keep their pages."""
    expected = manifest["files"][name]
    cache = folder.parent / MAPPED
    target = cache / f"{manifest['version']}-{expected['sha256'][:16]}-{name}"
    if target.exists():
        # The published file is checked too, though the copy is what gets mapped: a version
        # whose published files are damaged is refused here as on a host without a copy, so
        # that every process reports it and a builder replaces it.
        _check(manifest, name, *_hash_file(folder / name))
        size, sha256 = _hash_file(target)
        if size == expected["bytes"] and sha256 == expected["sha256"]:
            return target
        target.unlink(missing_ok=True)
    cache.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}-", suffix=".tmp")
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, (folder / name).open("rb") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        _check(manifest, name, size, digest.hexdigest())
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def prune_mapped(root: Path, version: str, stale_seconds: float = 3600.0) -> None:
    """Remove this host's copies of other versions, and copies abandoned half-way."""
    cache = root / MAPPED
    if not cache.is_dir():
        return
    now = time.time()
    for path in cache.iterdir():
        with contextlib.suppress(OSError):
            if path.name.startswith("."):
                if now - path.stat().st_mtime > stale_seconds:
                    path.unlink()
            elif not path.name.startswith(f"{version}-"):
                path.unlink()


def _array(folder: Path, manifest: dict[str, Any], name: str) -> NDArray[Any]:
    """A published array, mapped from this host's verified copy (or, for a version published
    before checksums were recorded, read into this process)."""
    if name not in manifest.get("files", {}):
        loaded: NDArray[Any] = np.load(io.BytesIO((folder / name).read_bytes()))
        return loaded
    mapped: NDArray[Any] = np.load(_shared_copy(folder, manifest, name), mmap_mode="r")
    return mapped


def load(root: Path, manifest: dict[str, Any]) -> LoadedIndex:
    """Load a published version, refusing damaged files (OSError, ValueError, KeyError)."""
    folder = root / manifest["folder"]
    ids = json.loads(_read(folder, manifest, "ids.json"))
    item_vectors = _array(folder, manifest, "item_vectors.npy")
    listener_vectors = _array(folder, manifest, "listeners.npy")
    annoy = AnnoyIndex(int(item_vectors.shape[1]) if item_vectors.ndim == 2 else 1, "dot")
    if "items.ann" in manifest.get("files", {}):
        annoy.load(str(_shared_copy(folder, manifest, "items.ann")))
    else:
        private = _private_copy(folder / "items.ann", manifest)
        try:
            annoy.load(str(private))
        finally:
            private.unlink()
    if annoy.get_n_items() != len(ids["items"]):
        raise ValueError(f"index {manifest['version']} is damaged: item count differs")
    if "candidates.npy" in _files(manifest):
        candidates = _array(folder, manifest, "candidates.npy")
        candidate_scores = _array(folder, manifest, "candidate_scores.npy")
    else:
        candidates = np.zeros((0, 0), dtype=np.int32)
        candidate_scores = np.zeros((0, 0), dtype=np.float32)
    if len(candidates) and (
        candidates.shape != candidate_scores.shape
        or len(candidates) != len(listener_vectors)
        or int(candidates.max()) >= len(ids["items"])
    ):
        raise ValueError(f"index {manifest['version']} is damaged: candidates do not fit")
    return LoadedIndex(
        manifest=manifest,
        annoy=annoy,
        items=ids["items"],
        kinds=ids["kinds"],
        groups=ids["groups"],
        item_row={item: i for i, item in enumerate(ids["items"])},
        listener_row={u: i for i, u in enumerate(ids["listeners"])},
        listener_vectors=listener_vectors,
        item_vectors=item_vectors,
        candidates=candidates,
        candidate_scores=candidate_scores,
    )


class IndexHolder:
    """The current index of this process, swapped when the manifest changes.

    `error` says why this process does not serve the newest published version as published:
    it could not be loaded (damaged, missing, unreadable), or the files of the version this
    process serves were damaged on disk after it loaded them. Either way the process keeps
    serving what it has loaded, or, with nothing loaded, candidates without an index (the
    popularity fallback), and /readyz and the metrics say so; the next good build clears it."""

    def __init__(self, root: Path, poll_seconds: float = 2.0) -> None:
        self.root = root
        self.poll_seconds = poll_seconds
        self.current: LoadedIndex | None = None
        self.error: str | None = None
        self._seen: tuple[Any, ...] | None = None
        # Called with each version swapped in (the serving table maps its rows to it).
        self.on_load: list[Callable[[LoadedIndex], None]] = []

    def _published(self) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The manifest, and a cheap fingerprint of it and of its version's files."""
        path = self.root / MANIFEST
        stat = path.stat()
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("folder"), str):
            raise ValueError("the manifest does not name an index folder")
        stamp: list[Any] = [(stat.st_mtime_ns, stat.st_size, stat.st_ino)]
        for name in _files(manifest):
            try:
                f = (self.root / manifest["folder"] / name).stat()
                stamp.append((f.st_mtime_ns, f.st_size, f.st_ino))
            except OSError:
                stamp.append(None)
        return manifest, tuple(stamp)

    async def refresh(self) -> bool:
        """Load the published version if it changed; True when a new one was swapped in."""
        try:
            manifest, stamp = await asyncio.to_thread(self._published)
        except FileNotFoundError:
            if self.current is None and self.error is None:
                return False  # nothing published yet
            manifest, stamp = {}, ("no manifest",)
        except (OSError, ValueError) as exc:
            manifest, stamp = {}, (f"{exc.__class__.__name__}: {exc}",)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            if not manifest:
                raise ValueError(f"the manifest is missing or unreadable ({stamp[0]})")
            if self.current is not None and manifest.get("version") == self.current.version:
                # The version served here: new processes will load these files; are they intact?
                await asyncio.to_thread(verify, self.root, manifest)
                self._healthy()
                return False
            loaded = await asyncio.to_thread(load, self.root, manifest)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._failed(f"{exc.__class__.__name__}: {exc}")
            return False
        self.current = loaded  # one reference swap; requests in flight keep the old one
        await asyncio.to_thread(prune_mapped, self.root, loaded.version)
        for hook in self.on_load:
            hook(loaded)
        self._healthy()
        return True

    def _healthy(self) -> None:
        self.error = None
        INDEX_DAMAGED.set(0)
        INDEX_LOADED.set(1 if self.current is not None else 0)

    def _failed(self, error: str) -> None:
        serving = (
            f"serving version {self.current.version} as loaded before"
            if self.current is not None
            else "serving without an index (popularity fallback)"
        )
        self.error = f"{error}; {serving}"
        INDEX_DAMAGED.set(1)
        INDEX_LOAD_FAILURES.inc()
        INDEX_LOADED.set(1 if self.current is not None else 0)
        log.error("published index unusable: %s", self.error)

    async def watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the watcher must outlive any surprise
                log.exception("index refresh failed")
            await asyncio.sleep(self.poll_seconds)
