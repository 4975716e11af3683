"""The experiment routes (`/v1/admin/experiments...`): their answers and handlers. Parsing goes
into `serving.requests`, the work into `serving.experiments.Experiments`."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import Field, TypeAdapter

from domain.experiments import Analysis, Lifecycle
from gateway.http.appkeys import EXPERIMENTS
from gateway.http.handlers import parse_body, path_text, reply
from gateway.serving.requests import (
    ExperimentIn,
    ExperimentName,
    ExperimentShipIn,
    ExperimentStopIn,
    Model,
)

NAME = TypeAdapter(ExperimentName)


class ArmOut(Model):
    name: str
    weight: float
    params: dict[str, float]
    policy_version: str | None
    logged_version: str = Field(description="The policy version its slates are logged with")


class ExperimentOut(Model):
    name: str
    status: Literal["running", "stopped", "shipped"]
    hypothesis: str
    arms: list[ArmOut]
    surfaces: list[str]
    primary: str = Field(description="The primary metric's name")
    guardrails: list[str]
    minimum_detectable_effect: float
    alpha: float
    started_at: datetime
    ended_at: datetime | None
    shipped_arm: str | None
    reason: str = Field(description="Why it was stopped (empty otherwise)")


class ExperimentsOut(Model):
    experiments: list[ExperimentOut]


class ArmStatusOut(Model):
    name: str
    share: float = Field(description="The share of listeners the split gives it")
    listeners: int = Field(description="Listeners served at least one slate in the arm")
    slates: int
    means: dict[str, float] = Field(
        description="Per metric, the mean over the arm's listeners of their reward per slate"
    )


class SampleRatioOut(Model):
    counts: list[int]
    expected: list[float]
    statistic: float = Field(description="Pearson's chi-square")
    p_value: float
    mismatch: bool = Field(description="p < 0.001: the split is broken; do not trust the rest")


class ComparisonOut(Model):
    metric: str
    arm: str = Field(description="Compared with the first arm, the control")
    guardrail: bool
    difference: float | None = Field(description="Arm mean - control mean, per listener")
    low: float | None = Field(description="Always-valid interval: valid at every look")
    high: float | None
    cuped: bool = Field(description="Adjusted with the listeners' pre-period reward")
    verdict: Literal["better", "worse", "guardrail breached", "undecided", "too few listeners"]


class ExperimentStatusOut(Model):
    experiment: ExperimentOut
    method: str
    arms: list[ArmStatusOut]
    sample_ratio: SampleRatioOut
    comparisons: list[ComparisonOut]


def experiment_out(lc: Lifecycle) -> ExperimentOut:
    e = lc.experiment
    return ExperimentOut(
        name=e.name,
        status=lc.status,  # type: ignore[arg-type]
        hypothesis=e.hypothesis,
        arms=[
            ArmOut(
                name=a.name,
                weight=a.weight,
                params={k: float(v) for k, v in a.params.items()},
                policy_version=a.policy_version,
                logged_version=a.policy().logged_version,
            )
            for a in e.arms
        ],
        surfaces=list(e.surfaces),
        primary=e.primary.name,
        guardrails=[g.name for g in e.guardrails],
        minimum_detectable_effect=e.minimum_detectable_effect,
        alpha=e.alpha,
        started_at=lc.started_at,
        ended_at=lc.ended_at,
        shipped_arm=lc.shipped_arm,
        reason=lc.reason,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def status_out(lc: Lifecycle, a: Analysis) -> ExperimentStatusOut:
    srm = a.sample_ratio
    return ExperimentStatusOut(
        experiment=experiment_out(lc),
        method=a.method,
        arms=[
            ArmStatusOut(
                name=s.name,
                share=s.weight,
                listeners=s.listeners,
                slates=s.slates,
                means=dict(s.means),
            )
            for s in a.arms
        ],
        sample_ratio=SampleRatioOut(
            counts=list(srm.counts),
            expected=list(srm.expected),
            statistic=srm.statistic,
            p_value=srm.p_value,
            mismatch=srm.mismatch,
        ),
        comparisons=[
            ComparisonOut(
                metric=c.metric,
                arm=c.arm,
                guardrail=c.guardrail,
                difference=_finite(c.interval.difference) if c.interval else None,
                low=_finite(c.interval.low) if c.interval else None,
                high=_finite(c.interval.high) if c.interval else None,
                cuped=c.cuped,
                verdict=c.verdict,  # type: ignore[arg-type]
            )
            for c in a.comparisons
        ],
    )


def path_name(request: web.Request) -> str:
    return path_text(request, "name", NAME)


async def start(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ExperimentIn)
    return reply(experiment_out(await request.app[EXPERIMENTS].start(body)))


async def list_experiments(request: web.Request) -> web.StreamResponse:
    known = await request.app[EXPERIMENTS].all()
    return reply(ExperimentsOut(experiments=[experiment_out(lc) for lc in known.values()]))


async def status(request: web.Request) -> web.StreamResponse:
    lc, analysis = await request.app[EXPERIMENTS].status(path_name(request))
    return reply(status_out(lc, analysis))


async def stop(request: web.Request) -> web.StreamResponse:
    name = path_name(request)
    body = await parse_body(request, ExperimentStopIn)
    return reply(experiment_out(await request.app[EXPERIMENTS].stop(name, body.reason)))


async def ship(request: web.Request) -> web.StreamResponse:
    name = path_name(request)
    body = await parse_body(request, ExperimentShipIn)
    return reply(experiment_out(await request.app[EXPERIMENTS].ship(name, body.arm)))
