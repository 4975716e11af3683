"""The admin dashboard's routes over real HTTP on PostgreSQL: the page (public, without data),
the JSON it reads (admin scope) with figures checked against what the test made happen, and the
projection rebuild button."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import asyncpg
import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer

from domain.events import OutcomeKind
from domain.rewards import DEFAULT
from gateway.cli.demo_data import DemoClock
from gateway.client import outcome
from gateway.http.admin import ProjectionName
from gateway.http.app import create_app
from gateway.http.auth import Scope
from gateway.projections.definitions import PROJECTIONS
from gateway.settings import Settings
from tests.api.conftest import (
    Api,
    KeyMaker,
    admin_status,
    count_events,
    expect_problem,
    index_built,
    projections_caught_up,
)
from tests.integration.projection_helpers import eventually

ROUTES = [
    ("GET", "/v1/admin/dashboard", None),
    ("GET", "/v1/admin/dashboard/series", None),
    ("POST", "/v1/admin/projections/rebuild", {"projection": "rewards"}),
]


@asynccontextmanager
async def gateway_at(db_url: str, clock: DemoClock, key: str) -> AsyncIterator[Api]:
    """The real app whose clock the test sets (`with clock.at(t)`), as `segue demo` does to
    serve slates on past days."""
    with tempfile.TemporaryDirectory(prefix="segue-admin-") as data_dir:
        settings = Settings(
            database_url=db_url,
            data_dir=Path(data_dir),
            key_cache_seconds=0,
            run_index_builder=False,
        )
        server = TestServer(create_app(settings, db_url, clock=clock), host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession(timeout=ClientTimeout(total=60)) as session:
                yield Api(str(server.make_url("")).rstrip("/"), key, session)
        finally:
            await server.close()


# --- the series: what was served on which day, and what it earned ----------------------------


@dataclass(frozen=True)
class Response:
    position: int  # in the slate
    kind: str
    value: float | None
    after: timedelta  # since the slate was requested


@dataclass(frozen=True)
class Slate:
    days_ago: int | None  # None: now
    surface: str
    responses: tuple[Response, ...]


def r(position: int, kind: str, value: float | None, seconds: float) -> Response:
    return Response(position, kind, value, timedelta(seconds=seconds))


SLATES = [
    Slate(2, "home", (r(0, "stream_30s", 40_000, 30), r(1, "skip", 5_000, 60))),
    Slate(2, "home", (r(0, "save", None, 120),)),
    # A skip after the threshold weighs nothing, but is still an outcome of its kind.
    Slate(2, "music", (r(2, "complete", 200_000, 300), r(0, "skip", 40_000, 20))),
    # The second stream comes after its 6 h window: not attributed, so not charted.
    Slate(1, "home", (r(1, "stream_30s", 31_000, 30), r(0, "stream_30s", 31_000, 7 * 3600))),
    Slate(20, "home", (r(0, "save", None, 10),)),
    Slate(None, "music", (r(0, "like", None, 1),)),
]


def expected(served: list[tuple[Slate, datetime]], first: date, last: date) -> dict[str, Any]:
    """The series the dashboard should show, worked out from the plan with the reward
    definition's own weights and windows."""
    slates: dict[tuple[str, str], int] = defaultdict(int)
    outcomes: dict[tuple[str, str], int] = defaultdict(int)
    reward: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    kinds: dict[tuple[str, str], int] = defaultdict(int)
    for slate, at in served:
        day = at.date()
        if not first <= day <= last:
            continue
        key = (day.isoformat(), slate.surface)
        slates[key] += 1
        for response in slate.responses:
            kind = OutcomeKind(response.kind)
            if response.after > DEFAULT.window(kind):
                continue
            outcomes[key] += 1
            reward[key] += DEFAULT.weight(kind, response.value)
            kinds[(day.isoformat(), response.kind)] += 1
    return {
        "rewards": [
            {
                "day": day,
                "surface": surface,
                "slates": n,
                "outcomes": outcomes[(day, surface)],
                "reward": float(reward[(day, surface)]),
                "reward_per_slate": float(reward[(day, surface)]) / n,
            }
            for (day, surface), n in sorted(slates.items())
        ],
        "outcomes": [
            {"day": day, "kind": kind, "count": n} for (day, kind), n in sorted(kinds.items())
        ],
    }


async def serve_the_plan(api: Api, clock: DemoClock) -> list[tuple[Slate, datetime]]:
    items = [{"item_id": f"tr-{i}", "kind": "track", "attributes": {}} for i in range(6)]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    today = datetime.combine(datetime.now(UTC).date(), time(10), UTC)
    served: list[tuple[Slate, datetime]] = []
    batch: list[dict[str, Any]] = []
    for n, slate in enumerate(SLATES):
        body = {"user_id": f"u{n % 2}", "surface": slate.surface, "n": 3}
        if slate.days_ago is None:
            at = clock()
            reply = await api.post("/v1/recommendations", body)
        else:
            at = today - timedelta(days=slate.days_ago)
            with clock.at(at):
                reply = await api.post("/v1/recommendations", body)
        assert reply.status == 200, reply.body
        answer = reply.json()
        served.append((slate, at))
        for response in slate.responses:
            batch.append(
                outcome(
                    f"u{n % 2}",
                    answer["items"][response.position]["item_id"],
                    response.kind,
                    recommendation_id=answer["recommendation_id"],
                    value=response.value,
                    occurred_at=at + response.after,
                )
            )
    # Organic listening names no slate: it has no day served and is not charted.
    batch.append(outcome("u0", "tr-5", "save"))
    reply = await api.post("/v1/outcomes", {"outcomes": batch})
    assert reply.status == 200, reply.body
    return served


async def test_series_are_by_day_served_and_match_the_plan_and_the_rewards_projection(
    db_url: str, make_key: KeyMaker, db: asyncpg.Connection
) -> None:
    clock = DemoClock()
    async with gateway_at(db_url, clock, await make_key(*Scope)) as api:
        served = await serve_the_plan(api, clock)
        today = datetime.now(UTC).date()

        week = (await api.get("/v1/admin/dashboard/series?days=7")).json()
        assert (week["since"], week["until"]) == (
            (today - timedelta(days=6)).isoformat(),
            today.isoformat(),
        )
        assert week["definition_version"] == DEFAULT.version
        want = expected(served, today - timedelta(days=6), today)
        assert {k: week[k] for k in ("rewards", "outcomes")} == want
        # The plan, read by hand: two home slates two days ago earned 1 - 0.5 + 2.
        home = next(
            row
            for row in week["rewards"]
            if row["surface"] == "home" and row["day"] == (today - timedelta(days=2)).isoformat()
        )
        assert (home["slates"], home["outcomes"], home["reward_per_slate"]) == (2, 3, 1.25)

        # Today only; then three weeks, which reach the slate of 20 days ago.
        day = (await api.get("/v1/admin/dashboard/series?days=1")).json()
        assert {k: day[k] for k in ("rewards", "outcomes")} == expected(served, today, today)
        weeks = (await api.get("/v1/admin/dashboard/series?days=21")).json()
        assert {k: weeks[k] for k in ("rewards", "outcomes")} == expected(
            served, today - timedelta(days=20), today
        )
        assert len(weeks["rewards"]) == len(week["rewards"]) + 1

        # The views the series read agree with the rewards projection the policy learns from.
        await projections_caught_up(api)
        schema = await db.fetchval(
            "SELECT schema_name FROM projections WHERE name = 'rewards' AND status = 'live'"
        )
        rows = await db.fetch(
            f"SELECT (s.requested_at AT TIME ZONE 'UTC')::date AS day, s.surface, "
            f"count(*) AS slates, coalesce(sum(i.reward), 0)::float8 AS reward "
            f'FROM "{schema}".served s LEFT JOIN (SELECT rec_id, sum(reward) AS reward '
            f'FROM "{schema}".impressions GROUP BY rec_id) i ON i.rec_id = s.rec_id '
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        assert [(r["day"].isoformat(), r["surface"], r["slates"], r["reward"]) for r in rows] == [
            (x["day"], x["surface"], x["slates"], x["reward"]) for x in weeks["rewards"]
        ]

        for bad in ("0", "91", "x", "1.5"):
            expect_problem(await api.get(f"/v1/admin/dashboard/series?days={bad}"), 422, "days")
        expect_problem(await api.get("/v1/admin/dashboard/series?day=3"), 422, "day")


# --- the status part ---------------------------------------------------------------------------


def route(dashboard: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        x
        for x in dashboard["requests"]["routes"]
        if (x["method"], x["route"]) == (method, template)
    ]
    assert len(found) == 1, (method, template, dashboard["requests"])
    return found[0]


async def test_dashboard_reports_projections_index_and_this_process_requests(
    api_no_scheduled_builds: Api, db: asyncpg.Connection
) -> None:
    api = api_no_scheduled_builds
    for _ in range(5):
        assert (await api.get("/healthz")).status == 200
    for _ in range(2):
        assert (await api.get("/v1/items/nowhere")).status == 404

    first = (await api.get("/v1/admin/dashboard")).json()
    requests = first["requests"]
    assert requests["process_id"] == os.getpid()  # the test server runs in this process
    assert 0 < requests["window_seconds"] < 60  # a young app: since it started
    health = route(first, "GET", "/healthz")
    assert (health["requests"], health["client_errors"], health["errors"]) == (5, 0, 0)
    assert health["rate_per_second"] == pytest.approx(5 / requests["window_seconds"], rel=0.01)
    assert 0 < health["p50_seconds"] <= health["p95_seconds"] <= health["p99_seconds"] <= 5
    missing = route(first, "GET", "/v1/items/{item_id}")
    assert (missing["requests"], missing["client_errors"]) == (2, 2)
    assert requests["total"]["requests"] == sum(x["requests"] for x in requests["routes"])
    # The dashboard's own first request is counted by the next answer.
    again = (await api.get("/v1/admin/dashboard")).json()
    assert route(again, "GET", "/v1/admin/dashboard")["requests"] == 1

    assert first["index"]["version"] is None
    assert first["index"]["age_seconds"] is None
    assert first["rebuilds"] == []

    items = [{"item_id": f"it{i}", "kind": "track", "attributes": {}} for i in range(12)]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    plays = [
        outcome(f"u{u}", f"it{(u + k) % 12}", "stream_30s") for u in range(8) for k in range(4)
    ]
    assert (await api.post("/v1/outcomes", {"outcomes": plays})).status == 200
    await projections_caught_up(api)
    version = await index_built(api)

    board = (await api.get("/v1/admin/dashboard")).json()
    status = await admin_status(api)
    assert {k: v for k, v in board["index"].items() if k != "age_seconds"} == status["index"]
    assert board["index"]["version"] == version
    assert 0 <= board["index"]["age_seconds"] < 60
    assert board["index"]["recall_at_10"] is not None
    events = await count_events(db)
    assert [
        (p["name"], p["status"], p["lag_events"], p["events_applied"]) for p in board["projections"]
    ] == [("listeners", "live", 0, events), ("rewards", "live", 0, events)]


async def test_rebuilding_a_projection_from_the_dashboard(
    api_no_scheduled_builds: Api, db: asyncpg.Connection
) -> None:
    api = api_no_scheduled_builds
    items = [{"item_id": f"it{i}", "kind": "track", "attributes": {}} for i in range(5)]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    plays = [outcome(f"u{u}", f"it{u % 5}", "save") for u in range(10)]
    assert (await api.post("/v1/outcomes", {"outcomes": plays})).status == 200
    await projections_caught_up(api)

    reply = await api.post("/v1/admin/projections/rebuild", {"projection": "listeners"})
    assert reply.status == 202, reply.body
    job = reply.json()
    assert (job["projection"], job["state"], job["finished_at"]) == ("listeners", "running", None)

    seen: dict[str, Any] = {}

    async def done() -> bool:
        seen.update((await api.get("/v1/admin/dashboard")).json())
        return bool(seen["rebuilds"]) and seen["rebuilds"][0]["state"] != "running"

    await eventually(done, "the rebuild to finish")
    [finished] = seen["rebuilds"]
    events = await count_events(db)
    assert finished["state"] == "done", finished
    assert (finished["version"], finished["definition_version"]) == (2, DEFAULT.version)
    assert finished["started_at"] <= finished["finished_at"]
    listeners = [p for p in seen["projections"] if p["name"] == "listeners"]
    assert [(p["version"], p["status"], p["events_applied"]) for p in listeners] == [
        (2, "live", events)
    ]
    assert (
        await db.fetchval("SELECT status FROM projections WHERE name = 'listeners' AND version = 1")
        == "retired"
    )

    # The body names every projection there is, and only those.
    assert set(get_args(ProjectionName)) == set(PROJECTIONS)
    for body, field in (({"projection": "nope"}, "projection"), ({}, "projection")):
        expect_problem(await api.post("/v1/admin/projections/rebuild", body), 422, field)
    extra = {"projection": "rewards", "definition": "x"}
    expect_problem(await api.post("/v1/admin/projections/rebuild", extra), 422, "definition")


# --- refusals and the page ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_the_data_needs_an_admin_key(
    api: Api, make_key: KeyMaker, db: asyncpg.Connection, method: str, path: str, body: Any
) -> None:
    expect_problem(await api.request(method, path, json=body, key=None), 401, "Authorization")
    others = await make_key(*(s for s in Scope if s is not Scope.ADMIN))
    problem = expect_problem(
        await api.request(method, path, json=body, key=others), 403, "Authorization"
    )
    assert "admin" in problem["detail"]
    revoked = await make_key(Scope.ADMIN)
    await db.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", revoked.split("_")[1]
    )
    expect_problem(await api.request(method, path, json=body, key=revoked), 401, "Authorization")
    # Nothing was started by the refused requests.
    assert (await api.get("/v1/admin/dashboard")).json()["rebuilds"] == []


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_the_page_is_public_holds_no_data_and_allows_only_its_own_code(api: Api) -> None:
    reply = await api.get("/admin", key=None)
    assert reply.status == 200
    assert reply.content_type == "text/html"
    page = reply.text()
    assert page.startswith("<!doctype html>")
    assert re.findall(r"sk_\w", page) == []  # no key: "sk_…" is only the field's placeholder
    [script] = re.findall(r"<script>(.*?)</script>", page, re.S)
    [style] = re.findall(r"<style>(.*?)</style>", page, re.S)
    policy = dict(
        part.strip().split(" ", 1) for part in reply.headers["Content-Security-Policy"].split(";")
    )
    assert policy["script-src"] == _hash(script)
    assert policy["style-src"] == _hash(style)
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "src=" not in page.replace('href="data:,"', "")  # nothing fetched from elsewhere
    for path in (
        "/v1/admin/dashboard",
        "/v1/admin/dashboard/series",
        "/v1/admin/index/rebuild",
        "/v1/admin/projections/rebuild",
    ):
        assert path in script
