"""Azure AI Personalizer-compatible routes under /personalizer/ (docs/personalizer.md).

Switching from Personalizer is a change of endpoint and key: the paths, bodies, status codes and
error bodies are Personalizer's, in the API version the `azure-ai-personalizer` package sends
(`?api-version=2022-09-01-preview`) and under the versioned REST paths older clients call
(`/personalizer/v1.0/...`, `/personalizer/v1.1-preview.N/...`). The key is a Segue API key, sent
as `Ocp-Apim-Subscription-Key` (or as a bearer token). The routes are outside the /v1 route
table and /openapi.json: their contract is Personalizer's, not Segue's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from gateway.http.appkeys import CATALOG, CLOCK, KEYS, LIMITER, POOL, RECOMMENDER, SETTINGS, STORE
from gateway.http.auth import CURRENT_KEY, ApiKey, Scope
from gateway.http.endpoint import Handler
from gateway.http.handlers import parse_body
from gateway.http.problems import UNAVAILABLE, ProblemError, from_validation
from gateway.http.ratelimit import retry_after
from gateway.serving.erasure import mention
from gateway.serving.errors import Refused
from gateway.serving.personalizer import (
    SHARED_LISTENER,
    SINGLE,
    EventId,
    MultiSlotRankIn,
    MultiSlotRewardIn,
    Personalizer,
    PersonalizerConfig,
    RankIn,
    RewardIn,
)
from gateway.serving.requests import UserId

log = logging.getLogger(__name__)

SERVICE = web.AppKey("personalizer", Personalizer)

# What the `azure-ai-personalizer` package (1.0.0b1) sends on its unversioned paths.
API_VERSIONS = frozenset({"2022-09-01-preview"})
# The REST versions whose paths carry the version; multi-slot came with v1.1-preview.1.
SINGLE_SLOT_VERSIONS = ("v1.0",)
MULTI_SLOT_VERSIONS = ("v1.1-preview.1", "v1.1-preview.2", "v1.1-preview.3")
KEY_HEADER = "Ocp-Apim-Subscription-Key"
# Personalizer has no user ids; a caller who has one may name the listener in this header (the
# context is then checked not to mention it, as /v1/recommendations checks).
LISTENER_HEADER = "X-Segue-User-Id"

_EVENT_ID: TypeAdapter[str] = TypeAdapter(EventId)
_LISTENER: TypeAdapter[str] = TypeAdapter(UserId)

_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "ResourceNotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


class PersonalizerError(Exception):
    """An answer in Personalizer's error shape, which azure-core reads into the exception it
    raises: `{"error": {"code": ..., "message": ...}}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        # Personalizer answers an invalid body with 400; Segue's 422s are those.
        self.status = 400 if status == 422 else status
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {
            "error": {"code": _CODES.get(self.status, str(self.status)), "message": self.message}
        }
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )


def _refusal(exc: Refused | ProblemError) -> PersonalizerError:
    # A problem's detail already names its field ("actions[0].id: ..."); a refusal's may not.
    message = exc.detail
    if exc.field is not None and not message.startswith(exc.field):
        message = f"{exc.field}: {message}"
    if isinstance(exc, ProblemError):
        return PersonalizerError(exc.status, message, dict(exc.headers))
    return PersonalizerError(exc.status, message)


async def _authenticated(request: web.Request, scope: Scope) -> ApiKey:
    token = request.headers.get(KEY_HEADER, "").strip()
    if not token:
        scheme, _, bearer = request.headers.get("Authorization", "").strip().partition(" ")
        token = bearer.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise PersonalizerError(
            401, f"an API key is required: send a Segue API key as {KEY_HEADER}"
        )
    key = await request.app[KEYS].lookup(token) if token.isascii() else None
    if key is None:
        raise PersonalizerError(401, "the API key is unknown or revoked")
    if scope not in key.scopes:
        raise PersonalizerError(403, f"this key lacks the {scope.value!r} scope")
    wait = request.app[LIMITER].acquire(key.key_id)
    if wait:
        raise PersonalizerError(
            429,
            f"this key is over its rate limit; retry in {wait:.2f} s",
            {"Retry-After": retry_after(wait)},
        )
    return key


def _guarded(handler: Handler, scope: Scope, *, versioned: bool) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            if not versioned:
                version = request.query.get("api-version")
                if version not in API_VERSIONS:
                    supported = ", ".join(sorted(API_VERSIONS))
                    problem = "is required" if version is None else f"{version!r} is unknown"
                    raise PersonalizerError(
                        400 if version is None else 404,
                        f"api-version {problem}: this gateway serves {supported} here, and the "
                        "versioned paths /personalizer/v1.0/ and /personalizer/v1.1-preview.3/",
                    )
            CURRENT_KEY.set(await _authenticated(request, scope))
            return await handler(request)
        except PersonalizerError as exc:
            return exc.response()
        except (Refused, ProblemError) as exc:
            return _refusal(exc).response()
        except ValidationError as exc:
            # The context as a whole (features nested in it) over Segue's bounds on a context.
            return _refusal(from_validation(exc)).response()
        except web.HTTPRequestEntityTooLarge:
            return PersonalizerError(413, "the request body is too large").response()
        except UNAVAILABLE as exc:
            log.warning("database unavailable: %r", exc)
            return PersonalizerError(
                503,
                "the event store cannot be reached; retry later (resending is safe)",
                {"Retry-After": "1"},
            ).response()

    return guarded


def _event_id(request: web.Request) -> str:
    try:
        return _EVENT_ID.validate_python(request.match_info["eventId"])
    except ValidationError as exc:
        raise from_validation(exc, prefix="eventId") from None


def _listener(request: web.Request, context: Any) -> str:
    raw = request.headers.get(LISTENER_HEADER)
    if raw is None:
        return SHARED_LISTENER
    try:
        listener = _LISTENER.validate_python(raw)
    except ValidationError as exc:
        raise from_validation(exc, prefix=LISTENER_HEADER) from None
    # The context is logged verbatim, in a log erasure cannot rewrite (as /v1/recommendations).
    where = mention(context, [listener])
    if where is not None:
        raise PersonalizerError(
            400,
            f"contextFeatures{where} mentions the listener's id: the context is logged with the "
            "slate, which forgetting the listener cannot undo",
        )
    return listener


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def rank(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, RankIn)
    listener = _listener(request, body.context_features or [])
    ranked = await request.app[SERVICE].rank(body, listener)
    out: dict[str, Any] = {
        "ranking": [{"id": a, "probability": p} for a, p in ranked.ranking],
        "eventId": ranked.event_id,
    }
    if ranked.reward_action_id is not None:
        out["rewardActionId"] = ranked.reward_action_id
    return _json(out, 201)


async def rank_multi_slot(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, MultiSlotRankIn)
    listener = _listener(request, body.context_features or [])
    ranked = await request.app[SERVICE].rank_slots(body, listener)
    slots = [{"id": s, **({"rewardActionId": a} if a is not None else {})} for s, a in ranked.slots]
    return _json({"eventId": ranked.event_id, "slots": slots}, 201)


async def reward(request: web.Request) -> web.StreamResponse:
    event_id = _event_id(request)
    body = await parse_body(request, RewardIn)
    await request.app[SERVICE].reward(event_id, {SINGLE: body.value})
    return web.Response(status=204)


async def reward_multi_slot(request: web.Request) -> web.StreamResponse:
    event_id = _event_id(request)
    body = await parse_body(request, MultiSlotRewardIn)
    rewards: dict[str, float] = {}
    for r in body.reward:
        rewards.setdefault(r.slot_id, r.value)  # the earliest of a slot's rewards counts
    await request.app[SERVICE].reward(event_id, rewards)
    return web.Response(status=204)


async def activate(request: web.Request) -> web.StreamResponse:
    await request.app[SERVICE].activate(_event_id(request))
    return web.Response(status=204)


def iso_duration(seconds: float) -> str:
    """Seconds as an ISO 8601 duration, as Personalizer writes its time spans (PT10M)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    fraction = seconds - whole
    out = "PT"
    if hours:
        out += f"{hours}H"
    if minutes:
        out += f"{minutes}M"
    if secs or fraction or out == "PT":
        out += f"{secs + fraction:g}S"
    return out


async def service_configuration(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    config = request.app[SERVICE].config
    return _json(
        {
            "rewardWaitTime": iso_duration(config.reward_wait.total_seconds()),
            "defaultReward": config.default_reward,
            "rewardAggregation": "earliest",
            # Segue's epsilon: the share of ranks whose order is drawn uniformly at random.
            "explorationPercentage": settings.policy.epsilon,
            # How often a new index (Segue's model) is built and served.
            "modelExportFrequency": iso_duration(settings.index_build_interval_seconds),
            # The log is the system of record: nothing in it is deleted.
            "logRetentionDays": -1,
            "modelRetrainDays": 0,
            "learningMode": "Online",
            "isAutoOptimizationEnabled": False,
        }
    )


async def policy(request: web.Request) -> web.StreamResponse:
    params = request.app[SETTINGS].policy
    arguments = " ".join(
        f"--{name} {getattr(params, name)}"
        for name in ("epsilon", "tail_epsilon", "tail", "w_affinity", "w_reward", "optimism")
    )
    return _json({"name": f"{params.name} {params.logged_version}", "arguments": arguments})


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # after the version
    handler: Handler
    scope: Scope
    multi_slot: bool = False


ROUTES = (
    Route("POST", "/rank", rank, Scope.RECOMMEND),
    Route("POST", "/events/{eventId}/reward", reward, Scope.INGEST),
    Route("POST", "/events/{eventId}/activate", activate, Scope.INGEST),
    Route("POST", "/multislot/rank", rank_multi_slot, Scope.RECOMMEND, multi_slot=True),
    Route("POST", "/multislot/events/{eventId}/reward", reward_multi_slot, Scope.INGEST, True),
    Route("POST", "/multislot/events/{eventId}/activate", activate, Scope.INGEST, True),
    Route("GET", "/configurations/service", service_configuration, Scope.RECOMMEND),
    Route("GET", "/configurations/policy", policy, Scope.RECOMMEND),
)


def paths() -> list[tuple[Route, str, bool]]:
    """Every (route, path, versioned) served."""
    out = [(r, f"/personalizer{r.path}", False) for r in ROUTES]
    for version in (*SINGLE_SLOT_VERSIONS, *MULTI_SLOT_VERSIONS):
        out += [
            (r, f"/personalizer/{version}{r.path}", True)
            for r in ROUTES
            if not r.multi_slot or version in MULTI_SLOT_VERSIONS
        ]
    return out


async def _service(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    service = Personalizer(
        app[STORE],
        app[CATALOG],
        app[RECOMMENDER],
        app[CLOCK],
        PersonalizerConfig(
            reward_wait=timedelta(seconds=settings.personalizer_reward_wait_seconds),
            default_reward=settings.personalizer_default_reward,
        ),
    )
    app[SERVICE] = service
    every = min(max(settings.personalizer_reward_wait_seconds / 4, 0.5), 30.0)
    task = asyncio.create_task(
        service.apply_defaults(app[POOL], every, timedelta(days=1)), name="personalizer-defaults"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup_personalizer(app: web.Application) -> None:
    """The routes, and the service behind them (after the services it wraps are built)."""
    app.cleanup_ctx.append(_service)
    for route, path, versioned in paths():
        app.router.add_route(
            route.method, path, _guarded(route.handler, route.scope, versioned=versioned)
        )
