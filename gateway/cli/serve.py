"""`segue serve`: the gateway, one process or supervised workers."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import click
from aiohttp import web

from gateway.cli.common import database_url, load_settings, setup_logging
from gateway.settings import Settings


def _run_worker(settings: Settings, url: str, host: str, port: int, reuse_port: bool) -> None:
    from gateway.http.access_log import RouteAccessLogger
    from gateway.http.app import create_app

    setup_logging(settings)
    web.run_app(
        create_app(settings, url),
        host=host,
        port=port,
        reuse_port=reuse_port,
        access_log_class=RouteAccessLogger,
        print=None if reuse_port else click.echo,
    )


@click.command()
@click.option("--host", default=None, help="Interface to bind (default SEGUE_HOST).")
@click.option("--port", type=int, default=None, help="Port (default SEGUE_PORT).")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=1, help="Gateway processes sharing the port."
)
@click.option(
    "--no-migrate",
    is_flag=True,
    help="Do not migrate: refuse to start unless the schema is at head (as "
    "SEGUE_MIGRATE_ON_START=false), for deployments with a migration job.",
)
def serve(host: str | None, port: int | None, workers: int, no_migrate: bool) -> None:
    """Run the gateway (migrating the database first, once it can be reached)."""
    from gateway.store.database import (
        DatabaseUnreachable,
        LogFromTheFuture,
        check_log_order,
        current_revision,
        head_revision,
        migrate,
        wait_for_database,
    )

    settings = load_settings()
    setup_logging(settings)
    url = database_url(settings)
    try:
        if settings.migrate_on_start and not no_migrate:
            asyncio.run(
                wait_for_database("migrating", lambda: migrate(url), settings.startup_wait_seconds)
            )
        else:
            at = asyncio.run(
                wait_for_database(
                    "reading the schema's revision",
                    lambda: current_revision(url),
                    settings.startup_wait_seconds,
                )
            )
            if at != head_revision():
                raise click.ClickException(
                    f"cannot start: the database is at revision {at or 'none'}, not "
                    f"{head_revision()}, and migrations are left to a job (--no-migrate or "
                    "SEGUE_MIGRATE_ON_START=false): run it (`segue db upgrade`) "
                    "first"
                )
        asyncio.run(check_log_order(url))
    except (DatabaseUnreachable, LogFromTheFuture) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None
    host = host or settings.host
    port = port if port is not None else settings.port
    # The app reads them too (the metrics port binds the same interface).
    settings = settings.model_copy(update={"host": host, "port": port})
    if workers == 1:
        _run_worker(settings, url, host, port, reuse_port=False)
        return
    from gateway.cli.supervisor import supervise
    from gateway.metrics import MULTIPROC_ENV, worker_exited

    click.echo(f"======== {workers} workers on http://{host}:{port} ========")
    # One scrape must see every worker: they write their samples to one directory of the
    # parent's (prometheus_client's multiprocess mode), gone when the parent stops.
    with tempfile.TemporaryDirectory(prefix="segue-metrics-") as shared:
        os.environ[MULTIPROC_ENV] = shared
        code = supervise(
            _run_worker, (settings, url, host, port, True), workers, on_exit=worker_exited
        )
    sys.exit(code)
