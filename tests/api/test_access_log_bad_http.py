"""The route-only access log (`segue serve`'s) copes with requests aiohttp's parser refused:
found by the schemathesis CLI, whose NUL-header probe made the logger raise (an "Unhandled
exception" at ERROR for each such request)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.http.access_log import RouteAccessLogger
from gateway.http.app import create_app
from gateway.settings import Settings
from tests.api.conftest import raw_http


async def test_unparseable_requests_are_logged_as_unmatched(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="segue-api-") as data_dir:
        app = create_app(Settings(database_url=db_url, data_dir=Path(data_dir)), db_url)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(access_log_class=RouteAccessLogger)
        try:
            url = str(server.make_url("")).rstrip("/")
            for junk in (b"X-Probe: \x00", b"X-Probe: \x01", b"Bad Header Line"):
                answer = await raw_http(
                    url, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + junk + b"\r\n\r\n"
                )
                assert answer.startswith(b"HTTP/1.0 400 "), answer[:200]
            fine = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            assert (await raw_http(url, fine)).startswith(b"HTTP/1.1 200 ")
        finally:
            await server.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert sum(" unmatched 400 " in line for line in lines) == 3, lines
    assert any(line.startswith("GET /healthz 200 ") for line in lines), lines
    assert not [r for r in caplog.records if r.getMessage() == "Unhandled exception"]
