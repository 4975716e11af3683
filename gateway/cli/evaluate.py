"""`segue evaluate` and `segue replay`: off-policy estimates and what-if replays of the log."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import database_url, load_settings

TARGET_HELP = (
    "uniform, current (Segue's policy re-run on each logged request), or a CSV of "
    "item_id,position,probability or recommendation_id,item_id,position,probability."
)
REWARD_HELP = (
    "An outcome kind (click, stream_30s, ...), a reward definition JSON file, or the version of a "
    "stored reward definition."
)


class Time(click.ParamType):  # type: ignore[type-arg]
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            from gateway.analysis.evaluation import utc

            return utc(datetime.fromisoformat(str(value)))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date or time", param, ctx)


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--reward", required=True, help=REWARD_HELP),
        click.option("--surface", default=None, help="Only slates served on this surface."),
        click.option("--since", type=Time(), default=None, help="Served at or after (ISO 8601)."),
        click.option("--until", type=Time(), default=None, help="Served before (ISO 8601)."),
        click.option(
            "--experiment", default=None, help="Only slates served in this online experiment."
        ),
        click.option(
            "--arm",
            default=None,
            help="With --experiment: only this arm's slates (e.g. the control's, to estimate "
            "another arm offline beside its online result).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
        click.option(
            "--clip",
            type=click.FloatRange(min=0, min_open=True),
            default=math.inf,
            help="IPW: cut importance weights above this (lambda). Default: no clipping.",
        ),
        click.option(
            "--tau",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="Switch-DR: importance weight above which only the model is used.",
        ),
        click.option(
            "--folds",
            type=click.IntRange(1, 100),
            default=1,
            show_default=True,
            help="Cross-fitting folds of the reward model (1: fitted on every slate).",
        ),
        click.option(
            "--prior-strength",
            type=click.FloatRange(min=0),
            default=10.0,
            show_default=True,
            help="Reward model: pseudo-observations shrinking each mean to the next coarser one.",
        ),
        click.option(
            "--bootstrap",
            type=click.IntRange(1, 100_000),
            default=1000,
            show_default=True,
            help="Bootstrap samples for the confidence intervals.",
        ),
        click.option(
            "--alpha",
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            default=0.05,
            show_default=True,
            help="The intervals cover 1 - alpha.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def progress(label: str) -> Callable[[int, int], None]:
    """A progress line on stderr, redrawn as a phase advances."""
    state = {"shown": -1}

    def report(done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if percent != state["shown"]:
            state["shown"] = percent
            end = "\n" if done >= total else ""
            click.echo(f"\r{label}: {done}/{total} ({percent}%)", err=True, nl=False)
            if end:
                click.echo("", err=True)

    return report


def _load(target: str, reward: str, filters: Any, params: Any) -> Any:
    import asyncpg

    from gateway.analysis.evaluation import Request, load_rounds
    from gateway.analysis.evaluation_log import EvaluationError

    if target not in ("uniform", "current") and not Path(target).is_file():
        raise click.BadParameter(
            f"{target!r} is not uniform, current, nor a CSV file", param_hint="--target"
        )
    settings = load_settings()
    url = database_url(settings)
    request = Request(target, reward, filters, params)
    try:
        return asyncio.run(load_rounds(url, request, settings.index_root, progress))
    except EvaluationError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"database: {exc}") from None


def _config(**kw: Any) -> Any:
    from domain.ope import OpeConfig

    try:
        return OpeConfig(**kw)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _table(rows: dict[str, Any], alpha: float) -> None:
    level = f"{100 * (1 - alpha):g}% CI"
    click.echo(f"{'estimator':<10} {'estimate':>12} {level:>28}  note")
    for name, e in rows.items():
        ci = "-" if e.ci is None else f"[{e.ci[0]:.6f}, {e.ci[1]:.6f}]"
        click.echo(f"{name:<10} {_fmt(e.estimate):>12} {ci:>28}  {e.note}")


@click.command()
@click.option("--target", required=True, help=TARGET_HELP)
@_common
def evaluate(
    target: str,
    reward: str,
    surface: str | None,
    since: datetime | None,
    until: datetime | None,
    experiment: str | None,
    arm: str | None,
    as_json: bool,
    clip: float,
    tau: float,
    folds: int,
    prior_strength: float,
    bootstrap: int,
    alpha: float,
    seed: int,
) -> None:
    """Estimate how the target policy would have done on the logged slates (replay, IPW,
    self-normalised IPW, direct method, doubly robust, switch-DR; values per served position)."""
    from gateway.analysis.evaluation import evaluation_of
    from gateway.analysis.evaluation_log import Filters

    config = _config(
        clip=clip,
        tau=tau,
        prior_strength=prior_strength,
        folds=folds,
        n_bootstrap=bootstrap,
        alpha=alpha,
        seed=seed,
    )

    # `current` is the policy the gateways are configured to serve (SEGUE_POLICY_*).
    policy = load_settings().policy
    rounds, name, version = _load(
        target, reward, Filters(surface, since, until, experiment, arm), policy
    )
    result = evaluation_of(rounds, name, version, config)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(
        f"target {result.target}, reward {result.reward}: "
        f"{result.slates} slates, {result.rounds} served positions"
    )
    _table({**result.estimates, "logged": result.logged}, alpha)


def _params(
    params_file: Path | None, overrides: dict[str, Any]
) -> Any:  # -> PolicyParams, lazily imported
    from domain.ranking import PolicyParams

    base: dict[str, Any] = {}
    if params_file is not None:
        try:
            loaded = json.loads(params_file.read_text())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--params") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must hold a JSON object", param_hint="--params")
        known = {f.name for f in dataclasses.fields(PolicyParams)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise click.BadParameter(
                f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})",
                param_hint="--params",
            )
        base = loaded
    base.update({k: v for k, v in overrides.items() if v is not None})

    # Start from the configured policy (SEGUE_POLICY_*): the file and options name what differs.
    try:
        return dataclasses.replace(load_settings().policy, **base)
    except (TypeError, ValueError) as exc:
        raise click.UsageError(f"invalid policy parameters: {exc}") from None


@click.command()
@click.option(
    "--target",
    default="current",
    show_default=True,
    help="current (with the parameters below), or a CSV target as for `evaluate`.",
)
@click.option(
    "--params",
    "params_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON object of policy parameters (domain.ranking.PolicyParams fields).",
)
@click.option("--epsilon", type=float, default=None, help="Share of uniform random slates.")
@click.option("--tail-epsilon", type=float, default=None, help="Share of tail-explored slates.")
@click.option("--tail", type=int, default=None, help="Positions re-drawn in the tail.")
@click.option("--w-affinity", type=float, default=None, help="Weight of affinity.")
@click.option("--w-reward", type=float, default=None, help="Weight of the reward posterior.")
@click.option("--w-long-term", type=float, default=None, help="Weight of the long-term estimate.")
@click.option("--optimism", type=float, default=None, help="Bonus per posterior std deviation.")
@click.option("--max-per-group", type=int, default=None, help="Items per artist or show.")
@click.option("--k", "k", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--top", "top_n", type=click.IntRange(1, 1000), default=10, show_default=True)
@_common
def replay(
    target: str,
    params_file: Path | None,
    epsilon: float | None,
    tail_epsilon: float | None,
    tail: int | None,
    w_affinity: float | None,
    w_reward: float | None,
    w_long_term: float | None,
    optimism: float | None,
    max_per_group: int | None,
    k: int,
    top_n: int,
    reward: str,
    surface: str | None,
    since: datetime | None,
    until: datetime | None,
    experiment: str | None,
    arm: str | None,
    as_json: bool,
    clip: float,
    tau: float,
    folds: int,
    prior_strength: float,
    bootstrap: int,
    alpha: float,
    seed: int,
) -> None:
    """Re-run the logged requests through another policy: how its slates differ from the logged
    ones (overlap@k, items gained and lost) and the estimated change in value per position."""
    from gateway.analysis.evaluation import replay_of
    from gateway.analysis.evaluation_log import Filters

    if target == "uniform":
        raise click.BadParameter(
            "uniform has no slate to compare; use `segue evaluate`", param_hint="--target"
        )
    overrides = {
        "epsilon": epsilon,
        "tail_epsilon": tail_epsilon,
        "tail": tail,
        "w_affinity": w_affinity,
        "w_reward": w_reward,
        "w_long_term": w_long_term,
        "optimism": optimism,
        "max_per_group": max_per_group,
    }
    params = _params(params_file, overrides)
    config = _config(
        clip=clip,
        tau=tau,
        prior_strength=prior_strength,
        folds=folds,
        n_bootstrap=bootstrap,
        alpha=alpha,
        seed=seed,
    )
    rounds, name, version = _load(
        target, reward, Filters(surface, since, until, experiment, arm), params
    )
    result = replay_of(rounds, name, version, config, k, top_n)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    o = result.overlap
    click.echo(
        f"target {result.target}, reward {result.reward}: {result.slates} slates, "
        f"{result.compared} compared"
    )
    mean = "-" if math.isnan(o.mean) else f"{o.mean:.3f}"
    click.echo(f"overlap@{o.k}: mean {mean}")
    for shared, count in sorted(o.distribution.items()):
        click.echo(f"  {shared:>3} shared: {count} slates")
    click.echo("gained: " + (", ".join(f"{i} ({n})" for i, n in result.gained) or "-"))
    click.echo("lost:   " + (", ".join(f"{i} ({n})" for i, n in result.lost) or "-"))
    click.echo("value per served position under the logging policy:")
    _table({"logged": result.logged}, alpha)
    click.echo("estimated change in value per served position (target - logged):")
    _table(result.difference, alpha)
