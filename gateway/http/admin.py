"""The admin dashboard: `GET /admin` (a page without data) and the admin-scoped JSON it reads.

The page is public and holds nothing: a browser cannot send `Authorization: Bearer` when it
navigates, so the page asks for the key, keeps it in the tab's sessionStorage, and sends it on
each `fetch` of the routes below, which are guarded like every /v1 route. Its script and style
are inlined, and a Content-Security-Policy allows exactly those (by hash) and requests to this
origin: nothing is loaded from elsewhere, and a value that slipped into the page as markup could
not run. The key is never part of a URL or the page.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, TypeAdapter, ValidationError

from gateway.http.appkeys import CLOCK, DSN, POOL, REBUILDS, REQUEST_WINDOW, SETTINGS
from gateway.http.handlers import index_out, parse_body, projection_out, reply
from gateway.http.problems import from_validation
from gateway.http.schemas import IndexOut, ProjectionStatusOut
from gateway.http.traffic import Counts, RequestWindow
from gateway.metrics import registry
from gateway.projections.rebuilds import RebuildJob, Rebuilds
from gateway.projections.runner import publish_lag
from gateway.projections.runner import status as projection_status
from gateway.serving.dashboard import serve_days
from gateway.serving.requests import Model

# --- bodies -----------------------------------------------------------------------------------

ProjectionName = Literal["rewards", "listeners"]  # the names of projections.definitions


class ProjectionRebuildIn(Model):
    projection: ProjectionName = Field(description="The projection to rebuild from the log")


class RebuildOut(Model):
    projection: str
    state: Literal["running", "done", "failed"]
    definition_version: str | None = Field(
        description="The reward definition it is rebuilt under: the live version's"
    )
    version: int | None = Field(description="The version being filled; live once done")
    position: int = Field(description="global_position of the last event applied to it")
    target: int = Field(description="The log's head when last looked at")
    started_at: datetime
    finished_at: datetime | None
    error: str | None


class DashboardIndexOut(IndexOut):
    age_seconds: float | None = Field(description="Time since the served version was built")


class RequestFiguresOut(Model):
    requests: int = Field(description="Requests answered within the window")
    rate_per_second: float
    client_errors: int = Field(description="4xx answers")
    errors: int = Field(description="5xx answers")
    p50_seconds: float | None = Field(description="Estimated from the latency histogram")
    p95_seconds: float | None
    p99_seconds: float | None
    mean_seconds: float | None


class RouteFiguresOut(RequestFiguresOut):
    method: str
    route: str = Field(description="The route's template, or `unmatched`")


class RequestsOut(Model):
    process_id: int = Field(
        description="The process whose counters these are: with `serve --workers N` each "
        "worker answers with its own"
    )
    window_seconds: float = Field(
        description="The span the figures cover: about the last minute while the dashboard is "
        "read every few seconds, since this process started while it is younger"
    )
    total: RequestFiguresOut
    routes: list[RouteFiguresOut] = Field(description="Busiest first")


class DashboardOut(Model):
    generated_at: datetime
    projections: list[ProjectionStatusOut]
    rebuilds: list[RebuildOut] = Field(
        description="The latest projection rebuild of each projection started by this process; "
        "a rebuild started elsewhere shows as a `building` version in `projections`"
    )
    index: DashboardIndexOut
    requests: RequestsOut


class SurfaceDayOut(Model):
    day: date = Field(description="The UTC day the slates were served (requested)")
    surface: str
    slates: int
    outcomes: int = Field(description="Outcomes attributed to those slates")
    reward: float = Field(description="Their weights under the reward definition")
    reward_per_slate: float


class KindDayOut(Model):
    day: date = Field(description="The UTC day the slates they are attributed to were served")
    kind: str
    count: int


class SeriesOut(Model):
    since: date = Field(description="The first day covered (UTC)")
    until: date = Field(description="The last day covered: today (UTC)")
    definition_version: str | None
    rewards: list[SurfaceDayOut] = Field(description="By day, then surface")
    outcomes: list[KindDayOut] = Field(description="By day, then kind")


# --- the page ---------------------------------------------------------------------------------

_STATIC = Path(__file__).with_name("static")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def _page() -> tuple[bytes, dict[str, str]]:
    style = (_STATIC / "admin.css").read_text()
    script = (_STATIC / "admin.js").read_text()
    page = (_STATIC / "admin.html").read_text()
    page = page.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256(script)}",
            f"style-src {_sha256(style)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",  # no framing: nobody can dress the buttons up as theirs
        ]
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return page.encode(), headers


async def admin_page(request: web.Request) -> web.StreamResponse:
    body, headers = _page()
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)


# --- the JSON ---------------------------------------------------------------------------------


def rebuild_out(job: RebuildJob) -> RebuildOut:
    return RebuildOut(
        projection=job.projection,
        state=job.state,
        definition_version=job.definition_version,
        version=job.version,
        position=job.position,
        target=job.target,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
    )


def _figures(counts: Counts, seconds: float) -> dict[str, float | int | None]:
    classes = {"4": 0, "5": 0}
    for status, n in counts.statuses.items():
        if status[:1] in classes:
            classes[status[:1]] += int(n)
    return {
        "requests": int(counts.requests),
        "rate_per_second": counts.requests / seconds if seconds > 0 else 0.0,
        "client_errors": classes["4"],
        "errors": classes["5"],
        "p50_seconds": counts.quantile(0.5),
        "p95_seconds": counts.quantile(0.95),
        "p99_seconds": counts.quantile(0.99),
        "mean_seconds": counts.mean,
    }


def requests_out(window: RequestWindow) -> RequestsOut:
    figures = window.figures()
    seconds = figures.seconds
    routes = sorted(figures.routes.items(), key=lambda kv: (-kv[1].requests, kv[0]))
    return RequestsOut(
        process_id=os.getpid(),
        window_seconds=seconds,
        total=RequestFiguresOut.model_validate(_figures(figures.total(), seconds)),
        routes=[
            RouteFiguresOut.model_validate(
                {"method": method, "route": route, **_figures(counts, seconds)}
            )
            for (method, route), counts in routes
        ],
    )


async def dashboard(request: web.Request) -> web.StreamResponse:
    app = request.app
    # Counting the lag reads a table that grows with the log: the slow bound, as the status.
    rows = await projection_status(app[POOL], lag_timeout=app[SETTINGS].slow_query_timeout_seconds)
    publish_lag(rows)
    now = app[CLOCK]()
    index = index_out(request)
    age = (now - index.built_at).total_seconds() if index.built_at is not None else None
    return reply(
        DashboardOut(
            generated_at=now,
            projections=[projection_out(r) for r in rows],
            rebuilds=[rebuild_out(job) for job in app[REBUILDS].jobs()],
            index=DashboardIndexOut(**index.model_dump(), age_seconds=age),
            requests=requests_out(app[REQUEST_WINDOW]),
        )
    )


MAX_DAYS = 90
_DAYS: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_DAYS)])


async def dashboard_series(request: web.Request) -> web.StreamResponse:
    try:
        days = _DAYS.validate_python(request.query.get("days", "14"))
    except ValidationError as exc:
        raise from_validation(exc, prefix="days") from None
    app = request.app
    today = app[CLOCK]().astimezone(UTC).date()
    found = await serve_days(
        app[POOL], today, days, timeout=app[SETTINGS].slow_query_timeout_seconds
    )
    return reply(
        SeriesOut(
            since=found.first,
            until=found.last,
            definition_version=found.definition_version,
            rewards=[
                SurfaceDayOut(
                    day=s.day,
                    surface=s.surface,
                    slates=s.slates,
                    outcomes=s.outcomes,
                    reward=s.reward,
                    reward_per_slate=s.per_slate,
                )
                for s in found.surfaces
            ],
            outcomes=[KindDayOut(day=k.day, kind=k.kind, count=k.count) for k in found.kinds],
        )
    )


async def rebuild_projection(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ProjectionRebuildIn)
    return reply(rebuild_out(request.app[REBUILDS].start(body.projection)), status=202)


async def admin_context(app: web.Application) -> AsyncIterator[None]:
    """The request counters' first reading, and this process's projection rebuilds (stopped,
    their half-filled versions retired, when the app stops)."""
    # Every worker's requests under `serve --workers` (multiprocess mode), as a scrape sees.
    app[REQUEST_WINDOW] = RequestWindow(registry())
    rebuilds = Rebuilds(app[DSN], app[CLOCK])
    app[REBUILDS] = rebuilds
    yield
    await rebuilds.close()
