"""Connections: which database, the asyncpg pool, and Alembic run from code."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay

from gateway.backoff import jittered
from gateway.settings import Settings, asyncpg_dsn, sqlalchemy_url

# The embedded server handle must outlive every pool that uses it; pgserver stops the server
# when the last handle is released at exit.
_embedded: dict[Path, Any] = {}

log = logging.getLogger(__name__)

T = TypeVar("T")

# Everything that means "the database cannot be reached or cannot serve right now", as asyncpg
# reports it depending on what a connection was doing when the server went away: OSError (refused,
# reset, no socket; TimeoutError is one), class 08 on connecting, InterfaceError (and
# InternalClientError) on the next use of a connection whose server ended it while it was idle,
# class 57 (admin shutdown, crash shutdown, "cannot connect now" while starting or recovering,
# a cancelled statement) in the middle of a query, class 53 (too many connections, out of
# memory, disk full). A statement that outlives the pool's `command_timeout` (a server that
# accepts but does not answer: stopped, or behind a network black hole) raises TimeoutError,
# an OSError. Requests meeting one answer 503 and may be retried; background tasks reconnect
# with backoff.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc`, or an error it wraps (SQLAlchemy keeps asyncpg's as `orig` and as the
    cause), means the database cannot be reached right now."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UNAVAILABLE_ERRORS):
            return True
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]
    return False


class DatabaseUnreachable(Exception):
    """The database stayed out of reach for the whole start-up wait."""


async def wait_for_database(
    what: str, attempt: Callable[[], Awaitable[T]], wait_seconds: float
) -> T:
    """`attempt()`, retried while the database is unreachable (a container still starting, a
    failover) with bounded, jittered exponential waits, each logged at WARNING with its reason,
    for up to `wait_seconds` in all (0: one attempt). Other errors propagate at once; running out
    of time raises `DatabaseUnreachable` naming the last reason."""
    started = time.monotonic()
    backoff = jittered(0.2, 5.0)

    def wait(state: RetryCallState) -> float:
        # The last wait is cut short so that the last attempt comes at the limit, not after it.
        return max(0.0, min(backoff(state), wait_seconds - (time.monotonic() - started)))

    def waiting(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: the database is unreachable (%s); retrying in %.1f s (%.0f of %.0f s waited)",
            what,
            _reason(exc),
            state.upcoming_sleep,
            time.monotonic() - started,
            wait_seconds,
        )

    try:
        async for retry in AsyncRetrying(
            retry=retry_if_exception(unavailable),
            wait=wait,
            stop=stop_after_delay(wait_seconds),
            before_sleep=waiting,
            reraise=True,
        ):
            with retry:
                return await attempt()
    except Exception as exc:
        if not unavailable(exc):
            raise
        raise DatabaseUnreachable(
            f"the database was unreachable for {time.monotonic() - started:.1f} s "
            f"(SEGUE_STARTUP_WAIT_SECONDS={wait_seconds:g}); last error: {_reason(exc)}"
        ) from exc
    raise AssertionError("unreachable: tenacity either returns or raises")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def resolve_url(settings: Settings, *, start_embedded: bool = True) -> str:
    """SEGUE_DATABASE_URL if set; otherwise the embedded server, started on first use."""
    if settings.database_url:
        return asyncpg_dsn(settings.database_url)
    if not start_embedded:
        raise RuntimeError("SEGUE_DATABASE_URL is not set and the embedded server is not running")
    from gateway.store.embedded import start_embedded as start

    key = settings.data_dir.resolve()
    if key not in _embedded:
        url, handle = start(settings.data_dir)
        _embedded[key] = (url, handle)
    return str(_embedded[key][0])


def configured_url(*, sqlalchemy: bool = False, start_embedded: bool = True) -> str:
    url = resolve_url(Settings(), start_embedded=start_embedded)
    return sqlalchemy_url(url) if sqlalchemy else url


CONNECT_TIMEOUT_SECONDS = 5.0


class BoundedPool(asyncpg.Pool):
    """asyncpg's pool, with a bound on getting a connection when the caller gives none.

    asyncpg waits without end for a free connection, and its `fetch`, `execute` and friends
    never pass a bound: with the server stalled, every connection is held by a request waiting
    out its statement or a reconnect, and the requests behind them queue one round after
    another (a blend was answered after 10 s with statements bounded at 1 s). Here waiting for
    a connection, and making one, shares the statement bound; the same bound then applies to
    the reset on its release (asyncpg's default is none). So a request that meets a stalled
    database answers 503 in a few statement bounds, however many are waiting."""

    def __init__(self, *args: Any, acquire_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self._acquire_timeout if timeout is None else timeout)


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, command_timeout: float | None = None
) -> asyncpg.Pool:
    """The app's pool. Idle-in-transaction sessions are cut off: one open writer would otherwise
    hold back every reader of the log (they wait for the oldest running transaction).

    Connecting gives up after a few seconds (asyncpg waits a minute by default), so that a
    request meeting an unreachable server, which the pool tries to reconnect to, answers 503
    in bounded time rather than hang. `command_timeout` bounds every statement (None: no bound,
    for batch work such as `segue evaluate`); a statement may ask for more with `timeout=`.
    It bounds waiting for a connection too (`BoundedPool`)."""
    pool = BoundedPool(
        dsn,
        acquire_timeout=command_timeout,
        # asyncpg.create_pool's defaults, which its constructor does not supply.
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=CONNECT_TIMEOUT_SECONDS,
        command_timeout=command_timeout,
        server_settings={
            "application_name": "segue",
            "idle_in_transaction_session_timeout": "15000",
            # The gateway's statements are short; JIT compiling one whose estimate is large
            # (a read of recent rows of a big table, before its statistics are current) cost
            # ~20 ms where the statement itself took 0.1 ms.
            "jit": "off",
        },
    )
    await pool
    return pool


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url))
    return cfg


async def migrate(url: str, revision: str = "head", *, downgrade: bool = False) -> None:
    """Run Alembic against `url` on an explicit connection (what `segue db` and the tests use)."""
    from alembic import command
    from sqlalchemy import pool
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import create_async_engine

    cfg = alembic_config()

    def run(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        if downgrade:
            command.downgrade(cfg, revision)
        else:
            command.upgrade(cfg, revision)

    # Connecting is bounded, so that a server that accepts but does not answer is retried by
    # the start-up wait rather than hang it; statements are not: a migration may be long.
    engine = create_async_engine(
        sqlalchemy_url(url),
        poolclass=pool.NullPool,
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
    )
    try:
        async with engine.begin() as connection:
            # Several gateways starting together each migrate: one at a time, and the later
            # ones find the schema at head and do nothing (held until this transaction ends).
            await connection.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtext('segue.migrations'))"
            )
            await connection.run_sync(run)
    finally:
        await engine.dispose()


def migration_sql(start: str, end: str) -> str:
    """The SQL that upgrading from revision `start` to `end` runs, as Alembic's offline mode
    writes it (nothing is connected to or changed)."""
    import io

    from alembic import command

    out = io.StringIO()
    cfg = alembic_config()
    cfg.output_buffer = out
    command.upgrade(cfg, f"{start}:{end}", sql=True)
    return out.getvalue()


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return str(head)


async def current_revision(url: str) -> str | None:
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        if not exists:
            return None
        value = await conn.fetchval("SELECT version_num FROM alembic_version")
        return str(value) if value is not None else None
    finally:
        await conn.close()


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip to the server: raises if it cannot be reached."""
    await pool.fetchval("SELECT 1")


class LogFromTheFuture(Exception):
    """The log holds events of transactions this server has not reached yet."""


async def check_log_order(dsn: str) -> None:
    """Refuse a database whose log was moved in a way that breaks its order.

    Readers order the log by the writing transaction's id (`xid8`) and read only below the
    oldest running transaction. A logical dump and restore, or logical replication, into a
    younger cluster keeps the ids the events were written with, above the new server's own:
    every reader would then see none of that history, and new events would sort before it.
    Physical backups, streaming replicas and `pg_upgrade` keep the server's transaction
    counter, and are safe (deploy/README.md)."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT max(tx_id) FROM events)::text, "
            "pg_snapshot_xmax(pg_current_snapshot())::text"
        )
    finally:
        await conn.close()
    assert row is not None
    newest, next_id = row[0], int(row[1])
    if newest is not None and int(newest) >= next_id:
        raise LogFromTheFuture(
            f"the event log holds events of transaction {int(newest):,}, but this server has "
            f"only reached {next_id:,}: the database was restored or replicated logically into "
            "another cluster, and readers would see none of its history. Move the log with "
            "`segue export` and `segue import` (which number it anew) into a fresh database, or "
            "restore a physical backup (deploy/README.md)"
        )
