"""`segue demo`: the gateway on demo data, with a key and example calls."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import click
from aiohttp import web

from gateway.cli.common import database_url, load_settings, setup_logging

DEMO_KEY_FILE = "demo-key"  # in the data folder, readable by its owner only


async def _demo_key(pool: asyncpg.Pool, path: Path) -> str:
    """The demo's key: the one made last time if it is still valid, else a new one (kept in
    `path`, so that re-running the demo does not pile up keys, and pasted commands keep
    working)."""
    from gateway.http.auth import Scope, create_key

    kept = await asyncio.to_thread(_read_kept, path)
    if kept.startswith("sk_") and kept.count("_") >= 2:
        valid = await pool.fetchval(
            "SELECT revoked_at IS NULL FROM api_keys WHERE key_id = $1", kept.split("_")[1]
        )
        if valid:
            return kept
    _, secret = await create_key(pool, "demo", frozenset(Scope))
    await asyncio.to_thread(_keep, path, secret)
    return secret


def _read_kept(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _keep(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # Created readable by its owner only, never for a moment by anyone else.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")


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


@click.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--items", type=click.IntRange(1, 100_000), default=400, show_default=True)
@click.option("--users", type=click.IntRange(1, 100_000), default=50, show_default=True)
def demo(host: str | None, port: int | None, items: int, users: int) -> None:
    """Seed a synthetic catalogue and listeners, create a key, print examples, and serve."""
    from gateway.cli.demo_data import DemoClock, demo_items, seed
    from gateway.http.app import create_app, utc_now
    from gateway.http.appkeys import CATALOG, POOL
    from gateway.store.database import migrate

    settings = load_settings()
    setup_logging(settings)
    url = database_url(settings)
    asyncio.run(migrate(url))
    host = host or settings.host
    port = port if port is not None else settings.port
    # The demo serves its past days' slates while starting, with this clock set to each one's
    # time; once it listens, the clock is the real one (decision 53).
    clock = DemoClock(utc_now)
    app = create_app(settings, url, clock=clock)

    async def seed_and_explain(app: web.Application) -> AsyncIterator[None]:
        seeded = await seed(app, clock, items, users, utc_now())
        secret = await _demo_key(app[POOL], settings.data_dir / DEMO_KEY_FILE)
        if seeded.items or seeded.outcomes:
            click.echo(
                f"seeded {seeded.items} items and {seeded.outcomes} outcomes ({users} listeners)",
                err=True,
            )
        else:
            live = await app[CATALOG].count_live()
            click.echo(
                f"the demo data is already here ({live} items); serving it again with the same key",
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
    from gateway.http.access_log import RouteAccessLogger

    web.run_app(app, host=host, port=port, print=None, access_log_class=RouteAccessLogger)
