"""Every route in one table: the router, the scope check and /openapi.json all read it."""

from __future__ import annotations

import re

from aiohttp import web

from gateway.http import admin, docs, experiments, handlers
from gateway.http import examples as ex
from gateway.http import schemas as responses
from gateway.http.appkeys import KEYS, LIMITER, SETTINGS
from gateway.http.auth import CURRENT_KEY, Scope
from gateway.http.endpoint import Endpoint, Handler, Param
from gateway.http.problems import ProblemError, unknown_query
from gateway.http.ratelimit import retry_after
from gateway.serving import requests as schemas
from gateway.settings import Settings

N = Param(
    "n",
    {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
    "How many items",
    example=3,
)
ASSET = Param(
    "asset",
    {"type": "string", "enum": sorted(docs.ASSETS)},
    "One of the files /docs loads",
    required=True,
    example="swagger-ui.css",
)


def experiment_name(example: str) -> Param:
    return Param(
        "name",
        {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
        "The experiment's name",
        required=True,
        example=example,
    )


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
        example=ex.RECOMMEND,
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
        example=ex.BLEND,
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
        query=(N,),
        example=ex.DISCOVER,
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
        example=ex.FORGET,
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
        query=(N,),
        example=ex.SIMILAR,
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
        example=ex.OUTCOMES,
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
        example=ex.UPSERT_ITEMS,
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
        example=ex.PUT_ITEM,
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
        example=ex.GET_ITEM,
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
        example=ex.RETIRE_ITEM,
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
            Param(
                "as_of",
                {"type": "string", "format": "date-time"},
                "RFC 3339 instant with a time zone (default: now)",
                example=ex.AS_OF,
            ),
        ),
        example=ex.ITEM_REWARDS,
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
        example=ex.ADMIN_STATUS,
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
        example=ex.REBUILD_INDEX,
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
        example=ex.DASHBOARD,
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
            Param(
                "days",
                {"type": "integer", "minimum": 1, "maximum": admin.MAX_DAYS, "default": 14},
                "How many days, today's included",
                example=2,
            ),
        ),
        example=ex.DASHBOARD_SERIES,
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
        example=ex.REBUILD_PROJECTION,
    ),
    Endpoint(
        "POST",
        "/v1/admin/experiments",
        experiments.start,
        "Start an online experiment: listeners are split between the arms' policies by a salted "
        "hash of their pseudonym, on the surfaces it covers",
        "experiments",
        Scope.ADMIN,
        schemas.ExperimentIn,
        experiments.ExperimentOut,
        example=ex.START_EXPERIMENT,
    ),
    Endpoint(
        "GET",
        "/v1/admin/experiments",
        experiments.list_experiments,
        "Every experiment, running or ended, in the order they started",
        "experiments",
        Scope.ADMIN,
        None,
        experiments.ExperimentsOut,
        example=ex.EXPERIMENTS,
    ),
    Endpoint(
        "GET",
        "/v1/admin/experiments/{name}",
        experiments.status,
        "An experiment's analysis so far: per arm listeners, slates and metrics; each arm "
        "against the control with always-valid intervals; the sample-ratio check",
        "experiments",
        Scope.ADMIN,
        None,
        experiments.ExperimentStatusOut,
        example=ex.EXPERIMENT_STATUS,
        path_params=(experiment_name(ex.EXPERIMENT),),
    ),
    Endpoint(
        "POST",
        "/v1/admin/experiments/{name}/stop",
        experiments.stop,
        "Stop a running experiment: its surfaces go back to the default policy",
        "experiments",
        Scope.ADMIN,
        schemas.ExperimentStopIn,
        experiments.ExperimentOut,
        example=ex.STOP_EXPERIMENT,
        path_params=(experiment_name(ex.STOPPED_EXPERIMENT),),
    ),
    Endpoint(
        "POST",
        "/v1/admin/experiments/{name}/ship",
        experiments.ship,
        "End a running experiment with an arm shipped (its parameters become the gateway's "
        "SEGUE_POLICY_* settings by a deployment; the log records the decision)",
        "experiments",
        Scope.ADMIN,
        schemas.ExperimentShipIn,
        experiments.ExperimentOut,
        example=ex.SHIP_EXPERIMENT,
        path_params=(experiment_name(ex.EXPERIMENT),),
    ),
    Endpoint(
        "GET",
        "/admin",
        admin.admin_page,
        "The admin dashboard: a page that asks for an admin key and reads the /v1/admin routes",
        "admin",
        content_type="text/html",
        example=ex.PAGE,
    ),
    Endpoint(
        "GET",
        "/healthz",
        handlers.healthz,
        "Liveness",
        "service",
        None,
        None,
        responses.HealthOut,
        example=ex.HEALTHZ,
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
        example=ex.READYZ,
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        handlers.openapi,
        "This API's OpenAPI 3.1 description",
        "service",
        example=ex.OPENAPI,
    ),
    Endpoint(
        "GET",
        "/",
        docs.landing,
        "A page linking the docs, this description, health, readiness, metrics and /admin",
        "service",
        content_type="text/html",
        example=ex.PAGE,
    ),
    Endpoint(
        "GET",
        "/docs",
        docs.docs,
        "These docs: Swagger UI over /openapi.json, served by the gateway itself",
        "service",
        content_type="text/html",
        example=ex.PAGE,
    ),
    Endpoint(
        "GET",
        "/docs/static/{asset}",
        docs.docs_asset,
        "The scripts, styles and icon /docs loads",
        "service",
        example=ex.ASSET,
        path_params=(ASSET,),
        content_types=docs.ASSET_TYPES,
    ),
    Endpoint(
        "GET",
        "/metrics",
        handlers.metrics,
        "Prometheus metrics",
        "service",
        content_type="text/plain",
        example=ex.METRICS,
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
        unknown = sorted(set(request.query) - query)
        if unknown:
            raise unknown_query(unknown[0], sorted(query))
        return await handler(request)

    return guarded


def router_path(path: str) -> str:
    """`path` for aiohttp's router. A bare `{item_id}` matches no `{` or `}`, so an item created
    with a brace in its id (which the body schema allows) could not be read back by its path;
    any text but `/` (sent as %2F when it is part of an id) goes through here."""
    return re.sub(r"{(\w+)}", r"{\1:[^/]+}", path)


def served_endpoints(settings: Settings) -> tuple[Endpoint, ...]:
    """The routes of the API port: all, but /metrics when it has a port of its own."""
    if settings.metrics_port is None:
        return ENDPOINTS
    return tuple(ep for ep in ENDPOINTS if ep.path != "/metrics")


def setup_routes(app: web.Application) -> None:
    for ep in served_endpoints(app[SETTINGS]):
        query = frozenset(q.name for q in ep.query)
        handler = ep.handler if ep.scope is None else _guarded(ep.handler, ep.scope, query)
        app.router.add_route(ep.method, router_path(ep.path), handler)
