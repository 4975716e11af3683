"""What the commands share: configuration, the database URL, logging."""

from __future__ import annotations

import click
from pydantic import ValidationError

from gateway.settings import Settings


def load_settings() -> Settings:
    """The configuration, or a one-line-per-variable error."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  SEGUE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else f"  {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise click.ClickException("invalid configuration:\n" + "\n".join(lines)) from None


def database_url(config: Settings) -> str:
    """The database to use, saying so when it is the embedded one."""
    from gateway.store.database import resolve_url

    if config.database_url is None:
        click.echo(f"segue: using the embedded PostgreSQL under {config.data_dir}", err=True)
    return resolve_url(config)


def setup_logging(config: Settings) -> None:
    from gateway.logs import setup_logging as configure

    configure(config.log_level, config.log_format)
