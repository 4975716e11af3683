"""`segue_analyst` reads the analytics views and the log, and nothing else; it cannot write or
create anything; its sessions get a statement timeout; and the migration copes with a role that
other databases of the same server already share."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from domain.rewards import DEFAULT
from gateway.store.database import migrate
from tests.integration.test_analytics import scenario

README = Path(__file__).resolve().parents[2] / "README.md"

ROLE = "segue_analyst"


def as_analyst(url: str) -> str:
    """The same database, logged in as the analyst (the test servers trust local logins)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{ROLE}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
async def analyst(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(as_analyst(db_url))
    try:
        yield conn
    finally:
        await conn.close()


READABLE = [
    "analytics.recommendations",
    "analytics.outcomes",
    "analytics.attributed_outcomes",
    "analytics.item_rewards_daily",
    "analytics.event_types",
    "analytics.reward_definition",
    "analytics.reward_weights",
    "events",
    "reward_definitions",
    "catalog_items",
    "projections",
]


async def test_the_analyst_reads_the_views_and_the_log(analyst: asyncpg.Connection) -> None:
    assert await analyst.fetchval("SELECT current_user") == ROLE
    for relation in READABLE:
        await analyst.fetch(f"SELECT * FROM {relation} LIMIT 1")
    assert await analyst.fetchval("SELECT count(*) FROM analytics.event_types") > 0


REFUSED = [
    # Secrets: raw listener ids and API keys, and the other side tables.
    "SELECT * FROM listeners",
    "SELECT * FROM api_keys",
    "COPY listeners TO STDOUT",
    "SELECT * FROM event_ids",
    "SELECT * FROM streams",
    # Writes to the log and to what the analytics schema holds.
    "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, "
    "payload) VALUES ('x', 1, gen_random_uuid(), 'ItemRetired', 1, '{}')",
    "UPDATE events SET metadata = '{}'",
    "DELETE FROM events",
    "TRUNCATE events",
    "INSERT INTO analytics.event_types VALUES ('X', 1, true, '', '{}')",
    "UPDATE analytics.event_types SET description = ''",
    "DELETE FROM analytics.event_types",
    "TRUNCATE analytics.event_types",
    "INSERT INTO reward_definitions (version, body) VALUES ('x', '{}')",
    "UPDATE reward_definitions SET body = '{}'",
    "DELETE FROM catalog_items",
    "UPDATE projections SET status = 'retired'",
    # Creating or changing anything.
    "CREATE TABLE public.mine (x int)",
    "CREATE TABLE analytics.mine (x int)",
    "CREATE VIEW analytics.mine AS SELECT 1",
    "CREATE SCHEMA mine",
    "DROP VIEW analytics.recommendations",
    "ALTER TABLE analytics.event_types ADD COLUMN x int",
    "CREATE INDEX ON events (event_type)",
    "COMMENT ON VIEW analytics.outcomes IS 'mine'",
]


async def test_the_analyst_cannot_write_create_or_read_secrets(
    analyst: asyncpg.Connection,
) -> None:
    allowed = []
    for statement in REFUSED:
        try:
            await analyst.execute(statement)
        except asyncpg.InsufficientPrivilegeError:
            continue
        allowed.append(statement)
    assert allowed == []


async def test_the_analyst_has_a_statement_timeout(db_url: str) -> None:
    conn = await asyncpg.connect(as_analyst(db_url))
    try:
        assert await conn.fetchval("SHOW statement_timeout") == "5min"
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10min"
    finally:
        await conn.close()
    # The role's settings apply at login; prove it with a shorter one for this database only
    # (which overrides the server-wide one the migration set), rather than waiting minutes.
    admin = await asyncpg.connect(db_url)
    try:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(
            f"ALTER ROLE {ROLE} IN DATABASE \"{database}\" SET statement_timeout = '200ms'"
        )
        conn = await asyncpg.connect(as_analyst(db_url))
        try:
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute("SELECT pg_sleep(5)")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'ALTER ROLE {ROLE} IN DATABASE "{database}" RESET ALL')
        await admin.close()


async def test_downgrade_keeps_the_shared_role_and_upgrade_reuses_it(db_url: str) -> None:
    await migrate(db_url, "0002", downgrade=True)
    admin = await asyncpg.connect(db_url)
    try:
        # The test run's template database still grants it: it must survive.
        assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", ROLE) == 1
        assert not await admin.fetchval("SELECT has_table_privilege($1, 'events', 'SELECT')", ROLE)
        assert await admin.fetchval("SELECT to_regnamespace('analytics')") is None
        assert not await admin.fetchval(
            "SELECT EXISTS (SELECT FROM pg_shdepend d JOIN pg_database db ON db.oid = d.dbid "
            "WHERE db.datname = current_database() AND d.refobjid = $1::regrole)",
            ROLE,
        )
    finally:
        await admin.close()
    # Upgrading again, with the role already there, is not an error and grants again.
    await migrate(db_url)
    conn = await asyncpg.connect(as_analyst(db_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM analytics.event_types") > 0
        await conn.fetch("SELECT * FROM events LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM listeners")
    finally:
        await conn.close()


def readme_examples() -> list[str]:
    """The SQL blocks of README's "Example queries"."""
    text = README.read_text()
    section = text.split("### Example queries", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)


async def test_the_readme_examples_run_as_the_analyst(
    pool: asyncpg.Pool, analyst: asyncpg.Connection
) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    async with pool.acquire() as conn:
        await scenario(conn, DEFAULT, base=today - timedelta(days=5))
    examples = readme_examples()
    assert len(examples) >= 3
    for sql in examples:
        rows = await analyst.fetch(sql)
        assert rows, f"no rows from:\n{sql}"
