"""Holding an index: verify a published version, map it, and swap it in live.

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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex
from numpy.typing import NDArray

from gateway.index.build import exact_nearest
from gateway.index.files import MANIFEST, MAPPED, check, files_of, hash_file, read_checked
from gateway.metrics import (
    INDEX_BUILT,
    INDEX_DAMAGED,
    INDEX_INFO,
    INDEX_LOAD_FAILURES,
    INDEX_LOADED,
    INDEX_RECALL,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedIndex:
    """One immutable index version in memory (the Annoy file is memory-mapped)."""

    manifest: dict[str, Any]
    annoy: AnnoyIndex
    items: list[str]
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
        self, vector: NDArray[np.float64], n: int, *, search_k: int | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """`nearest` as item rows and dot products: by Annoy at the search_k the build tuned
        (or `search_k`, if lower), or exactly where the build measured exact search to be
        faster."""
        if self.manifest.get("search", {}).get("method") == "exact":
            return exact_nearest(self.item_vectors, vector, n)
        k = self.search_k if search_k is None else min(search_k, self.search_k)
        ids, dists = self.annoy.get_nns_by_vector(
            vector.tolist(), n, search_k=k, include_distances=True
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
        check(manifest, "items.ann", size, digest.hexdigest())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def verify(root: Path, manifest: dict[str, Any]) -> None:
    """Raise (OSError, ValueError) unless every published file of `manifest` is intact."""
    folder = root / manifest["folder"]
    for name in files_of(manifest):
        read_checked(folder, manifest, name)


def _shared_copy(folder: Path, manifest: dict[str, Any], name: str, cache: Path) -> Path:
    """A verified, read-only copy of a published file that every process of this host maps.

    Mapping the published file would tie the processes to whatever later happens to it (see
    `_private_copy`); one private copy per process would cost a host one copy of a large index
    per worker, in memory as well as on disk. So the copy is made once per host and version,
    under a name carrying the file's checksum, written beside it and renamed into place (never
    written in place), made read-only, and hashed again by every process before it maps it: a
    copy damaged since is replaced, not used. Copies of other versions are removed once a newer
    one is loaded (`prune_mapped`); processes still mapping them keep their pages."""
    expected = manifest["files"][name]
    target = cache / f"{manifest['version']}-{expected['sha256'][:16]}-{name}"
    if target.exists():
        # The published file is checked too, though the copy is what gets mapped: a version
        # whose published files are damaged is refused here as on a host without a copy, so
        # that every process reports it and a builder replaces it.
        check(manifest, name, *hash_file(folder / name))
        size, sha256 = hash_file(target)
        if size == expected["bytes"] and sha256 == expected["sha256"]:
            return target
        target.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
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
        check(manifest, name, size, digest.hexdigest())
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def prune_mapped(cache: Path, version: str, stale_seconds: float = 3600.0) -> None:
    """Remove this host's copies of other versions, and copies abandoned half-way."""
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


def _array(folder: Path, manifest: dict[str, Any], name: str, cache: Path) -> NDArray[Any]:
    """A published array, mapped from this host's verified copy (or, for a version published
    before checksums were recorded, read into this process)."""
    if name not in manifest.get("files", {}):
        loaded: NDArray[Any] = np.load(io.BytesIO((folder / name).read_bytes()))
        return loaded
    mapped = np.load(_shared_copy(folder, manifest, name, cache), mmap_mode="r")
    # Read every page once now, in the loading thread, so that requests do not fault them in
    # one by one (a request's exploration rows are scattered over the whole array); the
    # pages are the page cache's, shared by every process mapping the copy.
    np.add.reduce(mapped, axis=None)
    # A plain ndarray view of the mapping: numpy's memmap subclass wraps every indexing in
    # Python code, which showed in a request's profile.
    view: NDArray[Any] = np.asarray(mapped)
    return view


def load(root: Path, manifest: dict[str, Any], cache: Path | None = None) -> LoadedIndex:
    """Load a published version, refusing damaged files (OSError, ValueError, KeyError).
    `cache` is where this host keeps the verified copies it maps (default: `<root>/.mapped`)."""
    folder = root / manifest["folder"]
    cache = cache if cache is not None else root / MAPPED
    ids = json.loads(read_checked(folder, manifest, "ids.json"))
    item_vectors = _array(folder, manifest, "item_vectors.npy", cache)
    listener_vectors = _array(folder, manifest, "listeners.npy", cache)
    annoy = AnnoyIndex(int(item_vectors.shape[1]) if item_vectors.ndim == 2 else 1, "dot")
    if "items.ann" in manifest.get("files", {}):
        annoy.load(str(_shared_copy(folder, manifest, "items.ann", cache)))
    else:
        private = _private_copy(folder / "items.ann", manifest)
        try:
            annoy.load(str(private))
        finally:
            private.unlink()
    if annoy.get_n_items() != len(ids["items"]):
        raise ValueError(f"index {manifest['version']} is damaged: item count differs")
    if "candidates.npy" in files_of(manifest):
        candidates = _array(folder, manifest, "candidates.npy", cache)
        candidate_scores = _array(folder, manifest, "candidate_scores.npy", cache)
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

    def __init__(self, root: Path, poll_seconds: float = 2.0, cache: Path | None = None) -> None:
        self.root = root
        # Where this host's verified copies live: local to the host, even when `root` is a
        # volume shared by many (docs/decisions.md: the index cache).
        self.cache = cache if cache is not None else root / MAPPED
        self.poll_seconds = poll_seconds
        self.current: LoadedIndex | None = None
        self.error: str | None = None
        self._seen: tuple[Any, ...] | None = None
        # Called with each version swapped in (the serving table maps its rows to it).
        self.on_load: list[Callable[[LoadedIndex], None]] = []
        self._in_gauges: str | None = None  # the version segue_index_info shows as 1

    def _published(self) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The manifest, and a cheap fingerprint of it and of its version's files."""
        path = self.root / MANIFEST
        stat = path.stat()
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("folder"), str):
            raise ValueError("the manifest does not name an index folder")
        stamp: list[Any] = [(stat.st_mtime_ns, stat.st_size, stat.st_ino)]
        for name in files_of(manifest):
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
            loaded = await asyncio.to_thread(load, self.root, manifest, self.cache)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._failed(f"{exc.__class__.__name__}: {exc}")
            return False
        self.current = loaded  # one reference swap; requests in flight keep the old one
        await asyncio.to_thread(prune_mapped, self.cache, loaded.version)
        for hook in self.on_load:
            hook(loaded)
        self._healthy()
        return True

    def _healthy(self) -> None:
        self.error = None
        INDEX_DAMAGED.set(0)
        INDEX_LOADED.set(1 if self.current is not None else 0)
        if self.current is not None:
            self._publish(self.current.manifest)

    def _publish(self, manifest: dict[str, Any]) -> None:
        """The served index's version, build time and measured recall, for the dashboards."""
        version = str(manifest["version"])
        if self._in_gauges is not None and self._in_gauges != version:
            INDEX_INFO.labels(self._in_gauges).set(0)
        self._in_gauges = version
        INDEX_INFO.labels(version).set(1)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            INDEX_BUILT.set(datetime.fromisoformat(manifest["built_at"]).timestamp())
        with contextlib.suppress(KeyError, TypeError, ValueError):
            INDEX_RECALL.set(float(manifest["recall_at_10"]))

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
