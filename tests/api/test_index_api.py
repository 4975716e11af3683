"""Indexes through the running gateway: the admin rebuild, status and readiness report them."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from gateway.client import outcome
from tests.api.conftest import Api, serving
from tests.integration.projection_helpers import eventually


@pytest.fixture
async def api(db_url: str, all_scopes_key: str) -> AsyncIterator[Api]:
    # No scheduled builds: the test decides when an index is built.
    async with (
        serving(db_url, run_index_builder=False) as url,
        ClientSession(timeout=ClientTimeout(total=60)) as session,
    ):
        yield Api(url, all_scopes_key, session)


async def status(api: Api) -> dict[str, Any]:
    reply = await api.get("/v1/admin/status")
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


async def test_admin_rebuild_publishes_an_index_every_route_reports(api: Api) -> None:
    items = [{"item_id": f"it{i}", "kind": "track", "attributes": {}} for i in range(40)]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    rng = random.Random(1)
    plays = [
        outcome(f"u{u}", f"it{rng.randrange(20) + (20 if u % 2 else 0)}", "stream_30s")
        for u in range(30)
        for _ in range(6)
    ]
    assert (await api.post("/v1/outcomes", {"outcomes": plays})).status == 200

    before = await status(api)
    assert before["index"]["version"] is None
    ready = (await api.get("/readyz")).json()
    assert ready["checks"]["index"] == "none yet"

    async def caught_up() -> bool:
        projections = (await status(api))["projections"]
        names = {p["name"] for p in projections}
        return names == {"rewards", "listeners"} and all(p["lag_events"] == 0 for p in projections)

    await eventually(caught_up, "the listeners projection to catch up")
    accepted = await api.post("/v1/admin/index/rebuild")
    assert accepted.status == 202, accepted.body

    async def built() -> bool:
        return (await status(api))["index"]["version"] is not None

    await eventually(built, "the index to be built and loaded")
    index = (await status(api))["index"]
    assert index["items"] == 40
    assert index["recall_at_10"] >= 0.9
    assert index["position"] > 0
    assert index["building"] is False
    assert index["error"] is None
    ready = (await api.get("/readyz")).json()
    assert ready["checks"]["index"] == f"ok (version {index['version']})"


async def test_rebuild_needs_the_admin_scope(api: Api, make_key: Any) -> None:
    from gateway.auth import Scope

    reply = await api.post("/v1/admin/index/rebuild", key=await make_key(Scope.CATALOG))
    assert reply.status == 403
