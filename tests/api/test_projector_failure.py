"""A projector that cannot fold an event is supervised: it stops at that event (never skips it),
retries with backoff, and says so everywhere an operator looks."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
from aiohttp import ClientSession

from gateway.client import outcome
from tests.api.conftest import Api, serving


async def _until(check: object, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_event_the_fold_cannot_apply_stops_the_projector_there(
    db_url: str, all_scopes_key: str
) -> None:
    async with serving(db_url, run_index_builder=False) as url, ClientSession() as session:
        api = Api(url, all_scopes_key, session)
        before = [outcome(f"u{k}", f"tr-{k}", "stream_30s") for k in range(3)]
        assert (await api.post("/v1/outcomes", {"outcomes": before})).status == 200
        conn = await asyncpg.connect(db_url)
        try:
            # An outcome whose payload the decoder cannot read (a producer bypassing the API).
            bad = await conn.fetchval(
                "INSERT INTO events (stream_id, stream_version, event_id, event_type, "
                "schema_version, payload) VALUES ('outcome-broken', 1, $1, 'OutcomeRecorded', 1, "
                "'{\"kind\": 42}') RETURNING global_position",
                uuid.uuid4(),
            )
            after = [outcome(f"v{k}", f"tr-{k}", "save") for k in range(3)]
            assert (await api.post("/v1/outcomes", {"outcomes": after})).status == 200

            async def stopped() -> bool:
                reply = await api.get("/v1/admin/status")
                rows = {p["name"]: p for p in reply.json()["projections"]}
                return all(
                    rows.get(n, {}).get("status") == "failed" for n in ("rewards", "listeners")
                )

            await _until(stopped, "both projections to report the event")
            status = (await api.get("/v1/admin/status")).json()
            for p in status["projections"]:
                assert p["failed_position"] == bad
                assert p["error"]
                # Everything before the event was applied, nothing at or after it.
                assert p["position"] < bad
                assert p["lag_events"] == 4  # the bad one and the three after it

            ready = await api.get("/readyz")
            assert ready.status == 200  # degraded, still answering
            assert ready.json()["status"] == "degraded"
            assert f"stopped at event {bad}" in ready.json()["checks"]["projections"]
            metrics = (await api.get("/metrics")).body.decode()
            assert 'segue_projection_failed{projection="rewards"} 1.0' in metrics

            # It keeps retrying, and never gets past the event.
            await asyncio.sleep(2.0)
            again = (await api.get("/v1/admin/status")).json()
            assert [p["position"] for p in again["projections"]] == [
                p["position"] for p in status["projections"]
            ]
            assert (await api.get("/healthz")).status == 200
        finally:
            await conn.close()
