"""The real gateway over real HTTP: `create_app` on a fresh migrated database, served by aiohttp's
TestServer on a socket on 127.0.0.1, called with aiohttp or `SegueClient` like any client would.

`api` sends raw requests (any body bytes, any headers) and `expect_problem` checks the RFC 9457
answer: status, `application/problem+json`, a stable `type`, a readable `detail`, the `field`.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
import yarl
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.client import SegueClient
from gateway.http.app import create_app
from gateway.http.auth import Scope, create_key
from gateway.http.problems import PROBLEM_JSON, TYPE_BASE
from gateway.settings import Settings
from tests.api.served import served, served_env  # noqa: F401 (fixtures: `segue serve` itself)
from tests.conftest import fresh_database

KeyMaker = Callable[..., Awaitable[str]]


# --- building blocks, shared by the per-test and the per-module fixtures ---------------------


@asynccontextmanager
async def serving(db_url: str, **settings: Any) -> AsyncIterator[str]:
    """The real app on a real socket; yields its base URL (no trailing slash). Keys are not
    cached, so a revocation is seen by the very next request; files (indexes) go to a folder of
    its own; `settings` override the rest."""
    with tempfile.TemporaryDirectory(prefix="segue-api-") as data_dir:
        defaults = {"key_cache_seconds": 0, "data_dir": Path(data_dir)}
        app = create_app(Settings(database_url=db_url, **{**defaults, **settings}), db_url)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/")
        finally:
            await server.close()


@asynccontextmanager
async def connected(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


def key_maker(conn: asyncpg.Connection) -> KeyMaker:
    """`await make_key(Scope.RECOMMEND, ...)` -> a new key's secret with exactly those scopes."""

    async def make(*scopes: Scope) -> str:
        _, secret = await create_key(conn, "api-test", frozenset(scopes))
        return secret

    return make


# --- per test: a gateway on the test's own fresh database -----------------------------------


@pytest.fixture
async def base_url(db_url: str) -> AsyncIterator[str]:
    async with serving(db_url) as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the gateway's database, to look behind the API."""
    async with connected(db_url) as conn:
        yield conn


@pytest.fixture
def make_key(db: asyncpg.Connection) -> KeyMaker:
    return key_maker(db)


@pytest.fixture
async def all_scopes_key(make_key: KeyMaker) -> str:
    return await make_key(*Scope)


@pytest.fixture
async def client(base_url: str, all_scopes_key: str) -> AsyncIterator[SegueClient]:
    async with SegueClient(base_url, all_scopes_key, timeout=30) as segue:
        yield segue


@pytest.fixture
async def api(base_url: str, all_scopes_key: str) -> AsyncIterator[Api]:
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        yield Api(base_url, all_scopes_key, session)


# --- per module: one gateway and database for a module's many small requests -----------------
# For modules of many small tests that neither depend on nor disturb each other's data (they
# use fresh ids and compare counts before and after). Such a module runs its tests in the module's
# loop (`pytestmark = pytest.mark.asyncio(loop_scope="module")`) and overrides
# `_no_unhandled_loop_errors`, `api` and `db` with module-loop versions of its own.


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_db_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    async with fresh_database(server_url, template_url) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_base_url(shared_db_url: str) -> AsyncIterator[str]:
    async with serving(shared_db_url) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_db(shared_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connected(shared_db_url) as conn:
        yield conn


@pytest.fixture(scope="module")
def shared_make_key(shared_db: asyncpg.Connection) -> KeyMaker:
    return key_maker(shared_db)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_api(shared_base_url: str, shared_make_key: KeyMaker) -> AsyncIterator[Api]:
    key = await shared_make_key(*Scope)
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        yield Api(shared_base_url, key, session)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def text(self) -> str:
        return self.body.decode()


@dataclass(slots=True)
class Api:
    """Raw HTTP to the gateway. `json=` is encoded with orjson; `data=` is sent byte for byte."""

    base_url: str
    key: str | None
    session: ClientSession

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        key: str | EllipsisType | None = ...,
        encoded: bool = False,
    ) -> Reply:
        """`key=None` sends no Authorization header; leave it out to send the fixture's key.
        `encoded=True` sends `path` exactly as given (already percent-encoded), where otherwise
        the client would re-quote it and resolve `.` and `..` segments."""
        sent: dict[str, str] = {}
        use_key = self.key if isinstance(key, EllipsisType) else key
        if use_key is not None:
            sent["Authorization"] = f"Bearer {use_key}"
        body = data
        if json is not None:
            body = orjson.dumps(json)
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        # A BytesIO, because aiohttp warns (an error here) about large raw bytes bodies.
        payload = io.BytesIO(body) if body is not None else None
        url = yarl.URL(self.base_url + path, encoded=True) if encoded else self.base_url + path
        async with self.session.request(method, url, data=payload, headers=sent) as resp:
            raw = await resp.read()
            return Reply(resp.status, resp.content_type, CIMultiDict(resp.headers), raw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.request("POST", path, json=json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.request("PUT", path, json=json, **kw)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)


def expect_problem(
    reply: Reply, status: int, field: str | None, *, kind: str | None = None
) -> dict[str, Any]:
    """Assert `reply` is an RFC 9457 problem with this status naming `field`; return its body."""
    assert reply.status == status, f"expected {status}, got {reply.status}: {reply.body[:500]!r}"
    assert reply.content_type == PROBLEM_JSON, reply.content_type
    problem = reply.json()
    assert isinstance(problem, dict), problem
    assert problem.get("status") == status, problem
    assert isinstance(problem.get("type"), str), problem
    assert problem["type"].startswith(TYPE_BASE), problem
    if kind is not None:
        assert problem["type"] == TYPE_BASE + kind, problem
    assert isinstance(problem.get("title"), str), problem
    assert problem["title"], problem
    assert isinstance(problem.get("detail"), str), problem
    assert problem["detail"], problem
    assert problem.get("field") == field, problem
    return problem


async def count_events(db: asyncpg.Connection, event_type: str | None = None) -> int:
    if event_type is None:
        n = await db.fetchval("SELECT count(*) FROM events")
    else:
        n = await db.fetchval("SELECT count(*) FROM events WHERE event_type = $1", event_type)
    return int(n)


# --- waiting for the background work of a running gateway ----------------------------------


async def admin_status(api: Api) -> dict[str, Any]:
    reply = await api.get("/v1/admin/status")
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


async def projections_caught_up(api: Api) -> dict[str, Any]:
    """Wait until both projections exist and have applied every committed event."""
    from tests.integration.projection_helpers import eventually

    seen: dict[str, Any] = {}

    async def done() -> bool:
        seen.update(await admin_status(api))
        projections = seen["projections"]
        names = {p["name"] for p in projections}
        return names == {"rewards", "listeners"} and all(p["lag_events"] == 0 for p in projections)

    await eventually(done, "the projections to catch up")
    return seen


async def index_built(api: Api) -> str:
    """Ask for an index build and wait until this gateway serves it; returns its version."""
    from tests.integration.projection_helpers import eventually

    accepted = await api.post("/v1/admin/index/rebuild")
    assert accepted.status == 202, accepted.body

    async def built() -> bool:
        return (await admin_status(api))["index"]["version"] is not None

    await eventually(built, "the index to be built and loaded")
    version: str = (await admin_status(api))["index"]["version"]
    return version


@pytest.fixture
async def api_no_scheduled_builds(db_url: str, all_scopes_key: str) -> AsyncIterator[Api]:
    """A gateway that builds an index only when a test asks for one."""
    async with (
        serving(db_url, run_index_builder=False) as url,
        ClientSession(timeout=ClientTimeout(total=60)) as session,
    ):
        yield Api(url, all_scopes_key, session)


async def raw_http(base_url: str, request: bytes) -> bytes:
    """Send bytes no HTTP client library would; return the whole answer."""
    url = yarl.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
