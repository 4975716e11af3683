"""Rewards and projection status over real HTTP, with the projectors running inside the gateway
(single-node mode): what a client reads back after serving slates and reporting outcomes, now
and as of earlier instants, the long-term estimate, and the errors.

"The projection has caught up" is read from `/v1/admin/status` (no events behind) under a
deadline; instants are taken from the database's clock, which stamps the events.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import numpy as np
import pytest
from aiohttp import ClientSession, ClientTimeout
from prometheus_client.parser import text_string_to_metric_families

from domain.events import RecommendationServed, SlateEntry
from domain.longterm import posterior, uninformed_prior
from domain.reward_fold import day_number
from domain.rewards import DEFAULT
from gateway.client import outcome
from gateway.http.auth import Scope
from tests.api.conftest import Api, KeyMaker, Reply, expect_problem, serving
from tests.integration.projection_helpers import append_in_order, day_start, eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def gateway(db_url: str) -> AsyncIterator[str]:
    async with serving(db_url) as url:
        yield url


@pytest.fixture
async def api(gateway: str, all_scopes_key: str) -> AsyncIterator[Api]:
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        yield Api(gateway, all_scopes_key, session)


async def db_now(db: asyncpg.Connection) -> datetime:
    now: datetime = await db.fetchval("SELECT clock_timestamp()")
    return now


def at(t: datetime) -> str:
    return quote(t.astimezone(UTC).isoformat().replace("+00:00", "Z"))


async def projected(api: Api) -> dict[str, Any]:
    """Wait until both projections are live and have applied every committed event."""
    seen: dict[str, Any] = {}

    async def done() -> bool:
        reply = await api.get("/v1/admin/status")
        assert reply.status == 200, reply.body
        seen.update(reply.json())
        names = {p["name"] for p in seen["projections"]}
        return names == {"rewards", "listeners"} and all(
            p["lag_events"] == 0 for p in seen["projections"]
        )

    await eventually(done, "the projections to catch up")
    return seen


async def rewards(api: Api, item: str, as_of: datetime | None = None) -> dict[str, Any]:
    query = "" if as_of is None else f"?as_of={at(as_of)}"
    reply = await api.get(f"/v1/items/{item}/rewards{query}")
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


async def post_outcomes(api: Api, *outcomes: dict[str, Any]) -> None:
    reply = await api.post("/v1/outcomes", {"outcomes": list(outcomes)})
    assert reply.status == 200, reply.body
    assert reply.json() == {"accepted": len(outcomes), "duplicates": 0}


async def put_items(api: Api, items: dict[str, dict[str, Any]]) -> None:
    for item_id, body in items.items():
        reply = await api.put(f"/v1/items/{item_id}", body)
        assert reply.status == 200, reply.body


PRIOR = uninformed_prior(DEFAULT.horizon_days)
PRIOR_ESTIMATE = float(PRIOR.mean.sum())
ONES = np.ones(DEFAULT.horizon_days)
PRIOR_VARIANCE = float(ONES @ PRIOR.cov @ ONES)


async def test_rewards_of_served_and_reported_items_now_and_as_of_earlier(
    api: Api, db: asyncpg.Connection
) -> None:
    await put_items(
        api,
        {
            "ep-a": {"kind": "episode", "attributes": {"show": "daily"}},
            "tr-c": {"kind": "track", "attributes": {"artist": "someone"}},
        },
    )
    before = await db_now(db)
    reply = await api.post(
        "/v1/recommendations",
        {"user_id": "alice", "surface": "search", "n": 2, "candidates": ["ep-a", "tr-c"]},
    )
    assert reply.status == 200, reply.body
    served = reply.json()
    rec = served["recommendation_id"]
    position = {s["item_id"]: s["position"] for s in served["items"]}
    assert set(position) == {"ep-a", "tr-c"}
    after_serving = await db_now(db)
    await post_outcomes(
        api,
        outcome("alice", "ep-a", "stream_30s", recommendation_id=rec, value=45_000),
        outcome("alice", "ep-a", "complete", recommendation_id=rec),
        outcome("alice", "tr-c", "skip", recommendation_id=rec, value=1_000),
        outcome("alice", "ep-a", "save"),  # not from the slate: organic
        outcome("bob", "tr-c", "like"),
    )
    await projected(api)

    ep = await rewards(api, "ep-a")
    assert ep["item_id"] == "ep-a"
    assert ep["definition_version"] == DEFAULT.version
    assert ep["served"] == 1
    assert ep["outcomes"] == {"stream_30s": 1, "complete": 1, "save": 1}
    assert ep["reward"] == {"sum": 2.0, "mean": 2.0, "count": 1}
    assert ep["positions"] == {str(position["ep-a"]): 1}
    assert ep["by_surface"] == {
        "search": {
            "served": 1,
            "outcomes": {"stream_30s": 1, "complete": 1},
            "reward": {"sum": 2.0, "mean": 2.0, "count": 1},
        }
    }
    # A trace started today: no day of it is over, so the estimate is the prior's.
    assert ep["long_term"]["observed_traces"] == 0
    assert ep["long_term"]["horizon_days"] == DEFAULT.horizon_days
    assert ep["long_term"]["estimate"] == pytest.approx(PRIOR_ESTIMATE)
    assert ep["long_term"]["variance"] == pytest.approx(PRIOR_VARIANCE)
    assert ep["projected_through"] is not None

    tr = await rewards(api, "tr-c")
    assert (tr["served"], tr["outcomes"]) == (1, {"skip": 1, "like": 1})
    assert tr["reward"] == {"sum": -0.5, "mean": -0.5, "count": 1}
    assert tr["positions"] == {str(position["tr-c"]): 1}
    assert tr["by_surface"]["search"]["outcomes"] == {"skip": 1}

    # As of earlier instants: served but nothing reported yet; before anything at all.
    then = await rewards(api, "ep-a", after_serving)
    assert (then["served"], then["outcomes"]) == (1, {})
    assert then["reward"] == {"sum": 0.0, "mean": 0.0, "count": 1}
    assert then["by_surface"]["search"]["served"] == 1
    assert then["positions"] == {str(position["ep-a"]): 1}
    assert then["as_of"].startswith(after_serving.astimezone(UTC).isoformat()[:19])
    empty = await rewards(api, "ep-a", before)
    assert (empty["served"], empty["outcomes"], empty["positions"], empty["by_surface"]) == (
        0,
        {},
        {},
        {},
    )
    assert empty["reward"] == {"sum": 0.0, "mean": 0.0, "count": 0}


async def test_long_term_activity_reaches_the_estimate(api: Api, db_url: str) -> None:
    """A slate served five days ago (appended to the log as the gateway would have), its stream,
    and the listener coming back to the show on later days: observed days feed the estimate."""
    await put_items(
        api,
        {
            "ep-1": {"kind": "episode", "attributes": {"show": "weekly"}},
            "ep-2": {"kind": "episode", "attributes": {"show": "weekly"}},
        },
    )
    today = day_number(datetime.now(UTC))
    start = today - 5
    noon = day_start(start) + timedelta(hours=12)
    rec = uuid.uuid4()
    await append_in_order(
        db_url,
        [
            RecommendationServed(
                recommendation_id=rec,
                user="someone",
                surface="home",
                context={},
                slate=(SlateEntry("ep-1", 0, 0.9, 0.5), SlateEntry("ep-2", 1, 0.5, 0.5)),
                policy_name="test",
                policy_version="1",
                index_version="none",
                requested_at=noon,
            )
        ],
    )
    await post_outcomes(
        api,
        outcome("carol", "ep-1", "stream_30s", recommendation_id=rec, occurred_at=noon),
        outcome("carol", "ep-2", "stream_30s", occurred_at=noon + timedelta(days=1)),
        outcome("carol", "ep-1", "stream_start", occurred_at=noon + timedelta(days=2)),
        outcome("carol", "ep-1", "complete", occurred_at=noon + timedelta(days=3)),
        outcome("dave", "ep-1", "complete", occurred_at=noon + timedelta(days=2)),
    )
    await projected(api)

    body = await rewards(api, "ep-1")
    assert body["served"] == 1
    assert body["outcomes"] == {"stream_30s": 1, "stream_start": 1, "complete": 2}
    assert body["by_surface"]["home"]["outcomes"] == {"stream_30s": 1}
    assert body["reward"] == {"sum": 1.0, "mean": 1.0, "count": 1}
    # Days 1..4 of the trace are over; carol came back on days 1 and 3.
    sums, counts = np.zeros(DEFAULT.horizon_days), np.zeros(DEFAULT.horizon_days)
    counts[:4] = 1
    sums[[0, 2]] = 1
    want = posterior(PRIOR, sums, counts)
    lt = body["long_term"]
    assert lt["observed_traces"] == 1
    assert lt["estimate"] == pytest.approx(want.estimate, rel=1e-9)
    assert lt["variance"] == pytest.approx(want.variance, rel=1e-9)
    assert lt["estimate"] != pytest.approx(PRIOR_ESTIMATE)


async def test_as_of_must_be_a_past_instant_with_a_time_zone(
    api: Api, db: asyncpg.Connection
) -> None:
    await put_items(api, {"tr-1": {"kind": "track"}})
    await projected(api)
    future = await db_now(db) + timedelta(hours=1)
    problem = expect_problem(
        await api.get(f"/v1/items/tr-1/rewards?as_of={at(future)}"), 422, "as_of"
    )
    assert "future" in problem["detail"]
    for bad in ("yesterday", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "", "1700000000x"):
        reply = await api.get(f"/v1/items/tr-1/rewards?as_of={quote(bad)}")
        expect_problem(reply, 422, "as_of")
    expect_problem(await api.get("/v1/items/no-such-item/rewards"), 404, "item_id")
    past = await api.get(f"/v1/items/tr-1/rewards?as_of={at(datetime(2020, 1, 1, tzinfo=UTC))}")
    assert past.status == 200, past.body
    assert past.json()["served"] == 0


async def test_rewards_need_the_catalog_scope_and_status_the_admin_scope(
    api: Api, make_key: KeyMaker
) -> None:
    await put_items(api, {"tr-1": {"kind": "track"}})
    await projected(api)
    others = [s for s in Scope if s is not Scope.CATALOG]
    for path, scope, wrong in (
        ("/v1/items/tr-1/rewards", Scope.CATALOG, others),
        ("/v1/admin/status", Scope.ADMIN, [s for s in Scope if s is not Scope.ADMIN]),
    ):
        problem = expect_problem(
            await api.get(path, key=await make_key(*wrong)), 403, "Authorization", kind="forbidden"
        )
        assert scope.value in problem["detail"]
        expect_problem(await api.get(path, key=None), 401, "Authorization")
        reply = await api.get(path, key=await make_key(scope))
        assert reply.status == 200, reply.body


async def test_status_shows_each_projection_and_metrics_export_the_lag(
    api: Api, db: asyncpg.Connection
) -> None:
    await put_items(api, {f"tr-{i}": {"kind": "track"} for i in range(3)})
    await post_outcomes(api, *(outcome("erin", f"tr-{i}", "stream_30s") for i in range(3)))
    status = await projected(api)
    last = await db.fetchval("SELECT max(global_position) FROM events")
    count = await db.fetchval("SELECT count(*) FROM events")
    assert status["events"] == count
    projections = {p["name"]: p for p in status["projections"]}
    for name in ("rewards", "listeners"):
        p = projections[name]
        assert (p["status"], p["version"], p["definition_version"]) == ("live", 1, DEFAULT.version)
        assert (p["position"], p["events_applied"], p["lag_events"]) == (last, count, 0)
        assert p["lag_seconds"] == 0.0

    reply: Reply = await api.get("/metrics", key=None)
    assert reply.status == 200
    lag = {
        sample.labels["projection"]: sample.value
        for family in text_string_to_metric_families(reply.text())
        if family.name == "segue_projection_lag_seconds"
        for sample in family.samples
    }
    assert lag.get("rewards") == 0.0
    assert lag.get("listeners") == 0.0
