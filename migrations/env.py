"""Alembic environment: async engine, target metadata from gateway.store.tables.

A caller may hand over an open connection in `config.attributes["connection"]` (the tests and
`segue db` do), otherwise the URL comes from SEGUE_DATABASE_URL or the embedded server.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store.tables import metadata

config = context.config
target_metadata = metadata


def _do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async_migrations(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_do_run_migrations)
    await engine.dispose()


def run_migrations_offline() -> None:
    # `segue db upgrade --sql`: the SQL is written for review without a server, so only the
    # dialect is needed, not a URL.
    context.configure(
        dialect_name="postgresql",
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _do_run_migrations(connection)
        return
    from gateway.store.database import configured_url

    asyncio.run(_run_async_migrations(configured_url(sqlalchemy=True)))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
