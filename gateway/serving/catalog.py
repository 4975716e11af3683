"""The live catalogue for serving: item reads, upserts and retires, and the in-memory item table
kept current from `catalog_items` (written inline with appends by
`gateway.projections.catalog`)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from domain.events import ItemRetired, ItemUpserted, to_payload
from gateway.serving.items import CatalogRow, ItemScore, ItemTable
from gateway.store.api import EventStore, NewEvent, WrongExpectedVersion
from gateway.store.background import run_every

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    item_id: str
    kind: str
    attributes: dict[str, Any]
    vector: list[float] | None
    retired: bool


_GROUP = "coalesce(attributes->>'artist', attributes->>'show')"
_ALL = f"SELECT item_id, kind, {_GROUP}, retired FROM catalog_items WHERE NOT retired"
_CHANGED = f"SELECT item_id, kind, {_GROUP}, retired FROM catalog_items WHERE tx_id >= $1"
_XMIN = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


class Catalog:
    """The live catalogue in memory (`ItemTable`), kept current by a change feed.

    The first read loads every live row; later ones read only the rows written by transactions
    at or above the `xmin` of the previous read's snapshot (an indexed range on `tx_id`, empty
    when nothing changed), so keeping up costs O(changes), not O(catalogue). `watch` does that
    every `cache_seconds` in the background; a request waits for it only after a change made by
    this process, which must be visible to this process's next request."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        cache_seconds: float,
        items: ItemTable | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._ttl = cache_seconds
        self.items = items if items is not None else ItemTable(0.0, ItemScore(0, 0.0, 0.0, 0.0))
        self._xmin: int | None = None  # None: nothing loaded yet
        self._read_at = -1e18
        self._lock = asyncio.Lock()
        # Bumped by every change this process makes; a read that raced one leaves it stale.
        self._generation = 0
        self._caught_up = -1
        self._watched = False  # `watch` keeps the table current: requests never wait for it

    def invalidate(self) -> None:
        """Called after a change has committed, so the next read sees it."""
        self._generation += 1

    async def table(self) -> ItemTable:
        """The live catalogue, with every change this process made applied."""
        if self._caught_up != self._generation or (
            not self._watched and time.monotonic() - self._read_at >= self._ttl
        ):
            await self.catch_up()
        return self.items

    async def catch_up(self) -> int:
        """Apply what changed since the last read; returns how many rows changed."""
        async with self._lock:
            generation = self._generation
            started = time.monotonic()
            if generation == self._caught_up and started - self._read_at < self._ttl:
                return 0  # another caller did it while this one waited
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                # One snapshot for both: the rows, and the horizon below which it saw all.
                xmin = int(await conn.fetchval(_XMIN))
                if self._xmin is None:
                    rows = await conn.fetch(_ALL + " ORDER BY item_id")
                else:
                    # Recent rows through the index, whatever the statistics say: before a
                    # table loaded in bulk is analysed, the planner reads all of it (~0.3 s
                    # at a million rows, twice a second per process) to return none.
                    await conn.execute("SET LOCAL enable_seqscan = off")
                    rows = await conn.fetch(_CHANGED, self._xmin)
            changed = self.items.apply(CatalogRow(r[0], r[1], r[2], r[3]) for r in rows)
            self._xmin, self._read_at, self._caught_up = xmin, started, generation
            return changed

    async def watch(self) -> None:
        """Catch up twice per `cache_seconds` for as long as the process runs, so requests
        rarely wait for it, and recompute the exploration pools here after changes."""

        async def once() -> None:
            await self.catch_up()
            if self.items.dirty:
                self.items.refresh_pools()

        every = max(self._ttl / 2, 0.05)
        self._watched = True
        # While the database is away, retry no faster than every 2 s: requests need the pool more.
        await run_every(every, once, "read catalogue changes", log, initial=2.0, maximum=10.0)

    async def count_live(self) -> int:
        return (await self.table()).live_count

    async def get(self, item_id: str) -> CatalogItem | None:
        row = await self._pool.fetchrow(
            "SELECT item_id, kind, attributes::text, vector, retired FROM catalog_items "
            "WHERE item_id = $1",
            item_id,
        )
        if row is None:
            return None
        return CatalogItem(
            row[0], row[1], orjson.loads(row[2]), list(row[3]) if row[3] else None, row[4]
        )

    async def version(self, item_id: str) -> int:
        return await self._store.stream_version(ItemRetired(item_id).stream_id())

    async def upsert(self, items: Iterable[ItemUpserted]) -> list[tuple[ItemUpserted, int]]:
        """Record upserts; returns each item with its stream version."""
        items = list(items)
        result = await self._store.append(
            [
                NewEvent(uuid.uuid4(), it.stream_id(), it.TYPE, it.SCHEMA_VERSION, to_payload(it))
                for it in items
            ]
        )
        self.invalidate()
        return [(it, r.stream_version) for it, r in zip(items, result.recorded, strict=True)]

    async def retire(self, item_id: str) -> tuple[CatalogItem, int] | None:
        """Retire an item; None if it was never in the catalogue. Retiring twice is harmless,
        and concurrent retires append one event (the stream version decides)."""
        event = ItemRetired(item_id)
        while True:
            # The item and its stream version in one snapshot: read apart, a retire committing
            # between the two reads looked "not retired" at the version after it, and a second
            # retire was appended at that version.
            row = await self._pool.fetchrow(
                "SELECT c.item_id, c.kind, c.attributes::text, c.vector, c.retired, "
                "coalesce(s.version, 0) FROM catalog_items AS c "
                "LEFT JOIN streams AS s ON s.stream_id = $2 WHERE c.item_id = $1",
                item_id,
                event.stream_id(),
            )
            if row is None:
                return None
            current = CatalogItem(
                row[0], row[1], orjson.loads(row[2]), list(row[3]) if row[3] else None, row[4]
            )
            version = int(row[5])
            if current.retired:
                return current, version
            new = NewEvent(
                uuid.uuid4(), event.stream_id(), event.TYPE, event.SCHEMA_VERSION, to_payload(event)
            )
            try:
                result = await self._store.append([new], expected={event.stream_id(): version})
            except WrongExpectedVersion:
                continue  # someone changed the item meanwhile: look again
            self.invalidate()
            retired = CatalogItem(
                current.item_id, current.kind, current.attributes, current.vector, True
            )
            return retired, result.recorded[0].stream_version
