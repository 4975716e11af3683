"""The `segue` command line. Configuration comes from SEGUE_* variables (and .env)."""

from __future__ import annotations

import click

from gateway.cli import db, demo, evaluate, events, index, keys, projections, report, schemas, serve


@click.group()
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
):
    main.add_command(command)
