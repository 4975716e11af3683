"""Every /v1 route needs a bearer key with its scope, checked before anything else is looked at;
keys can be revoked; only a hash of a key is ever stored.

The routes come from `gateway.http.routes.ENDPOINTS`, so a route added there is covered here (and a
route with a new body model fails `test_every_guarded_route_is_covered` until it gets one below).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pydantic import BaseModel

from gateway.http import personalize
from gateway.http.admin import ProjectionRebuildIn
from gateway.http.auth import Scope, create_key, revoke_key
from gateway.http.endpoint import Endpoint
from gateway.http.routes import ENDPOINTS
from gateway.serving import requests as schemas
from tests.api.conftest import Api, KeyMaker, expect_problem
from tests.conftest import unhandled_loop_errors_fail

# Many small requests that leave each other alone: one gateway and database for the module.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    with unhandled_loop_errors_fail():
        yield


@pytest.fixture
def api(shared_api: Api) -> Api:
    return shared_api


@pytest.fixture
def db(shared_db: asyncpg.Connection) -> asyncpg.Connection:
    return shared_db


@pytest.fixture
def make_key(shared_make_key: KeyMaker) -> KeyMaker:
    return shared_make_key


def _valid_bodies() -> dict[type[BaseModel], Any]:
    return {
        schemas.RecommendationIn: {"user_id": "auth-user", "surface": "home", "n": 3},
        schemas.OutcomesIn: {
            "outcomes": [
                {
                    "event_id": str(uuid.uuid4()),
                    "user_id": "auth-user",
                    "item_id": "auth-item",
                    "kind": "save",
                }
            ]
        },
        schemas.ItemsIn: {"items": [{"item_id": "auth-item", "kind": "track"}]},
        schemas.ItemBody: {"kind": "track", "attributes": {"from": "auth"}},
        schemas.BlendIn: {"user_ids": ["auth-user", "auth-friend"], "n": 3},
        ProjectionRebuildIn: {"projection": "listeners"},
        schemas.ExperimentIn: _experiment("auth-start", "podcasts"),
        schemas.ExperimentStopIn: {"reason": "auth"},
        schemas.ExperimentShipIn: {"arm": "a"},
    }


def _experiment(name: str, surface: str) -> dict[str, Any]:
    return {
        "name": name,
        "arms": [{"name": "a"}, {"name": "b", "params": {"epsilon": 0.1}}],
        "surfaces": [surface],
        "primary": {"name": "reward"},
        "minimum_detectable_effect": 0.1,
    }


def _experiment_name(ep: Endpoint) -> str:
    """The experiment `call` names in `ep`'s path: stop and ship each end one of their own."""
    last = ep.path.rsplit("/", 1)[-1]
    return f"auth-{last}" if last in ("stop", "ship") else "auth-start"


GUARDED = [ep for ep in ENDPOINTS if ep.scope is not None]
OPEN = [ep for ep in ENDPOINTS if ep.scope is None]


def _ids(ep: Endpoint) -> str:
    return f"{ep.method} {ep.path}"


async def call(api: Api, ep: Endpoint, *, headers: dict[str, str] | None = None) -> Any:
    """Call `ep` with a valid body and path, sending only the Authorization given in `headers`."""
    path = ep.path.replace("{item_id}", "auth-item").replace("{user_id}", "auth-user")
    path = path.replace("{name}", _experiment_name(ep))
    payload = _valid_bodies()[ep.body] if ep.body is not None else None
    return await api.request(ep.method, path, json=payload, headers=headers, key=None)


async def test_every_guarded_route_is_covered() -> None:
    assert GUARDED, "no guarded routes found in ENDPOINTS"
    # `call` fills only these; a route with another path parameter needs a value there.
    placeholders = {p for ep in GUARDED for p in re.findall(r"{\w+}", ep.path)}
    assert placeholders <= {"{item_id}", "{user_id}", "{name}"}
    for ep in GUARDED:
        assert ep.body is None or ep.body in _valid_bodies(), f"no valid body for {_ids(ep)}"


@pytest.mark.parametrize("ep", GUARDED, ids=_ids)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer sk_deadbeef_not-a-real-key",
        "Bearer ",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "sk_deadbeef_not-a-real-key",
    ],
    ids=["missing", "unknown-key", "empty-key", "scheme-only", "basic", "no-scheme"],
)
async def test_without_a_known_key_every_v1_route_is_401(
    api: Api, ep: Endpoint, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else None
    reply = await call(api, ep, headers=headers)
    expect_problem(reply, 401, "Authorization", kind="unauthorized")
    assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("ep", GUARDED, ids=_ids)
async def test_a_real_key_without_its_scheme_or_with_junk_is_401(
    api: Api, make_key: KeyMaker, ep: Endpoint
) -> None:
    key = await make_key(*Scope)
    for authorization in (key, f"Bearer {key}x", f"Bearer {key} {key}", f"Token {key}"):
        reply = await call(api, ep, headers={"Authorization": authorization})
        expect_problem(reply, 401, "Authorization")


@pytest.mark.parametrize("ep", GUARDED, ids=_ids)
@pytest.mark.parametrize("others", [True, False], ids=["every-other-scope", "no-scope"])
async def test_a_key_lacking_the_scope_is_403(
    api: Api, make_key: KeyMaker, ep: Endpoint, others: bool
) -> None:
    assert ep.scope is not None
    scopes = [s for s in Scope if s != ep.scope] if others else []
    key = await make_key(*scopes)
    reply = await call(api, ep, headers={"Authorization": f"Bearer {key}"})
    problem = expect_problem(reply, 403, "Authorization", kind="forbidden")
    assert ep.scope.value in problem["detail"]


@pytest.mark.parametrize("ep", GUARDED, ids=_ids)
async def test_a_key_with_just_the_scope_is_let_through(
    api: Api, make_key: KeyMaker, ep: Endpoint
) -> None:
    assert ep.scope is not None
    key = await make_key(ep.scope)
    if ep.path.endswith(("/stop", "/ship")):
        # Something to stop or ship, on a surface no other experiment of this module covers.
        surface = "search" if ep.path.endswith("/stop") else "shelf"
        started = await api.post(
            "/v1/admin/experiments", _experiment(_experiment_name(ep), surface)
        )
        assert started.status == 200, started.body
    reply = await call(api, ep, headers={"Authorization": f"Bearer {key}"})
    assert reply.status not in (401, 403), reply.body
    assert reply.status < 500, reply.body
    if ep.method != "GET" and ep.method != "DELETE":
        assert reply.status == ep.status, reply.body


@pytest.mark.parametrize("ep", GUARDED, ids=_ids)
async def test_the_key_is_checked_before_the_body(api: Api, ep: Endpoint) -> None:
    """No key and a broken body: 401, so nothing about the API's validation leaks."""
    path = ep.path.replace("{item_id}", "x" * 300).replace("{user_id}", "y" * 300)
    reply = await api.request(
        ep.method, path, data=b"{not json", headers={"Content-Type": "text/plain"}, key=None
    )
    expect_problem(reply, 401, "Authorization")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
async def test_the_bearer_scheme_is_case_insensitive(
    api: Api, make_key: KeyMaker, scheme: str
) -> None:
    """RFC 9110 section 11.1: the authentication scheme is a case-insensitive token."""
    key = await make_key(Scope.CATALOG)
    reply = await api.get(
        "/v1/items/auth-item", headers={"Authorization": f"{scheme} {key}"}, key=None
    )
    assert reply.status not in (401, 403), reply.body


@pytest.mark.parametrize("ep", OPEN, ids=_ids)
async def test_service_routes_need_no_key(api: Api, ep: Endpoint) -> None:
    path = ep.path
    for p in ep.path_params:  # /docs/static/{asset}: one of the files it serves
        path = path.replace("{" + p.name + "}", str(p.example))
    reply = await api.request(ep.method, path, key=None)
    assert reply.status == 200, reply.body


async def test_a_revoked_key_is_refused_at_once(api: Api, db: asyncpg.Connection) -> None:
    key, secret = await create_key(db, "to-revoke", frozenset(Scope))
    bearer = {"Authorization": f"Bearer {secret}"}
    reply = await api.get("/v1/items/auth-item", headers=bearer, key=None)
    assert reply.status not in (401, 403), reply.body
    assert await revoke_key(db, key.key_id)
    for ep in GUARDED:
        reply = await call(api, ep, headers=bearer)
        expect_problem(reply, 401, "Authorization")
    # Revoking one key leaves the others alone.
    reply = await api.get("/v1/items/auth-item")
    assert reply.status not in (401, 403), reply.body


async def test_only_a_hash_of_the_key_is_stored(db: asyncpg.Connection) -> None:
    key, secret = await create_key(db, "hashed", frozenset({Scope.INGEST}))
    row = await db.fetchrow(
        "SELECT row_to_json(k)::text, key_hash FROM api_keys k WHERE key_id = $1", key.key_id
    )
    assert row is not None
    stored_text, key_hash = row[0], bytes(row[1])
    secret_part = secret.split("_", 2)[2]  # sk_<key id>_<token>; the token may hold "_"
    assert secret_part not in stored_text
    assert secret_part.encode().hex() not in stored_text
    assert key_hash == hashlib.sha256(secret.encode()).digest()
    # And nowhere else in the database either.
    dump = await db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM ("
        " SELECT row_to_json(a)::text AS t FROM api_keys a"
        " UNION ALL SELECT payload::text FROM events"
        " UNION ALL SELECT metadata::text FROM events) s"
    )
    assert secret_part not in (dump or "")


# Routes anyone may call; every other route, now and later, needs a key with a scope.
PUBLIC = {
    "/",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/docs",
    "/docs/static/{asset}",
    "/metrics",
    "/admin",
}


async def test_only_the_service_routes_are_open() -> None:
    """A new route that forgets its scope fails here instead of being open to the world."""
    assert {ep.path for ep in OPEN} == PUBLIC
    for ep in ENDPOINTS:
        assert ep.path.startswith("/v1/") == (ep.scope is not None), _ids(ep)


async def test_every_route_the_app_serves_comes_from_the_table(shared_db_url: str) -> None:
    """Nothing is registered beside ENDPOINTS, so the tests above cover every route served; but
    for the Personalizer-compatible routes, whose keys tests/api/test_personalizer.py checks."""
    from gateway.http.app import create_app
    from gateway.http.personalizer import paths
    from gateway.settings import Settings

    app = create_app(Settings(database_url=shared_db_url), shared_db_url)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to GET
    }
    # Beside them, only the compatible surfaces: AWS Personalize (signed instead,
    # tests/api/test_personalize.py) and Azure Personalizer (tests/api/test_personalizer.py).
    compat = {(r.method, r.path) for r in personalize.ROUTES}
    personalizer = {(route.method, path) for route, path, _ in paths()}
    assert served == {(ep.method, ep.path) for ep in ENDPOINTS} | compat | personalizer
