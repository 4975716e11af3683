"""`segue report`: the HTML report, with off-policy estimates of the chosen target policies."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import database_url, load_settings
from gateway.cli.evaluate import REWARD_HELP, Time, progress


@click.command()
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=Path("segue-report.html"),
    show_default=True,
    help="Where to write the HTML page.",
)
@click.option("--since", type=Time(), default=None, help="From this time (ISO 8601).")
@click.option("--until", type=Time(), default=None, help="Before this time (ISO 8601).")
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=("uniform", "current"),
    show_default=True,
    help="A policy to estimate (repeatable): uniform, current, or a CSV file as for evaluate.",
)
@click.option(
    "--reward",
    default=None,
    help=REWARD_HELP + " Default: the live rewards projection's definition.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Bootstrap samples for the estimates' intervals.",
)
def report(
    output: Path,
    since: datetime | None,
    until: datetime | None,
    targets: tuple[str, ...],
    reward: str | None,
    bootstrap: int,
) -> None:
    """Write a self-contained HTML report: reward over time per surface and policy, off-policy
    estimates with their intervals, the outcome mix and projection lag."""
    import asyncpg

    from domain.ope import OpeConfig
    from gateway.analysis.evaluation import Request, evaluate_log
    from gateway.analysis.evaluation_log import EvaluationError, Filters
    from gateway.analysis.report import EstimateRow, estimate_rows, gather, render

    for target in targets:
        if target not in ("uniform", "current") and not Path(target).is_file():
            raise click.BadParameter(
                f"{target!r} is not uniform, current, nor a CSV file", param_hint="--target"
            )
    settings = load_settings()
    url = database_url(settings)
    config = OpeConfig(n_bootstrap=bootstrap)

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            data = await gather(conn, since, until)
        finally:
            await conn.close()
        chosen = reward or data.reward_definition or "stream_30s"
        rows: list[EstimateRow] = []
        logged: EstimateRow | None = None
        for target in targets:
            click.echo(f"estimating {target} ...", err=True)
            request = Request(target, chosen, Filters(None, since, until), settings.policy)
            try:
                result = await evaluate_log(url, request, config, settings.index_root, progress)
            except EvaluationError as exc:
                data.notes.append(f"{target}: not evaluated: {exc}")
                continue
            estimated, logged = estimate_rows(result)
            rows += estimated
        if logged is not None:
            rows.insert(0, logged)
        data.estimates = rows
        data.ope_config = config
        data.estimates_about = (
            f"Reward {chosen}, per served position, {100 * (1 - config.alpha):g}% bootstrap "
            f"intervals over {bootstrap} resamples of whole slates; the dashed line and band "
            "are the logging policy's own value."
        )
        return data

    try:
        data = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"database: {exc}") from None
    output.write_text(render(data), encoding="utf-8")
    click.echo(f"wrote {output}")
