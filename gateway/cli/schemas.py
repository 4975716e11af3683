"""`segue schemas`: the published JSON Schemas of the event types (docs/events/)."""

from __future__ import annotations

from pathlib import Path

import click

FOLDER = click.Path(file_okay=False, path_type=Path)


@click.group()
def schemas() -> None:
    """JSON Schemas of every event type and version, generated from domain/payloads.py."""


@schemas.command("write")
@click.argument("folder", type=FOLDER, required=False)
def write_schemas(folder: Path | None) -> None:
    """Regenerate the schemas into FOLDER (default: the repository's docs/events)."""
    from gateway.store.schemas import DEFAULT_FOLDER, MissingPayloadSchema, write

    target = folder or DEFAULT_FOLDER
    try:
        changed = write(target)
    except MissingPayloadSchema as exc:
        raise click.ClickException(str(exc)) from None
    for name in changed:
        click.echo(f"updated {target / name}", err=True)
    click.echo(f"{target}: {len(changed)} file(s) changed")


@schemas.command("check")
@click.argument("folder", type=FOLDER, required=False)
def check_schemas(folder: Path | None) -> None:
    """Exit 1 if FOLDER (default docs/events) differs from what the generator produces now."""
    from gateway.store.schemas import DEFAULT_FOLDER, MissingPayloadSchema, differences

    target = folder or DEFAULT_FOLDER
    try:
        diff = differences(target)
    except MissingPayloadSchema as exc:
        raise click.ClickException(str(exc)) from None
    if diff:
        raise click.ClickException(
            f"{target} is out of date ({'; '.join(diff)}); run `segue schemas write {target}`"
        )
    click.echo(f"{target}: up to date")
