"""The `segue` command line. Configuration comes from SEGUE_* variables (and .env)."""

from __future__ import annotations

from typing import Any

import asyncpg
import click

from gateway.cli import (
    db,
    demo,
    evaluate,
    events,
    experiments,
    index,
    keys,
    projections,
    report,
    schemas,
    serve,
)
from gateway.store.database import DatabaseUnreachable, unavailable


class Segue(click.Group):
    """The command group; a database that cannot be reached, or is not migrated, is one line
    on stderr and exit status 1, not a traceback of sixty lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except DatabaseUnreachable as exc:
            raise click.ClickException(str(exc)) from None
        except asyncpg.UndefinedTableError as exc:
            raise click.ClickException(
                f"the database is not migrated ({exc}): run `segue db upgrade`"
            ) from None
        except Exception as exc:
            if unavailable(exc):
                raise click.ClickException(
                    f"the database cannot be reached: {exc.__class__.__name__}: {exc}"
                ) from None
            raise


@click.group(cls=Segue)
@click.version_option(package_name="segue")
def main() -> None:
    """Segue: an event-sourced recommendation gateway."""


for command in (
    serve.serve,
    projections.project,
    projections.rebuild,
    projections.status,
    index.index,
    db.db,
    keys.keys,
    demo.demo,
    events.export,
    events.import_,
    evaluate.evaluate,
    evaluate.replay,
    report.report,
    schemas.schemas,
    experiments.experiment,
):
    main.add_command(command)
