"""`segue db`: migrations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import click

from gateway.cli.common import database_url, load_settings


@click.group()
def db() -> None:
    """Database migrations (Alembic; `alembic upgrade head` works too)."""


@contextlib.contextmanager
def _migration_errors() -> Iterator[None]:
    """A migration that PostgreSQL refuses is its message (and hint), not a traceback
    through Alembic and SQLAlchemy; the transaction was rolled back, so nothing is half done."""
    import asyncpg
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.DBAPIError, asyncpg.PostgresError) as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, asyncpg.PostgresError):
            cause = cause.__cause__
        if cause is None:
            raise click.ClickException(f"migration failed: {exc}") from None
        raise click.ClickException(f"migration failed, nothing changed: {cause}") from None


@db.command("upgrade")
@click.argument("revision", default="head")
@click.option(
    "--sql",
    "sql",
    is_flag=True,
    help="Print the SQL the upgrade would run, for review, and change nothing.",
)
@click.option(
    "--from",
    "start",
    default=None,
    help="With --sql: the revision to start from ('base' for an empty database); default: the "
    "database's own.",
)
def db_upgrade(revision: str, sql: bool, start: str | None) -> None:
    """Migrate forward to REVISION (default: head)."""
    from gateway.store.database import current_revision, head_revision, migrate, migration_sql

    if start is not None and not sql:
        raise click.UsageError("--from goes with --sql")
    url = database_url(load_settings())
    if sql:
        if start is None:
            start = asyncio.run(current_revision(url)) or "base"
        if start == (head_revision() if revision == "head" else revision):
            click.echo(f"-- the database is at {start} already: nothing to run", err=True)
            return
        with _migration_errors():
            click.echo(migration_sql(start, revision), nl=False)
        return
    with _migration_errors():
        asyncio.run(migrate(url, revision))
    click.echo(f"at revision {asyncio.run(current_revision(url))}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate back to REVISION ('base' removes everything)."""
    from gateway.store.database import current_revision, migrate

    url = database_url(load_settings())
    with _migration_errors():
        asyncio.run(migrate(url, revision, downgrade=True))
    click.echo(f"at revision {asyncio.run(current_revision(url))}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision."""
    from gateway.store.database import current_revision

    url = database_url(load_settings())
    click.echo(asyncio.run(current_revision(url)) or "none (not migrated)")
