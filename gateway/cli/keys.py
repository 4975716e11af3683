"""`segue keys`: API keys."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import click

from gateway.cli.common import database_url, load_settings


@click.group()
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
@click.option(
    "--aws",
    is_flag=True,
    help="An AWS access key id and secret for the Personalize-compatible routes "
    "(docs/personalize.md), instead of a bearer key. Needs SEGUE_CREDENTIALS_KEY.",
)
def keys_create(name: str, scopes: str, aws: bool) -> None:
    """Create a key and print it once, on stdout. Only its hash is stored (for --aws: its secret,
    encrypted with SEGUE_CREDENTIALS_KEY)."""
    from gateway.http.auth import create_key, parse_scopes

    try:
        wanted = parse_scopes(scopes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scopes") from None
    settings = load_settings()
    url = database_url(settings)
    if aws:
        from gateway.http.awskeys import CredentialsKeyError, create_aws_key, parse_credentials_key

        text = settings.credentials_key.get_secret_value() if settings.credentials_key else None
        try:
            sealer = parse_credentials_key(text)
        except CredentialsKeyError as exc:
            raise click.ClickException(str(exc)) from None
        key, secret = asyncio.run(
            _with_conn(url, lambda c: create_aws_key(c, name, wanted, sealer))
        )
        click.echo(f"created AWS key {key.key_id} ({name}) with scopes {_scopes(key)}", err=True)
        # The AWS shared credentials file's form: pasted under a [profile] it just works.
        click.echo(f"aws_access_key_id = {key.key_id}")
        click.echo(f"aws_secret_access_key = {secret}")
        return
    key, secret = asyncio.run(_with_conn(url, lambda c: create_key(c, name, wanted)))
    click.echo(f"created key {key.key_id} ({name}) with scopes {_scopes(key)}", err=True)
    click.echo(secret)


def _scopes(key: Any) -> str:
    return ",".join(sorted(s.value for s in key.scopes))


@keys.command("seal-key")
def keys_seal_key() -> None:
    """Print a new random SEGUE_CREDENTIALS_KEY (keys created with one need that same one)."""
    from gateway.http.awskeys import new_credentials_key

    click.echo(new_credentials_key())


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from gateway.http.auth import list_keys

    url = database_url(load_settings())
    rows = asyncio.run(_with_conn(url, list_keys))
    if not rows:
        click.echo("no keys yet: `segue keys create --name NAME --scopes SCOPES`")
        return
    # AWS access key ids are 20 characters, bearer key ids 8.
    width = max(10, *(len(r["key_id"]) for r in rows))
    click.echo(f"{'key id':<{width}} {'name':<20} {'scopes':<32} {'created (UTC)':<16}  state")
    for r in rows:
        state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
        if r["aws"]:
            state += " (AWS key)"
        created = f"{r['created_at'].astimezone(UTC):%Y-%m-%d %H:%M}"
        click.echo(
            f"{r['key_id']:<{width}} {r['name']:<20} {','.join(r['scopes']):<32} {created:<16}  "
            f"{state}"
        )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after `sk_`)."""
    from gateway.http.auth import revoke_key

    url = database_url(load_settings())
    if not asyncio.run(_with_conn(url, lambda c: revoke_key(c, key_id))):
        raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}")
