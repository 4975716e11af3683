"""API keys never appear in the gateway's logs: every logger at DEBUG (the access log included)
while keys succeed, fail, lack a scope, are revoked, are rate limited, arrive malformed enough to
upset the HTTP parser, and are asked for by a request that ends in an error."""

from __future__ import annotations

import logging

import asyncpg
import pytest
from aiohttp import ClientSession

from gateway.http.auth import Scope, create_key, revoke_key
from tests.api.conftest import Api, raw_http, serving

JSON = "application/json"


async def test_no_key_is_ever_logged(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    conn = await asyncpg.connect(db_url)
    try:
        _, good = await create_key(conn, "logged?", frozenset(Scope))
        _, narrow = await create_key(conn, "narrow", frozenset({Scope.INGEST}))
        revoked_key, revoked = await create_key(conn, "revoked", frozenset(Scope))
        assert await revoke_key(conn, revoked_key.key_id)
    finally:
        await conn.close()
    secrets = {good, narrow, revoked}
    async with (
        serving(db_url, rate_limit_burst=5, rate_limit_per_second=0.01) as url,
        ClientSession() as session,
    ):
        api = Api(url, good, session)
        assert (await api.put("/v1/items/logged", {"kind": "track"})).status == 200
        assert (await api.get("/v1/items/logged")).status == 200
        assert (await api.get("/v1/items/nope")).status == 404
        bad_json = await api.post("/v1/outcomes", data=b"{", headers={"Content-Type": JSON})
        assert bad_json.status == 400
        assert (await api.get("/v1/items/logged", key=narrow)).status == 403
        assert (await api.get("/v1/items/logged", key=revoked)).status == 401
        assert (await api.get("/v1/items/logged", key=good + "x")).status == 401
        assert (await api.get("/v1/items/logged", key=good[:-1])).status == 401
        no_scheme = await api.get("/v1/items/logged", headers={"Authorization": good}, key=None)
        assert no_scheme.status == 401
        # A key in the query string is the client's mistake (refused as an unknown parameter,
        # whose value the answer does not repeat); the access log still hides it.
        in_query = await api.get(f"/v1/items/logged?api_key={good}&auth=Bearer%20{good}")
        assert in_query.status == 422
        assert good.split("_", 2)[2].encode() not in in_query.body
        while (await api.get("/v1/items/logged")).status != 429:  # over the limit
            pass
        # Not HTTP: the parser's own error names the header line (in its answer, not a log).
        for junk in (b"\x00", b"\x01", b"\xff"):
            await raw_http(
                url,
                b"GET /v1/items/logged HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                + good.encode()
                + junk
                + b"\r\nConnection: close\r\n\r\n",
            )
    text = caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records)
    assert "aiohttp.access" in {r.name for r in caplog.records}, "the access log was not captured"
    for secret in secrets:
        # The part that is secret (the key id is not); the token itself may hold "_".
        body = secret.split("_", 2)[2]
        leaks = [r.__dict__ for r in caplog.records if body in repr(r.__dict__)]
        assert body not in text, f"a key's secret is in the logs: {leaks}"
        assert body[:12] not in text
