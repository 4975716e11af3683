"""The projector: reads the log in commit order and applies it to each projection exactly once.

A runner owns one version of one projection. It holds a session-level advisory lock for that
version on its own connection, so exactly one runner applies batches; others wait, and take over
when the holder's connection goes away (a crash, a kill, a network cut). Each batch is loaded,
folded and written in one transaction that also advances the checkpoint: a batch is applied
entirely or not at all, and is never applied twice (at-least-once reading, exactly-once effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from domain.events import DomainEvent
from domain.rewards import DEFAULT, RewardDefinition
from domain.upcasting import decode
from gateway.backoff import Backoff
from gateway.metrics import LAG_EVENTS, LAG_SECONDS, PROJECTION_FAILED
from gateway.projections.definitions import PROJECTIONS, Projection, q
from gateway.store import reads
from gateway.store.api import START, Position
from gateway.store.database import UNAVAILABLE_ERRORS
from gateway.store.postgres import Connection, row_to_event

log = logging.getLogger(__name__)

# How often a runner pairs the clock with a fresh transaction id (each pairing uses one id).
SAMPLE_SECONDS = 0.5
_LOCK_NAMESPACE = 0x5E6E  # first key of the two-key advisory lock form, "segue projections"


@dataclass(frozen=True, slots=True)
class Version:
    name: str
    version: int
    schema: str
    definition: RewardDefinition
    status: str
    position: Position


class Retired(Exception):
    """The version this runner applies was swapped out by a rebuild."""


# The session ended or the server cannot take it now: reconnect and carry on from the checkpoint.
_SESSION_LOST = UNAVAILABLE_ERRORS


async def save_definition(conn: Connection, definition: RewardDefinition) -> None:
    """Store a definition; a version may not be reused for a different definition."""
    body = orjson.dumps(definition.to_json()).decode()
    existing = await conn.fetchval(
        "SELECT body::text FROM reward_definitions WHERE version = $1", definition.version
    )
    if existing is None:
        await conn.execute(
            "INSERT INTO reward_definitions (version, body) VALUES ($1, $2::jsonb) "
            "ON CONFLICT DO NOTHING",
            definition.version,
            body,
        )
    elif orjson.loads(existing) != definition.to_json():
        raise ValueError(
            f"reward definition {definition.version!r} exists with other contents; "
            "give the changed definition a new version"
        )


async def load_definition(conn: Connection, version: str) -> RewardDefinition:
    body = await conn.fetchval(
        "SELECT body::text FROM reward_definitions WHERE version = $1", version
    )
    if body is None:
        raise LookupError(f"no reward definition {version!r}")
    return RewardDefinition.from_json(orjson.loads(body))


def _version(row: asyncpg.Record, definition: RewardDefinition) -> Version:
    return Version(
        row["name"],
        row["version"],
        row["schema_name"],
        definition,
        row["status"],
        Position(int(row["tx_id"]), row["global_position"]),
    )


_SELECT = (
    "SELECT name, version, schema_name, definition_version, status, tx_id::text AS tx_id, "
    "global_position FROM projections"
)


async def live_version(conn: Connection, name: str) -> Version | None:
    row = await conn.fetchrow(f"{_SELECT} WHERE name = $1 AND status = 'live'", name)
    if row is None:
        return None
    return _version(row, await load_definition(conn, row["definition_version"]))


async def create_version(
    conn: Connection, projection: Projection, definition: RewardDefinition, status: str
) -> Version:
    """A new, empty version of `projection` in a schema of its own."""
    async with conn.transaction():
        await save_definition(conn, definition)
        number = await conn.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM projections WHERE name = $1",
            projection.name,
        )
        schema = f"proj_{projection.name}_v{number}"
        await conn.execute(f"CREATE SCHEMA {q(schema)}")
        for statement in projection.ddl(schema):
            await conn.execute(statement)
        row = await conn.fetchrow(
            "INSERT INTO projections (name, version, schema_name, definition_version, status) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING name, version, schema_name, status, "
            "tx_id::text AS tx_id, global_position",
            projection.name,
            number,
            schema,
            definition.version,
            status,
        )
    assert row is not None
    return _version(row, definition)


async def ensure_live(
    conn: Connection, projection: Projection, definition: RewardDefinition = DEFAULT
) -> Version:
    """The live version of `projection`, created empty (from position zero) if there is none."""
    for _ in range(3):
        current = await live_version(conn, projection.name)
        if current is not None:
            return current
        try:
            return await create_version(conn, projection, definition, "live")
        except (asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
            continue  # another process created it first
    raise RuntimeError(f"could not create a live version of {projection.name}")


def decode_batch(rows: list[asyncpg.Record]) -> list[tuple[datetime, DomainEvent]]:
    out = []
    for row in rows:
        e = row_to_event(row)
        out.append((e.recorded_at, decode(e.event_type, e.schema_version, e.payload)))
    return out


class Runner:
    """Applies one version of one projection. `run()` until cancelled; `wait_for` as a barrier."""

    def __init__(
        self,
        dsn: str,
        projection: Projection,
        *,
        version: int | None = None,
        batch_size: int = 2000,
        poll_seconds: float = 0.1,
        lock_poll_seconds: float = 0.5,
        retry_seconds: float = 0.2,
        on_batch: Callable[[Runner, int], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.projection = projection
        self._pinned_version = version
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.lock_poll_seconds = lock_poll_seconds
        self.retry_seconds = retry_seconds
        self._backoff = Backoff(initial=retry_seconds)
        # A fold that raised: retried with backoff (never skipped), one event at a time so that
        # the position reported is the event's own, until that event is applied.
        self._failure_backoff = Backoff(initial=retry_seconds, maximum=30.0)
        self.failure: str | None = None
        self.failed_position: int | None = None
        self._attempt: int | None = None  # first position of the batch being applied
        self._attempt_size = 0
        self._attempt_end = START  # where the batch being applied ends, in reading order
        # A batch failed: apply one event at a time to find which (not yet reported), up to the
        # end of that batch only. Going on one at a time until caught up would never end under
        # steady appends: a runner applying one event per transaction falls further behind.
        self._narrowing = False
        self._narrow_until = START
        self.on_batch = on_batch
        self.position = START
        self.version: Version | None = None
        self.active = False  # holds the lock and applies batches
        self.caught_up = False
        self.settled_through: datetime | None = None
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was appended: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self._run_once()
            except Retired:
                if self._pinned_version is not None:
                    return
                log.info("%s: version retired, switching to the live one", self.projection.name)
            except _SESSION_LOST as exc:
                self.active = False
                wait = self._backoff.next()
                log.warning(
                    "%s: database unavailable (%r); retrying in %.1f s",
                    self.projection.name,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
            except Exception as exc:  # a fold that raised: stop at the event, report, retry
                self.active = False
                await self._failed(exc)

    async def _failed(self, exc: Exception) -> None:
        if self._attempt_size > 1:
            # Which of the batch's events? Find out at once, one at a time, before saying.
            self._narrowing = True
            self._narrow_until = self._attempt_end
            log.info(
                "%s: a batch failed (%r); applying one event at a time", self.projection.name, exc
            )
            return
        position = self._attempt
        first = self.failure is None or position != self.failed_position
        self.failure = f"{exc.__class__.__name__}: {exc}"[:2000]
        self.failed_position = position
        PROJECTION_FAILED.labels(self.projection.name).set(1)
        wait = self._failure_backoff.next()
        if first:
            log.exception(
                "%s: cannot apply the event at position %s; retrying in %.1f s (it is never "
                "skipped)",
                self.projection.name,
                position,
                wait,
            )
        else:
            log.warning("%s: still failing at %s: %s", self.projection.name, position, exc)
        with contextlib.suppress(Exception):  # an outage here is reported by the next attempt
            await record_failure(self.dsn, self.projection.name, self.failure, position)
        await asyncio.sleep(wait)

    async def _recovered(self, conn: Connection, version: Version) -> None:
        log.info("%s: applied the event it was stopped at; going on", self.projection.name)
        self.failure = self.failed_position = None
        # Full batches again: if another event of the batch that failed fails too, its batch
        # fails and is narrowed down anew.
        self._narrowing = False
        self._failure_backoff.reset()
        PROJECTION_FAILED.labels(self.projection.name).set(0)
        await conn.execute(
            "UPDATE projections SET failure = NULL, failed_position = NULL, failed_at = NULL "
            "WHERE name = $1 AND version = $2",
            version.name,
            version.version,
        )

    async def _resolve(self, conn: Connection) -> Version:
        if self._pinned_version is None:
            return await ensure_live(conn, self.projection)
        row = await conn.fetchrow(
            f"{_SELECT} WHERE name = $1 AND version = $2",
            self.projection.name,
            self._pinned_version,
        )
        if row is None:
            raise LookupError(f"no version {self._pinned_version} of {self.projection.name}")
        return _version(row, await load_definition(conn, row["definition_version"]))

    async def _run_once(self) -> None:
        conn: Connection = await asyncpg.connect(
            self.dsn,
            server_settings={"application_name": f"segue-projector-{self.projection.name}"},
        )
        try:
            version = await self._resolve(conn)
            # hashtext, not Python's hash: every process must compute the same key.
            while not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                _LOCK_NAMESPACE,
                f"{version.name}:{version.version}",
            ):
                self.active = False
                await asyncio.sleep(self.lock_poll_seconds)
            # The lock is ours until this connection ends; re-read where the last holder left off.
            version = await self._resolve(conn)
            if version.status == "retired":
                raise Retired()
            await self.projection.prepare(conn, version.schema)
            self.version = version
            self.active = True
            self._backoff.reset()
            await self._set_position(version.position)
            # (t, x) pairs: every event recorded before t is in a transaction below x.
            samples: deque[tuple[datetime, int]] = deque()
            sampled = -SAMPLE_SECONDS
            while True:
                one = self.failure is not None or self._narrowing
                if time.monotonic() - sampled >= SAMPLE_SECONDS:
                    samples.append(await reads.clock_and_next_xid(conn))
                    sampled = time.monotonic()
                horizon = await reads.oldest_open_xid(conn)
                limit = 1 if one else self.batch_size
                rows = await reads.read_after(conn, self.position, limit, below=horizon)
                # Fewer than asked: caught up to the horizon (once these rows are applied).
                # Else every transaction before the last row's is applied in full.
                applied_below = horizon if len(rows) < limit else int(rows[-1][1])
                if not rows:
                    await self._settle(conn, version, samples, applied_below)
                    self._narrowing = False  # caught up: whatever failed has passed
                    self.caught_up = True
                    await self._idle()
                    continue
                self.caught_up = False
                self._attempt, self._attempt_size = rows[0][0], len(rows)
                self._attempt_end = Position(int(rows[-1][1]), rows[-1][0])
                await self._apply(conn, version, rows)
                if self._narrowing and self.position >= self._narrow_until:
                    self._narrowing = False  # every event of the batch that failed applied
                await self._settle(conn, version, samples, applied_below)
                if self.failure is not None and (
                    self.failed_position is None or rows[-1][0] >= self.failed_position
                ):
                    await self._recovered(conn, version)
        finally:
            self.active = False
            with contextlib.suppress(Exception):
                await conn.close()

    async def _settle(
        self,
        conn: Connection,
        version: Version,
        samples: deque[tuple[datetime, int]],
        applied_below: int,
    ) -> None:
        """Every event of a transaction below `applied_below` is applied: so is every event
        recorded before the latest sampled t whose x is at most that. Record the instant, for
        `?as_of=` and `projected_through` (docs/decisions.md §83)."""
        chosen: datetime | None = None
        while samples and samples[0][1] <= applied_below:
            chosen = samples.popleft()[0]
        if chosen is None or (self.settled_through is not None and chosen <= self.settled_through):
            return
        async with self._changed:
            self.settled_through = chosen
            self._changed.notify_all()
        await conn.execute(
            "UPDATE projections SET settled_through = $3 WHERE name = $1 AND version = $2",
            version.name,
            version.version,
            chosen,
        )

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _apply(self, conn: Connection, version: Version, rows: list[asyncpg.Record]) -> None:
        batch = decode_batch(rows)
        last = rows[-1]
        new = Position(int(last[1]), last[0])
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, tx_id::text, global_position FROM projections "
                "WHERE name = $1 AND version = $2 FOR UPDATE",
                version.name,
                version.version,
            )
            if row is None or row["status"] == "retired":
                raise Retired()
            stored = Position(int(row[1]), row[2])
            if stored != self.position:
                # Never expected while the lock is held; refuse rather than double-apply.
                raise RuntimeError(f"checkpoint moved under {version.name}: {stored}")
            await self.projection.apply(conn, version.schema, batch, version.definition)
            await conn.execute(
                "UPDATE projections SET tx_id = $3::text::xid8, global_position = $4, "
                "last_recorded_at = $5, events_applied = events_applied + $6, "
                "updated_at = now() WHERE name = $1 AND version = $2",
                version.name,
                version.version,
                str(new.tx_id),
                new.global_position,
                last[2],
                len(rows),
            )
        await self._set_position(new)
        if self.on_batch is not None:
            self.on_batch(self, len(rows))

    async def _set_position(self, position: Position) -> None:
        async with self._changed:
            self.position = position
            self._changed.notify_all()

    async def wait_settled(self, instant: datetime, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Return once every event recorded up to `instant` is applied (`settled_through`
        past it)."""

        def past() -> bool:
            return self.settled_through is not None and self.settled_through > instant

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(past)

    async def wait_for(self, position: Position, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Return once every event up to `position` (in commit order) has been applied."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.position >= position)


async def head(conn: Connection | asyncpg.Pool) -> Position:
    """The position of the last event every reader may already see."""
    return await reads.head(conn)


async def position_of(conn: Connection | asyncpg.Pool, global_position: int) -> Position:
    """The reader position of one stored event (e.g. from an append's result)."""
    return await reads.position_of(conn, global_position)


@dataclass(frozen=True, slots=True)
class Status:
    name: str
    version: int
    status: str  # building, live, or failed (a live or building one stopped at an event)
    definition_version: str
    position: Position
    events_applied: int
    lag_events: int
    lag_seconds: float
    error: str | None = None
    failed_position: int | None = None


async def record_failure(dsn: str, name: str, error: str, position: int | None) -> None:
    """Mark the projection's applying versions as stopped (for every process to see)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE projections SET failure = $2, failed_position = $3, failed_at = now() "
            "WHERE name = $1 AND status <> 'retired'",
            name,
            error,
            position,
        )
    finally:
        await conn.close()


async def failed(conn: Connection | asyncpg.Pool) -> list[tuple[str, str, int | None]]:
    """(name, error, position) of every projection stopped at an event: a cheap read for
    readiness checks."""
    rows = await conn.fetch(
        "SELECT name, failure, failed_position FROM projections "
        "WHERE failure IS NOT NULL AND status <> 'retired' ORDER BY name"
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def status(
    conn: Connection | asyncpg.Pool, *, lag_timeout: float | None = None
) -> list[Status]:
    """Every live or building projection version with its lag behind the log. Counting the lag
    reads up to ten million rows; `lag_timeout` bounds that statement instead of the
    connection's own `command_timeout` (None: the connection's)."""
    rows = await conn.fetch(
        "SELECT name, version, status, definition_version, tx_id::text AS tx_id, "
        "global_position, events_applied, failure, failed_position FROM projections "
        "WHERE status <> 'retired' ORDER BY name, version"
    )
    out = []
    for r in rows:
        position = Position(int(r["tx_id"]), r["global_position"])
        lag_events, lag_seconds = await reads.behind(conn, position, timeout=lag_timeout)
        out.append(
            Status(
                r["name"],
                r["version"],
                "failed" if r["failure"] is not None else r["status"],
                r["definition_version"],
                position,
                r["events_applied"],
                lag_events,
                lag_seconds,
                r["failure"],
                r["failed_position"],
            )
        )
    return out


class RebuildRunning(Exception):
    """Another rebuild of the projection holds its rebuild lock (in any process)."""


async def rebuild(
    dsn: str,
    projection: Projection,
    definition: RewardDefinition,
    progress: Callable[[Position, Position, int], None] | None = None,
) -> Version:
    """Fill a new version from position zero while the live one keeps serving, then swap.

    The new version catches up with the log's head, then one transaction retires the live
    version and makes the new one live; a runner of the old version notices at its next batch
    and moves on to the new one from the new one's checkpoint, so nothing is applied twice.

    One rebuild of a projection at a time, cluster-wide (`RebuildRunning` otherwise): two would
    each fill a version, and the second swap would throw the first one's work away. A rebuild
    that stops before its swap (cancelled, or its connection lost) retires the version it was
    filling, so no half-filled `building` version is left listed.
    """
    conn: Connection = await asyncpg.connect(dsn)
    try:
        # Held by this session until it ends: a crashed rebuild frees it with its connection.
        if not await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            _LOCK_NAMESPACE,
            f"rebuild:{projection.name}",
        ):
            raise RebuildRunning(f"a rebuild of {projection.name} is already running")
        new = await create_version(conn, projection, definition, "building")
        try:
            old = await _fill_and_swap(conn, dsn, projection, new, progress)
        except BaseException:
            await _abandon(dsn, new)
            raise
        if old is not None:
            # Derived data only; the log still holds everything it was made from.
            await conn.execute(f"DROP SCHEMA IF EXISTS {q(old)} CASCADE")
        swapped = await live_version(conn, projection.name)
        assert swapped is not None
        return swapped
    finally:
        await conn.close()


async def _fill_and_swap(
    conn: Connection,
    dsn: str,
    projection: Projection,
    new: Version,
    progress: Callable[[Position, Position, int], None] | None,
) -> str | None:
    """Catch `new` up with the log and make it live; returns the retired version's schema."""
    runner = Runner(dsn, projection, version=new.version, poll_seconds=0.05)
    task = asyncio.create_task(runner.run(), name=f"rebuild-{projection.name}")
    try:
        while True:
            target = await head(conn)
            while runner.position < target:
                if task.done():
                    task.result()  # surfaces the runner's failure
                with contextlib.suppress(TimeoutError):
                    await runner.wait_for(target, timeout=0.5)
                if progress is not None:
                    progress(runner.position, target, new.version)
            # Swap once a fresh look at the head finds nothing more to catch up on.
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM projections WHERE name = $1 FOR UPDATE", projection.name
                )
                if await head(conn) > runner.position:
                    continue
                old: str | None = await conn.fetchval(
                    "UPDATE projections SET status = 'retired', updated_at = now() "
                    "WHERE name = $1 AND status = 'live' RETURNING schema_name",
                    projection.name,
                )
                await conn.execute(
                    "UPDATE projections SET status = 'live', updated_at = now() "
                    "WHERE name = $1 AND version = $2",
                    projection.name,
                    new.version,
                )
            return old
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _abandon(dsn: str, version: Version) -> None:
    """Retire a version a rebuild stopped filling and drop its tables, on a connection of its
    own (the rebuild's may be the thing that failed). Shielded: it runs while the rebuild is
    being cancelled. If the database is away too, the version stays listed as building."""

    async def drop() -> None:
        conn: Connection = await asyncpg.connect(dsn, timeout=5)
        try:
            retired = await conn.fetchval(
                "UPDATE projections SET status = 'retired', updated_at = now() "
                "WHERE name = $1 AND version = $2 AND status = 'building' RETURNING schema_name",
                version.name,
                version.version,
            )
            if retired is not None:
                await conn.execute(f"DROP SCHEMA IF EXISTS {q(retired)} CASCADE")
        finally:
            await conn.close()

    try:
        await asyncio.shield(drop())
    except Exception as exc:
        log.warning("could not retire the abandoned %s v%s: %r", version.name, version.version, exc)


def all_projections() -> list[Projection]:
    return list(PROJECTIONS.values())


def publish_lag(rows: Iterable[Status]) -> None:
    for r in rows:
        if r.status != "building":  # live, or live and stopped at an event
            LAG_EVENTS.labels(r.name).set(r.lag_events)
            LAG_SECONDS.labels(r.name).set(r.lag_seconds)
            PROJECTION_FAILED.labels(r.name).set(1 if r.error is not None else 0)
