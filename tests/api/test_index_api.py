"""Indexes through the running gateway: the admin rebuild, status and readiness report them."""

from __future__ import annotations

import random
from typing import Any

from gateway.client import outcome
from gateway.http.auth import Scope
from tests.api.conftest import Api, admin_status, index_built, projections_caught_up


async def test_admin_rebuild_publishes_an_index_every_route_reports(
    api_no_scheduled_builds: Api,
) -> None:
    api = api_no_scheduled_builds
    items = [{"item_id": f"it{i}", "kind": "track", "attributes": {}} for i in range(40)]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    rng = random.Random(1)
    plays = [
        outcome(f"u{u}", f"it{rng.randrange(20) + (20 if u % 2 else 0)}", "stream_30s")
        for u in range(30)
        for _ in range(6)
    ]
    assert (await api.post("/v1/outcomes", {"outcomes": plays})).status == 200

    before = await admin_status(api)
    assert before["index"]["version"] is None
    ready = (await api.get("/readyz")).json()
    assert ready["checks"]["index"] == "none yet"

    await projections_caught_up(api)
    version = await index_built(api)
    index = (await admin_status(api))["index"]
    assert index["version"] == version
    assert index["items"] == 40
    assert index["recall_at_10"] >= 0.9
    assert index["position"] > 0
    assert index["building"] is False
    assert index["error"] is None
    ready = (await api.get("/readyz")).json()
    assert ready["checks"]["index"] == f"ok (version {version})"


async def test_rebuild_needs_the_admin_scope(api_no_scheduled_builds: Api, make_key: Any) -> None:
    reply = await api_no_scheduled_builds.post(
        "/v1/admin/index/rebuild", key=await make_key(Scope.CATALOG)
    )
    assert reply.status == 403
