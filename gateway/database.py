"""Connections: which database, the asyncpg pool, and Alembic run from code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from gateway.settings import Settings, asyncpg_dsn, sqlalchemy_url

# The embedded server handle must outlive every pool that uses it; pgserver stops the server
# when the last handle is released at exit.
_embedded: dict[Path, Any] = {}

# Everything that means "the database cannot be reached or cannot serve right now", as asyncpg
# reports it depending on what a connection was doing when the server went away: OSError (refused,
# reset, no socket; TimeoutError is one), class 08 on connecting, InterfaceError (and
# InternalClientError) on the next use of a connection whose server ended it while it was idle,
# class 57 (admin shutdown, crash shutdown, "cannot connect now" while starting or recovering,
# a cancelled statement) in the middle of a query, class 53 (too many connections, out of
# memory, disk full). Requests meeting one answer 503 and may be retried; background tasks
# reconnect with backoff.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def resolve_url(settings: Settings, *, start_embedded: bool = True) -> str:
    """SEGUE_DATABASE_URL if set; otherwise the embedded server, started on first use."""
    if settings.database_url:
        return asyncpg_dsn(settings.database_url)
    if not start_embedded:
        raise RuntimeError("SEGUE_DATABASE_URL is not set and the embedded server is not running")
    from gateway.embedded import start_embedded as start

    key = settings.data_dir.resolve()
    if key not in _embedded:
        url, handle = start(settings.data_dir)
        _embedded[key] = (url, handle)
    return str(_embedded[key][0])


def configured_url(*, sqlalchemy: bool = False, start_embedded: bool = True) -> str:
    url = resolve_url(Settings(), start_embedded=start_embedded)
    return sqlalchemy_url(url) if sqlalchemy else url


CONNECT_TIMEOUT_SECONDS = 5.0


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """The app's pool. Idle-in-transaction sessions are cut off: one open writer would otherwise
    hold back every reader of the log (they wait for the oldest running transaction).

    Connecting gives up after a few seconds (asyncpg waits a minute by default), so that a
    request meeting an unreachable server, which the pool tries to reconnect to, answers 503
    in bounded time rather than hang."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=CONNECT_TIMEOUT_SECONDS,
        server_settings={
            "application_name": "segue",
            "idle_in_transaction_session_timeout": "15000",
        },
    )
    assert pool is not None
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

    engine = create_async_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


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
