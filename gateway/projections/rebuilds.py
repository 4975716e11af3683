"""Projection rebuilds started by this process (the admin API's button), in the background.

A rebuild is `runner.rebuild`, what `segue rebuild` runs: it fills a new version from position
zero while the live one keeps serving, then swaps. Nothing in it needs a process of its own:
it works on connections of its own, and its lock makes it the only rebuild of that projection
in the cluster. Run here it shares this process's event loop with requests, one batch fold at a
time, as the projectors of single-node mode already do. It can take as long as the log is, so
it never runs inside a request: `start` returns at once, and progress is read from the job (this
process) and from the projections table, where the new version is listed as `building` with its
lag (every process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from domain.rewards import DEFAULT
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.runner import RebuildRunning, live_version, rebuild
from gateway.store.api import Position

log = logging.getLogger(__name__)

State = Literal["running", "done", "failed"]


@dataclass(slots=True)
class RebuildJob:
    projection: str
    started_at: datetime
    state: State = "running"
    definition_version: str | None = None  # the live version's, once read
    version: int | None = None  # the version being filled (live once done)
    position: int = 0  # global_position of the last event applied to it
    target: int = 0  # the log's head when last looked
    finished_at: datetime | None = None
    error: str | None = None


class Rebuilds:
    """At most one job per projection here; a second `start` while it runs returns it."""

    def __init__(self, dsn: str, clock: Callable[[], datetime]) -> None:
        self._dsn = dsn
        self._clock = clock
        self._jobs: dict[str, RebuildJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def jobs(self) -> list[RebuildJob]:
        """The latest job of each projection started here, by name."""
        return [self._jobs[name] for name in sorted(self._jobs)]

    def start(self, projection: str) -> RebuildJob:
        """Start rebuilding `projection` (a name of `PROJECTIONS`) under its live reward
        definition, unless this process is already rebuilding it."""
        if projection not in PROJECTIONS:
            raise KeyError(projection)
        current = self._jobs.get(projection)
        if current is not None and current.state == "running":
            return current
        job = RebuildJob(projection, started_at=self._clock())
        self._jobs[projection] = job
        task = asyncio.create_task(self._run(job), name=f"rebuild-{projection}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: RebuildJob) -> None:
        def progress(position: Position, head: Position, version: int) -> None:
            job.position, job.target, job.version = (
                position.global_position,
                head.global_position,
                version,
            )

        try:
            conn = await asyncpg.connect(self._dsn)
            try:
                live = await live_version(conn, job.projection)
            finally:
                await conn.close()
            definition = live.definition if live is not None else DEFAULT
            job.definition_version = definition.version
            log.info("rebuilding %s under %s (admin API)", job.projection, definition.version)
            new = await rebuild(self._dsn, PROJECTIONS[job.projection], definition, progress)
            job.version = new.version
            job.position = job.target = new.position.global_position
            job.state = "done"
            log.info("%s v%s is live (admin API rebuild)", job.projection, new.version)
        except RebuildRunning as exc:
            job.state, job.error = "failed", str(exc)
            log.warning("%s", exc)
        except asyncio.CancelledError:
            job.state, job.error = "failed", "stopped: the gateway shut down"
            raise
        except Exception as exc:  # reported in the status JSON; the gateway carries on
            job.state, job.error = "failed", f"{exc.__class__.__name__}: {exc}"
            log.exception("rebuilding %s failed", job.projection)
        finally:
            job.finished_at = self._clock()

    async def close(self) -> None:
        """Stop the rebuilds still running (each retires the version it was filling): one
        may need hours, and the next start of a gateway can be asked again."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
