"""Keeping an index current: build on demand, on a schedule, and after enough new events.

Only one process builds at a time (an advisory lock); every process watches the manifest and
swaps in what was published (`IndexHolder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import asyncpg

from gateway.index.build import IndexParams, build_and_publish
from gateway.index.holder import IndexHolder

log = logging.getLogger(__name__)

_LOCK = ("segue.index", 0)


class IndexService:
    def __init__(
        self,
        dsn: str,
        holder: IndexHolder,
        *,
        params: IndexParams | None = None,
        interval_seconds: float = 600.0,
        min_new_events: int = 1000,
    ) -> None:
        self.dsn = dsn
        self.holder = holder
        self.params = params or IndexParams()
        self.interval_seconds = interval_seconds
        self.min_new_events = min_new_events
        self.building = False
        self.last_error: str | None = None
        self._task: asyncio.Task[Any] | None = None

    @property
    def root(self) -> Path:
        return self.holder.root

    def request_build(self) -> bool:
        """Start a build in the background; False if one is already running here."""
        if self.building:
            return False
        self.building = True
        self._task = asyncio.create_task(self._build(), name="index-build")
        return True

    async def close(self, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Let a build in progress finish: its thread cannot be interrupted, and stopping
        half-way would only leave an unpublished folder behind."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout)

    async def build_now(self) -> dict[str, Any] | None:
        """Build and publish unless another process holds the build lock; swap it in here."""
        conn = await asyncpg.connect(self.dsn)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1), $2)", *_LOCK):
                log.info("another process is building the index")
                return None
            try:
                entry = await build_and_publish(self.dsn, self.root, self.params)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1), $2)", *_LOCK)
        finally:
            await conn.close()
        await self.holder.refresh()
        return entry

    async def _build(self) -> None:
        try:
            await self.build_now()
            self.last_error = None
        except Exception as exc:  # a failed build must not take the gateway down
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            log.exception("index build failed")
        finally:
            self.building = False

    async def new_events_since_index(self) -> int:
        """How far the affinity projection has moved past what the current index reflects."""
        current = self.holder.current
        built_at = int(current.manifest["position"]) if current is not None else 0
        conn = await asyncpg.connect(self.dsn)
        try:
            position = await conn.fetchval(
                "SELECT global_position FROM projections "
                "WHERE name = 'listeners' AND status = 'live'"
            )
        finally:
            await conn.close()
        return max(0, int(position or 0) - built_at)

    async def schedule(self) -> None:
        """Build when none exists, then every interval if enough new events arrived."""
        while True:
            with contextlib.suppress(Exception):
                await self.holder.refresh()
                new = await self.new_events_since_index()
                first = self.holder.current is None and new > 0
                # A damaged published index is repaired by the next build: make it soon.
                damaged = self.holder.error is not None
                if not self.building and (first or damaged or new >= self.min_new_events):
                    self.request_build()
            healthy = self.holder.current is not None and self.holder.error is None
            await asyncio.sleep(self.interval_seconds if healthy else 10.0)
