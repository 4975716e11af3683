"""`segue project`, `segue rebuild` and `segue status`: the projectors and their state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import database_url, load_settings, setup_logging


@click.command()
def project() -> None:
    """Run the projectors alone (for deployments where `serve` runs with
    SEGUE_RUN_PROJECTORS=false). One runner per projection applies; extra ones wait."""
    from gateway.projections.runner import Runner, all_projections
    from gateway.store.database import LogFromTheFuture, check_log_order

    settings = load_settings()
    setup_logging(settings)
    url = database_url(settings)
    try:
        asyncio.run(check_log_order(url))
    except LogFromTheFuture as exc:
        raise click.ClickException(f"cannot start: {exc}") from None

    async def run() -> None:
        runners = [
            Runner(url, p, batch_size=settings.projector_batch_size) for p in all_projections()
        ]
        await asyncio.gather(*(r.run() for r in runners))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@click.command()
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
    from gateway.projections.definitions import PROJECTIONS
    from gateway.projections.runner import RebuildRunning, head, live_version
    from gateway.projections.runner import rebuild as do_rebuild

    settings = load_settings()
    setup_logging(settings)
    url = database_url(settings)
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

    try:
        asyncio.run(run())
    except RebuildRunning as exc:
        raise click.ClickException(f"{exc} (segue status shows its version as building)") from None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Each projection's position, lag and reward definition."""
    import asyncpg

    from gateway.projections.runner import status as projection_status

    settings = load_settings()
    url = database_url(settings)

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
                        "error": r.error,
                        "failed_position": r.failed_position,
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
        if r.error is not None:
            click.echo(
                f"  stopped at event {r.failed_position}: {r.error} (retrying; never skipped)"
            )
    click.echo(_index_line(settings.index_root))


def _index_line(root: Path) -> str:
    """The published index, as the admin route shows it (what every gateway loads)."""
    from gateway.index.files import MANIFEST

    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return f"index: none published under {root}"
    except (OSError, ValueError) as exc:
        return f"index: the manifest under {root} is unreadable ({exc.__class__.__name__})"
    candidates = manifest.get("candidates", {})
    return (
        f"index: version {manifest.get('version')} built {manifest.get('built_at', '?')[:19]}, "
        f"{manifest.get('items', 0):,} items, {manifest.get('listeners', 0):,} listeners, "
        f"recall@10 {manifest.get('recall_at_10', float('nan')):.3f}"
        + (
            f", candidates recall@10 {candidates['recall_at_10']:.3f}"
            if "recall_at_10" in candidates
            else ""
        )
        + f" ({root})"
    )
