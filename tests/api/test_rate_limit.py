"""A key over its rate limit gets 429 with Retry-After; other keys are unaffected."""

from __future__ import annotations

import asyncpg
from aiohttp import ClientSession

from gateway.http.auth import Scope
from tests.api.conftest import Api, expect_problem, key_maker, serving


async def test_a_key_over_its_limit_is_told_when_to_come_back(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        make = key_maker(conn)
        busy, quiet = await make(Scope.CATALOG), await make(Scope.CATALOG)
    finally:
        await conn.close()
    async with (
        serving(db_url, rate_limit_burst=3, rate_limit_per_second=0.2) as url,
        ClientSession() as session,
    ):
        api = Api(url, busy, session)
        for _ in range(3):
            assert (await api.get("/v1/items/nope")).status == 404
        limited = await api.get("/v1/items/nope")
        expect_problem(limited, 429, "Authorization", kind="rate-limited")
        assert limited.headers["Retry-After"] == "5"  # one token at 0.2/s
        assert (await api.get("/v1/items/nope", key=quiet)).status == 404
        # Unauthenticated requests never reach the limiter: a bad key is a 401, not a 429.
        assert (await api.get("/v1/items/nope", key="sk_x_y")).status == 401


async def test_every_guarded_route_is_rate_limited(db_url: str) -> None:
    """The limiter sits in the guard every /v1 route of ENDPOINTS goes through: each route, with
    a fresh key of its scope, answers 429 with Retry-After once that key's burst is spent."""
    from gateway.http.routes import ENDPOINTS

    guarded = [ep for ep in ENDPOINTS if ep.scope is not None]
    conn = await asyncpg.connect(db_url)
    try:
        make = key_maker(conn)
        keys = [await make(ep.scope) for ep in guarded if ep.scope is not None]
    finally:
        await conn.close()
    async with (
        serving(db_url, rate_limit_burst=1, rate_limit_per_second=0.01) as url,
        ClientSession() as session,
    ):
        for ep, key in zip(guarded, keys, strict=True):
            api = Api(url, key, session)
            path = ep.path.replace("{item_id}", "rl-item").replace("{user_id}", "rl-user")
            first = await api.request(ep.method, path)
            assert first.status != 429, (ep.path, first.body)
            limited = await api.request(ep.method, path)
            expect_problem(limited, 429, "Authorization", kind="rate-limited")
            assert limited.headers["Retry-After"] == "100", ep.path  # one token at 0.01/s
