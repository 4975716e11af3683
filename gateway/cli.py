"""The `segue` command line. Configuration comes from SEGUE_* variables (and .env)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import click
from aiohttp import web
from pydantic import ValidationError

from gateway.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  SEGUE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        ]
        raise click.ClickException("invalid configuration:\n" + "\n".join(lines)) from None


def _database_url(settings: Settings) -> str:
    from gateway.database import resolve_url

    if settings.database_url is None:
        click.echo(f"segue: using the embedded PostgreSQL under {settings.data_dir}", err=True)
    return resolve_url(settings)


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their INFO lines (initdb output, Alembic plugin set-up) drown the gateway's own.
    for chatty in ("pgserver", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


@click.group()
@click.version_option(package_name="segue")
def main() -> None:
    """Segue: an event-sourced recommendation gateway."""


# --- serve ----------------------------------------------------------------------------------


def _run_worker(settings: Settings, url: str, host: str, port: int, reuse_port: bool) -> None:
    from gateway.access_log import RouteAccessLogger
    from gateway.app import create_app

    _setup_logging(settings)
    web.run_app(
        create_app(settings, url),
        host=host,
        port=port,
        reuse_port=reuse_port,
        access_log_class=RouteAccessLogger,
        print=None if reuse_port else click.echo,
    )


@main.command()
@click.option("--host", default=None, help="Interface to bind (default SEGUE_HOST).")
@click.option("--port", type=int, default=None, help="Port (default SEGUE_PORT).")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=1, help="Gateway processes sharing the port."
)
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the gateway (migrating the database first, once it can be reached)."""
    from gateway.database import DatabaseUnreachable, migrate, wait_for_database

    settings = _settings()
    _setup_logging(settings)
    url = _database_url(settings)
    try:
        asyncio.run(
            wait_for_database("migrating", lambda: migrate(url), settings.startup_wait_seconds)
        )
    except DatabaseUnreachable as exc:
        raise click.ClickException(f"cannot start: {exc}") from None
    host = host or settings.host
    port = port if port is not None else settings.port
    if workers == 1:
        _run_worker(settings, url, host, port, reuse_port=False)
        return
    from gateway.supervisor import supervise

    click.echo(f"======== {workers} workers on http://{host}:{port} ========")
    sys.exit(supervise(_run_worker, (settings, url, host, port, True), workers))


# --- projections ----------------------------------------------------------------------------


@main.command()
def project() -> None:
    """Run the projectors alone (for deployments where `serve` runs with
    SEGUE_RUN_PROJECTORS=false). One runner per projection applies; extra ones wait."""
    from gateway.projector import Runner, all_projections

    settings = _settings()
    _setup_logging(settings)
    url = _database_url(settings)

    async def run() -> None:
        runners = [
            Runner(url, p, batch_size=settings.projector_batch_size) for p in all_projections()
        ]
        await asyncio.gather(*(r.run() for r in runners))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@main.command()
@click.argument("projection", type=click.Choice(["rewards", "listeners"]))
@click.option(
    "--definition",
    "definition_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A reward definition (JSON) to recompute history under; default: the live one.",
)
def rebuild(projection: str, definition_path: Path | None) -> None:
    """Rebuild PROJECTION from position zero into new tables, then swap them in."""
    from domain.rewards import DEFAULT, RewardDefinition
    from gateway.projections import PROJECTIONS
    from gateway.projector import head, live_version
    from gateway.projector import rebuild as do_rebuild

    settings = _settings()
    _setup_logging(settings)
    url = _database_url(settings)
    definition = None
    if definition_path is not None:
        try:
            definition = RewardDefinition.from_json(json.loads(definition_path.read_text()))
        except (ValueError, json.JSONDecodeError) as exc:
            raise click.BadParameter(str(exc), param_hint="--definition") from None

    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            live = await live_version(conn, projection)
            target = await head(conn)
        finally:
            await conn.close()
        chosen = definition or (live.definition if live else DEFAULT)
        click.echo(f"rebuilding {projection} under reward definition {chosen.version}", err=True)
        with click.progressbar(
            length=max(target.global_position, 1), label="events", file=sys.stderr
        ) as bar:
            done = 0

            def progress(position: Any, head_now: Any, _version: int) -> None:
                nonlocal done
                bar.length = max(head_now.global_position, 1)
                bar.update(position.global_position - done)
                done = position.global_position

            new = await do_rebuild(url, PROJECTIONS[projection], chosen, progress)
            bar.update(max((bar.length or 0) - done, 0))
        click.echo(f"{projection} v{new.version} is live (schema {new.schema})")

    asyncio.run(run())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Each projection's position, lag and reward definition."""
    import asyncpg

    from gateway.projector import status as projection_status

    url = _database_url(_settings())

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return await projection_status(conn)
        finally:
            await conn.close()

    rows = asyncio.run(run())
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "version": r.version,
                        "status": r.status,
                        "definition_version": r.definition_version,
                        "position": r.position.global_position,
                        "events_applied": r.events_applied,
                        "lag_events": r.lag_events,
                        "lag_seconds": round(r.lag_seconds, 3),
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        click.echo("no projections yet (they start with `segue serve` or `segue project`)")
    click.echo(
        f"{'projection':<12} {'ver':>3} {'status':<9} {'definition':<20} "
        f"{'position':>10} {'lag events':>10} {'lag s':>8}"
    )
    for r in rows:
        click.echo(
            f"{r.name:<12} {r.version:>3} {r.status:<9} {r.definition_version:<20} "
            f"{r.position.global_position:>10} {r.lag_events:>10} {r.lag_seconds:>8.1f}"
        )


# --- index ----------------------------------------------------------------------------------


@main.group()
def index() -> None:
    """Annoy nearest-neighbour indexes."""


@index.command("build")
def index_build() -> None:
    """Learn embeddings from the affinity projection, build and publish a new index version.
    Running gateways pick it up within seconds."""
    from domain.embeddings import AlsParams
    from gateway.index_service import IndexService
    from gateway.indexes import IndexHolder, IndexParams

    settings = _settings()
    _setup_logging(settings)
    url = _database_url(settings)
    service = IndexService(
        url,
        IndexHolder(settings.index_root),
        params=IndexParams(als=AlsParams(solver=settings.index_als_solver)),
    )
    click.echo(f"building into {settings.index_root} ...", err=True)
    entry = asyncio.run(service.build_now())
    if entry is None:
        raise click.ClickException("another process is building an index right now")
    click.echo(
        f"index {entry['version']} published: {entry['items']} items, "
        f"{entry['listeners']} listeners, recall@10 {entry['recall_at_10']:.3f}, "
        f"{entry['seconds']:.1f} s"
    )


# --- db -------------------------------------------------------------------------------------


@main.group()
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
def db_upgrade(revision: str) -> None:
    """Migrate forward to REVISION (default: head)."""
    from gateway.database import current_revision, migrate

    url = _database_url(_settings())
    with _migration_errors():
        asyncio.run(migrate(url, revision))
    click.echo(f"at revision {asyncio.run(current_revision(url))}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate back to REVISION ('base' removes everything)."""
    from gateway.database import current_revision, migrate

    url = _database_url(_settings())
    with _migration_errors():
        asyncio.run(migrate(url, revision, downgrade=True))
    click.echo(f"at revision {asyncio.run(current_revision(url))}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision."""
    from gateway.database import current_revision

    url = _database_url(_settings())
    click.echo(asyncio.run(current_revision(url)) or "none (not migrated)")


# --- keys -----------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys."""


async def _with_conn(url: str, fn: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--scopes", required=True, help="Comma-separated: recommend, ingest, catalog, admin.")
def keys_create(name: str, scopes: str) -> None:
    """Create a key and print it once, on stdout. Only its hash is stored."""
    from gateway.auth import create_key, parse_scopes

    try:
        wanted = parse_scopes(scopes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scopes") from None
    url = _database_url(_settings())
    key, secret = asyncio.run(_with_conn(url, lambda c: create_key(c, name, wanted)))
    click.echo(
        f"created key {key.key_id} ({name}) with scopes "
        f"{','.join(sorted(s.value for s in key.scopes))}",
        err=True,
    )
    click.echo(secret)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from gateway.auth import list_keys

    url = _database_url(_settings())
    rows = asyncio.run(_with_conn(url, list_keys))
    for r in rows:
        state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
        click.echo(f"{r['key_id']}  {r['name']:<20} {','.join(r['scopes']):<32} {state}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after `sk_`)."""
    from gateway.auth import revoke_key

    url = _database_url(_settings())
    if not asyncio.run(_with_conn(url, lambda c: revoke_key(c, key_id))):
        raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}")


# --- demo -----------------------------------------------------------------------------------


def _examples(base: str, key: str, item: str) -> str:
    auth = f'-H "Authorization: Bearer {key}"'
    json_ct = '-H "Content-Type: application/json"'
    return f"""
Segue demo is up at {base}   (API page: {base}/docs)

  export SEGUE_KEY={key}

  # what should user-1 hear next?
  curl -s {base}/v1/recommendations {auth} {json_ct} \\
       -d '{{"user_id": "user-1", "surface": "home", "n": 5}}'

  # podcasts only
  curl -s {base}/v1/recommendations {auth} {json_ct} \\
       -d '{{"user_id": "user-1", "surface": "podcasts", "n": 3}}'

  # report that user-1 streamed an item for 30 s (resend it: it is counted once)
  curl -s {base}/v1/outcomes {auth} {json_ct} \\
       -d '{{"outcomes": [{{"event_id": "7d5f7f4e-1c1e-4a3e-9a51-0c3e2b1d9f00", \
             "user_id": "user-1", "item_id": "{item}", "kind": "stream_30s", "value": 31000}}]}}'

  # what has that item earned so far (and its long-term estimate)?
  curl -s {base}/v1/items/{item}/rewards {auth}

  # add a track to the catalogue
  curl -s -X PUT {base}/v1/items/tr-new-1 {auth} {json_ct} \\
       -d '{{"kind": "track", "attributes": {{"artist": "someone", "genre": "jazz"}}}}'

Press Ctrl+C to stop.
"""


@main.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--items", type=click.IntRange(1, 100_000), default=400, show_default=True)
@click.option("--users", type=click.IntRange(1, 100_000), default=50, show_default=True)
def demo(host: str | None, port: int | None, items: int, users: int) -> None:
    """Seed a synthetic catalogue and listeners, create a key, print examples, and serve."""
    from gateway.app import create_app, utc_now
    from gateway.appkeys import POOL
    from gateway.auth import Scope, create_key
    from gateway.database import migrate
    from gateway.demo import DemoClock, demo_items, seed

    settings = _settings()
    _setup_logging(settings)
    url = _database_url(settings)
    asyncio.run(migrate(url))
    host = host or settings.host
    port = port if port is not None else settings.port
    # The demo serves its past days' slates while starting, with this clock set to each one's
    # time; once it listens, the clock is the real one (decision 53).
    clock = DemoClock(utc_now)
    app = create_app(settings, url, clock=clock)

    async def seed_and_explain(app: web.Application) -> AsyncIterator[None]:
        seeded = await seed(app, clock, items, users, utc_now())
        _, secret = await create_key(app[POOL], "demo", frozenset(Scope))
        click.echo(
            f"seeded {seeded.items} items and {seeded.outcomes} outcomes ({users} listeners)",
            err=True,
        )
        if seeded.slates:
            click.echo(
                f"served {seeded.slates} slates over the last days through the policy, "
                f"with {seeded.slate_outcomes} outcomes (for segue report and segue evaluate)",
                err=True,
            )
        click.echo(_examples(f"http://{host}:{port}", secret, demo_items(1)[0].item_id))
        yield

    app.cleanup_ctx.append(seed_and_explain)
    from gateway.access_log import RouteAccessLogger

    web.run_app(app, host=host, port=port, print=None, access_log_class=RouteAccessLogger)


# Commands that live in their own modules; imported after `main` exists, registered here.
from gateway.cli_evaluate import evaluate, replay  # noqa: E402
from gateway.cli_events import export, import_  # noqa: E402
from gateway.cli_report import report  # noqa: E402
from gateway.cli_schemas import schemas  # noqa: E402

for command in (export, import_, evaluate, replay, report, schemas):
    main.add_command(command)

if __name__ == "__main__":
    main()
