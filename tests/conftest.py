"""Shared fixtures: a real PostgreSQL for every storage test.

`SEGUE_TEST_DATABASE_URL` names a server to use (its database is only used to connect); without
it an embedded server is started in a temporary folder. Either way this run creates its own
databases: one migrated template, then one fresh copy per test that asks for `db_url`, so tests
never see each other's data, and drops them all at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gateway.store.database import create_pool, migrate
from gateway.store.postgres import PostgresEventStore

RUN_ID = secrets.token_hex(4)


@contextmanager
def unhandled_loop_errors_fail() -> Iterator[None]:
    """Fail if the running loop saw an exception nobody handled (a flusher, a handler)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
    finally:
        loop.set_exception_handler(previous)
    assert not seen, f"unhandled errors in the event loop: {seen}"


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    """Every test fails if its event loop saw an exception nobody handled. Modules that share
    one loop across tests override this with a fixture of the same name and scope."""
    with unhandled_loop_errors_fail():
        yield


_counter = itertools.count()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("SEGUE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from gateway.store.embedded import start_embedded

    folder = Path(tempfile.mkdtemp(prefix="segue-test-pg-"))
    url, server = start_embedded(folder)
    try:
        yield url
    finally:
        server.cleanup()


async def _admin(server_url: str, *sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    name = f"segue_t{RUN_ID}_template"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = _with_database(server_url, name)
    asyncio.run(migrate(url))
    try:
        yield url
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@asynccontextmanager
async def fresh_database(server_url: str, template_url: str | None) -> AsyncIterator[str]:
    """A new database on the test server: a copy of the migrated template, or empty."""
    name = f"segue_t{RUN_ID}_{next(_counter)}"
    template = f' TEMPLATE "{urlsplit(template_url).path.lstrip("/")}"' if template_url else ""
    await _admin(server_url, f'CREATE DATABASE "{name}"{template}')
    try:
        yield _with_database(server_url, name)
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    """A freshly migrated database of this test's own."""
    async with fresh_database(server_url, template_url) as url:
        yield url


@pytest.fixture
async def empty_db_url(server_url: str) -> AsyncIterator[str]:
    """A database with no schema at all, for migration tests."""
    async with fresh_database(server_url, None) as url:
        yield url


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection to this test's database."""
    c = await asyncpg.connect(db_url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, min_size=1, max_size=20)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def pg_store(pool: asyncpg.Pool) -> AsyncIterator[PostgresEventStore]:
    store = PostgresEventStore(pool)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def other_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A second pool, so that two stores write in separate sessions and transactions."""
    p = await create_pool(db_url, min_size=1, max_size=5)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def other_store(other_pool: asyncpg.Pool) -> AsyncIterator[PostgresEventStore]:
    """A second store on the second pool: another process's writes, as far as the first knows."""
    store = PostgresEventStore(other_pool)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
