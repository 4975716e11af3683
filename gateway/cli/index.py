"""`segue index build`: build and publish an index now."""

from __future__ import annotations

import asyncio

import click

from gateway.cli.common import database_url, load_settings, setup_logging


@click.group()
def index() -> None:
    """Annoy nearest-neighbour indexes."""


@index.command("build")
def index_build() -> None:
    """Learn embeddings from the affinity projection, build and publish a new index version.
    Running gateways pick it up within seconds."""
    from domain.embeddings import AlsParams
    from gateway.index.build import IndexParams
    from gateway.index.holder import IndexHolder
    from gateway.index.service import IndexService

    settings = load_settings()
    setup_logging(settings)
    url = database_url(settings)
    service = IndexService(
        url,
        IndexHolder(settings.index_root, cache=settings.index_cache_dir),
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
