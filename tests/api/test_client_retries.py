"""The client's retry policy over real HTTP, against a stub server that answers as Segue does
when the database is away (503 with Retry-After) or a key is over its rate (429)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.client import SegueClient, SegueError


class Flaky:
    def __init__(self, failures: list[tuple[int, str | None]]) -> None:
        self.failures = failures
        self.keys: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("Idempotency-Key"))
        if self.failures:
            status, retry_after = self.failures.pop(0)
            headers = {"Retry-After": retry_after} if retry_after else {}
            return web.json_response(
                {"type": "x", "title": "t", "status": status, "detail": "d"},
                status=status,
                headers=headers,
                content_type="application/problem+json",
            )
        return web.json_response({"recommendation_id": "r", "items": []})


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Flaky]]:
    flaky = Flaky([])
    app = web.Application()
    app.router.add_post("/v1/recommendations", flaky.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), flaky
    finally:
        await server.close()


async def test_503_and_429_are_retried_after_retry_after_with_one_idempotency_key(
    served: tuple[str, Flaky],
) -> None:
    url, flaky = served
    flaky.failures = [(503, "1"), (429, "1"), (503, None)]
    async with SegueClient(url, "sk_x", retry_seconds=30) as client:
        started = time.monotonic()
        answer = await client.recommend("u1")
        took = time.monotonic() - started
    assert answer["recommendation_id"] == "r"
    assert client.retries == 3
    assert took >= 2.0  # the two Retry-After seconds were honoured
    assert len(flaky.keys) == 4
    assert flaky.keys[0] is not None
    assert len(set(flaky.keys)) == 1  # every attempt of the call sent the same key


async def test_other_errors_are_not_retried_and_the_budget_is_kept(
    served: tuple[str, Flaky],
) -> None:
    url, flaky = served
    flaky.failures = [(422, None)]
    async with SegueClient(url, "sk_x") as client:
        with pytest.raises(SegueError) as caught:
            await client.recommend("u1")
    assert caught.value.status == 422
    assert client.retries == 0
    flaky.failures = [(503, "1")] * 10
    async with SegueClient(url, "sk_x", retry_seconds=2.5) as client:
        with pytest.raises(SegueError) as caught:
            await client.recommend("u1")
    assert caught.value.status == 503
    assert 2 <= client.retries <= 4
    # Two calls, two keys: a key is per call, not per client.
    async with SegueClient(url, "sk_x", retry_seconds=0) as client:
        flaky.failures, flaky.keys = [], []
        await client.recommend("u1")
        await client.recommend("u1")
    assert flaky.keys[0] != flaky.keys[1]
