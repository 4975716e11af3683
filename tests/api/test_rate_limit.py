"""A key over its rate limit gets 429 with Retry-After; other keys are unaffected."""

from __future__ import annotations

import asyncpg
from aiohttp import ClientSession

from gateway.auth import Scope
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
