"""Retried requests through the real app: concurrent copies of a DELETE retire once, and an
`Idempotency-Key` makes a recommendation's retries return the slate first logged for it."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.api.conftest import Api, count_events, expect_problem


async def test_concurrent_deletes_of_an_item_retire_it_once(
    api: Api, db: asyncpg.Connection
) -> None:
    items = [{"item_id": f"del-{i}", "kind": "track", "attributes": {}} for i in range(8)]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    replies = await asyncio.gather(
        *(api.delete(f"/v1/items/del-{i}") for i in range(8) for _ in range(6))
    )
    assert all(r.status == 200 and r.json()["retired"] for r in replies)
    for i in range(8):
        versions = {r.json()["version"] for r in replies if r.json()["item_id"] == f"del-{i}"}
        assert versions == {2}, (i, versions)
    assert await count_events(db, "ItemRetired") == 8


async def test_an_idempotency_key_returns_the_first_slate_and_logs_it_once(
    api: Api, db: asyncpg.Connection
) -> None:
    items = [{"item_id": f"idem-{i}", "kind": "track", "attributes": {}} for i in range(20)]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    body = {"user_id": "listener-1", "surface": "music", "n": 5}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    replies = await asyncio.gather(
        *(api.post("/v1/recommendations", body, headers=key) for _ in range(5))
    )
    assert {r.status for r in replies} == {200}
    assert len({r.body for r in replies}) == 1
    again = await api.post("/v1/recommendations", body, headers=key)
    assert again.body == replies[0].body
    assert await count_events(db, "RecommendationServed") == 1

    other = await api.post("/v1/recommendations", {**body, "n": 4}, headers=key)
    expect_problem(other, 422, "Idempotency-Key", kind="idempotency-key-reused")
    bad = await api.post("/v1/recommendations", body, headers={"Idempotency-Key": "a b"})
    expect_problem(bad, 422, "Idempotency-Key", kind="validation")
    # Keys belong to the API key that sent them: the same text from elsewhere is a new request.
    plain = await api.post("/v1/recommendations", body)
    assert plain.json()["recommendation_id"] != replies[0].json()["recommendation_id"]
