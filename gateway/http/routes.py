"""Every route in one table: the router, the scope check and /openapi.json all read it."""

from __future__ import annotations

import re

from aiohttp import web

from gateway.http import admin, handlers
from gateway.http import schemas as responses
from gateway.http.appkeys import KEYS, LIMITER
from gateway.http.auth import CURRENT_KEY, Scope
from gateway.http.endpoint import Endpoint, Handler, QueryParam
from gateway.http.problems import ProblemError
from gateway.http.ratelimit import retry_after
from gateway.serving import requests as schemas

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/recommendations",
        handlers.recommend,
        "Recommend a slate of items for one listener",
        "recommendations",
        Scope.RECOMMEND,
        schemas.RecommendationIn,
        responses.RecommendationOut,
        idempotent=True,
    ),
    Endpoint(
        "POST",
        "/v1/blends",
        handlers.blend,
        "One slate for 2-10 listeners: everyone gets items predicted for them",
        "recommendations",
        Scope.RECOMMEND,
        schemas.BlendIn,
        responses.RecommendationOut,
        idempotent=True,
    ),
    Endpoint(
        "GET",
        "/v1/users/{user_id}/discover",
        handlers.discover,
        "The listener's weekly discovery set: items new to them, the same all ISO week",
        "recommendations",
        Scope.RECOMMEND,
        None,
        responses.RecommendationOut,
        query=(
            QueryParam(
                "n",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                "How many items",
            ),
        ),
    ),
    Endpoint(
        "POST",
        "/v1/users/{user_id}/forget",
        handlers.forget,
        "Erasure: the listener's id can no longer be linked to their events; their projection "
        "rows are removed. Idempotent; the same answer for unknown ids",
        "users",
        Scope.ADMIN,
        None,
        responses.ForgetOut,
        status=202,
    ),
    Endpoint(
        "GET",
        "/v1/items/{item_id}/similar",
        handlers.similar,
        "The items nearest to this one in the current index",
        "recommendations",
        Scope.RECOMMEND,
        None,
        responses.SimilarOut,
        query=(
            QueryParam(
                "n",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                "How many items",
            ),
        ),
    ),
    Endpoint(
        "POST",
        "/v1/outcomes",
        handlers.record_outcomes,
        "Report up to 1000 outcomes; all or nothing, idempotent by event_id",
        "outcomes",
        Scope.INGEST,
        schemas.OutcomesIn,
        responses.OutcomesOut,
    ),
    Endpoint(
        "POST",
        "/v1/items",
        handlers.upsert_items,
        "Create or replace up to 1000 catalogue items",
        "catalogue",
        Scope.CATALOG,
        schemas.ItemsIn,
        responses.ItemsOut,
    ),
    Endpoint(
        "PUT",
        "/v1/items/{item_id}",
        handlers.put_item,
        "Create or replace one catalogue item",
        "catalogue",
        Scope.CATALOG,
        schemas.ItemBody,
        responses.ItemOut,
    ),
    Endpoint(
        "GET",
        "/v1/items/{item_id}",
        handlers.get_item,
        "Read one catalogue item",
        "catalogue",
        Scope.CATALOG,
        None,
        responses.ItemOut,
    ),
    Endpoint(
        "DELETE",
        "/v1/items/{item_id}",
        handlers.retire_item,
        "Retire an item: it is never recommended again",
        "catalogue",
        Scope.CATALOG,
        None,
        responses.ItemOut,
    ),
    Endpoint(
        "GET",
        "/v1/items/{item_id}/rewards",
        handlers.item_rewards,
        "An item's reward aggregates, now or as they stood at `as_of`",
        "rewards",
        Scope.CATALOG,
        None,
        responses.ItemRewardsOut,
        query=(
            QueryParam(
                "as_of",
                {"type": "string", "format": "date-time"},
                "RFC 3339 instant with a time zone (default: now)",
            ),
        ),
    ),
    Endpoint(
        "GET",
        "/v1/admin/status",
        handlers.admin_status,
        "Projections with their positions and lag; event counts",
        "admin",
        Scope.ADMIN,
        None,
        responses.StatusOut,
    ),
    Endpoint(
        "POST",
        "/v1/admin/index/rebuild",
        handlers.rebuild_index,
        "Build and publish a new index now (in the background)",
        "admin",
        Scope.ADMIN,
        None,
        responses.IndexOut,
        status=202,
    ),
    Endpoint(
        "GET",
        "/v1/admin/dashboard",
        admin.dashboard,
        "What the admin page shows: projections with their lag and state, this process's "
        "projection rebuilds, the index served and its age, this process's request rates and "
        "latencies",
        "admin",
        Scope.ADMIN,
        None,
        admin.DashboardOut,
    ),
    Endpoint(
        "GET",
        "/v1/admin/dashboard/series",
        admin.dashboard_series,
        "Per UTC day slates were served: reward per slate by surface, attributed outcomes by kind",
        "admin",
        Scope.ADMIN,
        None,
        admin.SeriesOut,
        query=(
            QueryParam(
                "days",
                {"type": "integer", "minimum": 1, "maximum": admin.MAX_DAYS, "default": 14},
                "How many days, today's included",
            ),
        ),
    ),
    Endpoint(
        "POST",
        "/v1/admin/projections/rebuild",
        admin.rebuild_projection,
        "Rebuild a projection from the log in the background, then swap it in (as `segue "
        "rebuild`); progress is in /v1/admin/dashboard",
        "admin",
        Scope.ADMIN,
        admin.ProjectionRebuildIn,
        admin.RebuildOut,
        status=202,
    ),
    Endpoint(
        "GET",
        "/admin",
        admin.admin_page,
        "The admin dashboard: a page that asks for an admin key and reads the /v1/admin routes",
        "admin",
        content_type="text/html",
    ),
    Endpoint(
        "GET", "/healthz", handlers.healthz, "Liveness", "service", None, None, responses.HealthOut
    ),
    Endpoint(
        "GET",
        "/readyz",
        handlers.readyz,
        "Readiness: the database answers",
        "service",
        None,
        None,
        responses.ReadyOut,
    ),
    Endpoint(
        "GET", "/openapi.json", handlers.openapi, "This API's OpenAPI 3.1 description", "service"
    ),
    Endpoint(
        "GET",
        "/docs",
        handlers.docs,
        "A readable page of this API",
        "service",
        content_type="text/html",
    ),
    Endpoint(
        "GET",
        "/metrics",
        handlers.metrics,
        "Prometheus metrics",
        "service",
        content_type="text/plain",
    ),
)


def _guarded(handler: Handler, scope: Scope, query: frozenset[str]) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        key = await request.app[KEYS].require(request.headers.get("Authorization"), scope)
        wait = request.app[LIMITER].acquire(key.key_id)
        if wait:
            raise ProblemError(
                429,
                "rate-limited",
                "Too Many Requests",
                f"this key is over its rate limit; retry in {wait:.2f} s",
                field="Authorization",
                headers={"Retry-After": retry_after(wait)},
            )
        CURRENT_KEY.set(key)
        # Strict like the bodies: a misspelt `?asof=` must not silently mean "now".
        unknown = sorted(set(request.query) - query)
        if unknown:
            allowed = ", ".join(sorted(query)) or "none"
            raise ProblemError(
                422,
                "validation",
                "Invalid request",
                f"unknown query parameter {unknown[0]!r}; this route takes: {allowed}",
                field=unknown[0],
            )
        return await handler(request)

    return guarded


def router_path(path: str) -> str:
    """`path` for aiohttp's router. A bare `{item_id}` matches no `{` or `}`, so an item created
    with a brace in its id (which the body schema allows) could not be read back by its path;
    any text but `/` (sent as %2F when it is part of an id) goes through here."""
    return re.sub(r"{(\w+)}", r"{\1:[^/]+}", path)


def setup_routes(app: web.Application) -> None:
    for ep in ENDPOINTS:
        query = frozenset(q.name for q in ep.query)
        handler = ep.handler if ep.scope is None else _guarded(ep.handler, ep.scope, query)
        app.router.add_route(ep.method, router_path(ep.path), handler)
