"""`segue experiment`: start, read, stop and ship online experiments, as the admin routes do
(the same service, on the database directly)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click
from pydantic import ValidationError

from gateway.cli.common import database_url, load_settings

T = TypeVar("T")
# The tunables the gateway's configuration can set (gateway.settings.Settings.policy).
SETTINGS = {
    "epsilon": "SEGUE_POLICY_EPSILON",
    "tail_epsilon": "SEGUE_POLICY_TAIL_EPSILON",
    "tail": "SEGUE_POLICY_TAIL",
    "optimism": "SEGUE_POLICY_OPTIMISM",
    "w_long_term": "SEGUE_POLICY_LONG_TERM_WEIGHT",
}


@click.group()
def experiment() -> None:
    """Online experiments: arms of the policy served side by side, analysed from the log."""


def _run(work: Callable[..., Awaitable[T]]) -> T:
    """`work(experiments)` against the configured database; a service refusal is one line."""
    from gateway.serving.errors import Refused
    from gateway.serving.experiments import Experiments
    from gateway.store.database import create_pool
    from gateway.store.postgres import PostgresEventStore

    url = database_url(load_settings())

    async def go() -> T:
        pool = await create_pool(url, min_size=1, max_size=3)
        store = PostgresEventStore(pool, flushers=1)
        await store.start()
        try:
            return await work(Experiments(pool, store, lambda: datetime.now(UTC)))
        finally:
            await store.close()
            await pool.close()

    try:
        return asyncio.run(go())
    except Refused as exc:
        where = f" ({exc.field})" if exc.field else ""
        raise click.ClickException(f"{exc.detail}{where}") from None


def _echo_json(model: object) -> None:
    from pydantic import BaseModel

    assert isinstance(model, BaseModel)
    click.echo(model.model_dump_json(indent=2))


@experiment.command("start")
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def start(definition: Path) -> None:
    """Start the experiment described in DEFINITION (JSON, the body of
    POST /v1/admin/experiments)."""
    from gateway.http.experiments import experiment_out
    from gateway.serving.requests import ExperimentIn

    try:
        body = ExperimentIn.model_validate_json(definition.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.BadParameter(f"{where}: {first['msg']}", param_hint="DEFINITION") from None
    lc = _run(lambda e: e.start(body))
    _echo_json(experiment_out(lc))


@experiment.command("list")
def list_() -> None:
    """Every experiment, one line each."""

    async def work(e: object) -> None:
        from gateway.serving.experiments import Experiments

        assert isinstance(e, Experiments)
        for name, lc in (await e.all()).items():
            arms = ", ".join(a.name for a in lc.experiment.arms)
            surfaces = ", ".join(lc.experiment.surfaces)
            click.echo(f"{name}\t{lc.status}\t{lc.started_at:%Y-%m-%d %H:%M}\t{surfaces}\t{arms}")

    _run(work)


@experiment.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the status route's JSON instead.")
def status(name: str, as_json: bool) -> None:
    """Per arm: listeners, slates and metrics; each arm against the control with always-valid
    intervals; the sample-ratio check."""
    from gateway.http.experiments import status_out

    lc, analysis = _run(lambda e: e.status(name))
    out = status_out(lc, analysis)
    if as_json:
        _echo_json(out)
        return
    click.echo(f"{name}: {lc.status} since {lc.started_at:%Y-%m-%d %H:%M} UTC")
    click.echo(f"method: {analysis.method}")
    metrics = [lc.experiment.primary.name, *(g.name for g in lc.experiment.guardrails)]
    click.echo("arm\tshare\tlisteners\tslates\t" + "\t".join(metrics))
    for a in out.arms:
        means = "\t".join(f"{a.means[m]:.4f}" for m in metrics)
        click.echo(f"{a.name}\t{a.share:.3f}\t{a.listeners}\t{a.slates}\t{means}")
    srm = out.sample_ratio
    flag = "MISMATCH: the split is broken" if srm.mismatch else "ok"
    click.echo(f"sample ratio: chi-square {srm.statistic:.3f}, p = {srm.p_value:.4g} ({flag})")
    for c in out.comparisons:
        if c.difference is None or c.low is None or c.high is None:
            click.echo(f"{c.arm} - {lc.experiment.arms[0].name} on {c.metric}: {c.verdict}")
            continue
        click.echo(
            f"{c.arm} - {lc.experiment.arms[0].name} on {c.metric}: {c.difference:+.4f} "
            f"[{c.low:+.4f}, {c.high:+.4f}]{' (CUPED)' if c.cuped else ''}: {c.verdict}"
        )


@experiment.command("stop")
@click.argument("name")
@click.option("--reason", required=True, help="Why, for the log.")
def stop(name: str, reason: str) -> None:
    """Stop a running experiment: its surfaces go back to the default policy."""
    from gateway.http.experiments import experiment_out

    _echo_json(experiment_out(_run(lambda e: e.stop(name, reason))))


@experiment.command("ship")
@click.argument("name")
@click.option("--arm", required=True, help="The arm shipped.")
def ship(name: str, arm: str) -> None:
    """End a running experiment with ARM shipped, and print the SEGUE_POLICY_* settings that
    serve its parameters to everybody."""
    from gateway.http.experiments import experiment_out

    lc = _run(lambda e: e.ship(name, arm))
    _echo_json(experiment_out(lc))
    params = dict(lc.experiment.arm(arm).params)
    settable = {k: v for k, v in params.items() if k in SETTINGS}
    if settable:
        settings = " ".join(f"{SETTINGS[k]}={json.dumps(v)}" for k, v in settable.items())
        click.echo(f"to serve it to everybody, deploy with: {settings}", err=True)
    others = sorted(set(params) - set(SETTINGS))
    if others:
        click.echo(f"{', '.join(others)}: no setting selects these; change the code", err=True)


@experiment.command("report")
@click.argument("name")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the page (default: experiment-NAME.html).",
)
def report(name: str, output: Path | None) -> None:
    """A self-contained HTML page: the definition, the analysis now, and per day each arm's
    difference from the control with its always-valid interval and the listeners per arm."""
    from gateway.analysis.experiment_report import render
    from gateway.serving.experiments import Experiments

    async def work(e: Experiments) -> str:
        lc, history = await e.history(name)
        _, now = await e.status(name)
        return render(lc, history, now)

    page = _run(work)
    target = output or Path(f"experiment-{name}.html")
    target.write_text(page)
    click.echo(f"wrote {target}")
