"""Every migration goes up, down and up again; the migrated schema matches
gateway.store.tables; plain `alembic` and `segue db` both work against SEGUE_DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.settings import sqlalchemy_url
from gateway.store.database import alembic_config, current_revision, head_revision, migrate
from gateway.store.tables import metadata

ROOT = Path(__file__).resolve().parents[2]


def revisions_in_order() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        )
        return {r[0] for r in rows}
    finally:
        await conn.close()


async def test_each_revision_up_down_up(empty_db_url: str) -> None:
    revs = revisions_in_order()
    assert revs[0] == "0001"
    seen: list[set[str]] = [await tables(empty_db_url)]
    for rev in revs:
        await migrate(empty_db_url, rev)
        assert await current_revision(empty_db_url) == rev
        seen.append(await tables(empty_db_url))
    for i, rev in reversed(list(enumerate(revs))):
        target = revs[i - 1] if i > 0 else "base"
        await migrate(empty_db_url, target, downgrade=True)
        # Going down a revision leaves exactly the tables that were there before it.
        assert await tables(empty_db_url) == seen[i], f"downgrade of {rev}"
    assert await current_revision(empty_db_url) is None
    await migrate(empty_db_url)
    assert await current_revision(empty_db_url) == revs[-1]
    assert await tables(empty_db_url) == seen[-1]


async def test_migrated_schema_matches_the_table_definitions(db_url: str) -> None:
    def diff(connection: Connection) -> list[Any]:
        ctx = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    engine = create_async_engine(sqlalchemy_url(db_url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []


def _run(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGUE_DATABASE_URL": url}
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_plain_alembic_and_segue_db(empty_db_url: str) -> None:
    alembic = [sys.executable, "-m", "alembic"]
    segue = [sys.executable, "-m", "gateway.cli"]
    r = _run([*alembic, "upgrade", "head"], empty_db_url)
    assert r.returncode == 0, r.stderr
    r = _run([*segue, "db", "current"], empty_db_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == revisions_in_order()[-1]
    r = _run([*segue, "db", "downgrade", "base"], empty_db_url)
    assert r.returncode == 0, r.stderr
    r = _run([*segue, "db", "current"], empty_db_url)
    assert r.stdout.strip() == "none (not migrated)"
    r = _run([*segue, "db", "upgrade"], empty_db_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"at revision {revisions_in_order()[-1]}"


async def test_gateways_starting_together_migrate_one_at_a_time(empty_db_url: str) -> None:
    """Every `segue serve` migrates before it starts; N pods starting together used to race
    (and hang) on the same DDL. They now take turns, and the later ones find nothing to do."""
    results = await asyncio.wait_for(
        asyncio.gather(*(migrate(empty_db_url) for _ in range(4)), return_exceptions=True), 120
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await current_revision(empty_db_url) == head_revision()


async def schema_of(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a migration leaves in the public schema, as the catalogue lists it."""
    queries = {
        "columns": "SELECT table_name, column_name, data_type, column_default, is_nullable "
        "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "ORDER BY 1",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
        "functions": "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
        "WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
        "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
        "WHERE NOT tgisinternal ORDER BY 1, 2",
        "revision": "SELECT version_num FROM alembic_version",
    }
    conn = await asyncpg.connect(url)
    try:
        return {k: [tuple(r) for r in await conn.fetch(q)] for k, q in queries.items()}
    finally:
        await conn.close()


def upgrade_sql(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "db", "upgrade", "--sql"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


async def test_upgrade_sql_builds_the_same_schema_as_upgrading(
    empty_db_url: str, db_url: str
) -> None:
    """`segue db upgrade --sql` prints SQL that, run by hand (psql would do the same), leaves
    exactly the schema an online upgrade leaves; and it changes nothing by itself."""
    env = {**os.environ, "SEGUE_DATABASE_URL": empty_db_url}
    printed = await asyncio.to_thread(upgrade_sql, env)
    assert "CREATE TABLE events" in printed.stdout
    assert await current_revision(empty_db_url) is None, "--sql must not migrate"
    conn = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute(printed.stdout)
    finally:
        await conn.close()
    assert await schema_of(empty_db_url) == await schema_of(db_url)
    # At head, there is nothing to print.
    again = await asyncio.to_thread(upgrade_sql, env)
    assert again.stdout == ""
    assert "nothing to run" in again.stderr
