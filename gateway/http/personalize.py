"""Amazon Personalize-compatible routes: a client of AWS's SDKs switches to Segue by changing its
endpoint and its keys (docs/personalize.md).

The paths, bodies and errors are those of AWS's `personalize-runtime` (GetRecommendations,
GetPersonalizedRanking) and `personalize-events` (PutEvents, PutItems, PutUsers) REST-JSON
protocols; requests are authenticated with AWS Signature Version 4 (`http.sigv4`) against the
keys of `segue keys create --aws` (`http.awskeys`). Each route translates into the requests of
`serving.requests` and calls the same services as the /v1 routes, so what it does is logged,
projected and evaluated like any other call. Errors are AWS's: status, `x-amzn-ErrorType` and a
JSON `message`, so an SDK raises the exception it raises against AWS.

The routes are not in `routes.ENDPOINTS` (nor /openapi.json): AWS's service models describe them,
and they authenticate and fail in AWS's way, not with bearer keys and problem+json.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domain.events import ItemUpserted, OutcomeKind
from gateway.http.appkeys import CATALOG, CLOCK, LIMITER, OUTCOMES, POOL, RECOMMENDER, SETTINGS
from gateway.http.auth import CURRENT_KEY, ApiKey, Scope
from gateway.http.awskeys import AwsKeys, CredentialsKeyError
from gateway.http.middleware import REQUEST_ID_KEY
from gateway.http.problems import UNAVAILABLE
from gateway.http.sigv4 import SignatureError, check_date, check_scope, parse_authorization, verify
from gateway.serving.erasure import mention
from gateway.serving.errors import Refused
from gateway.serving.requests import (
    ItemIn,
    ItemKind,
    OutcomeIn,
    OutcomesIn,
    RecommendationIn,
    Surface,
)
from gateway.settings import Settings

log = logging.getLogger(__name__)

# The name both services sign for (their models' `signingName`).
SIGNING_NAME = "personalize"
AWS_KEYS = web.AppKey("aws_keys", AwsKeys)
# Personalize's default list length; Segue's slates hold at most 100.
DEFAULT_RESULTS = 25
MAX_RESULTS = 500
MAX_SLATE = 100
EVENT_NAMESPACE = uuid.UUID("5b7e2d0c-94a1-4f6e-8c3b-1d2a7f9e6b54")
_ARN = re.compile(r"arn:[a-z\d-]+:personalize:[^:]*:[^:]*:([a-z-]+)/(.+)")

M = TypeVar("M", bound=BaseModel)


class AwsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def invalid(message: str) -> AwsError:
    return AwsError("InvalidInputException", message)


def not_found(message: str) -> AwsError:
    return AwsError("ResourceNotFoundException", message, 404)


def _error(
    code: str, message: str, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    # botocore takes the code from this header for REST-JSON services; the body's `message`
    # becomes the exception's message.
    return web.Response(
        status=status,
        body=orjson.dumps({"message": message}),
        content_type="application/json",
        headers={"x-amzn-ErrorType": code, **(headers or {})},
    )


def _json(body: dict[str, Any] | None) -> web.Response:
    if body is None:
        return web.Response(status=200)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


# --- authentication -------------------------------------------------------------------------


async def authenticate(request: web.Request, scope: Scope) -> tuple[ApiKey, bytes]:
    """The key that signed this request, with `scope`, and the body; raises what AWS would
    answer. The body is read only once the key is known: a caller without one costs no read of
    up to SEGUE_MAX_BODY_BYTES."""
    credential = parse_authorization(request.headers.getall("Authorization", []))
    settings = request.app[SETTINGS]
    check_scope(credential, region=settings.aws_region, service=SIGNING_NAME)
    dates = request.headers.getall("X-Amz-Date", [])
    if len(dates) > 1:
        raise SignatureError("IncompleteSignatureException", "send one X-Amz-Date header", 400)
    amz_date = dates[0] if dates else None
    check_date(credential, amz_date, request.app[CLOCK]())
    assert amz_date is not None
    found = await request.app[AWS_KEYS].lookup(credential.access_key_id)
    if found is None:
        raise SignatureError(
            "UnrecognizedClientException", "the access key id is unknown or revoked"
        )
    key, secret = found
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise AwsError("InvalidInputException", "the request body is too large", 413) from None
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    path, _, query = request.raw_path.partition("?")
    verify(
        credential,
        secret,
        method=request.method,
        raw_path=path,
        raw_query=query,
        headers=headers,
        amz_date=amz_date,
        body=body,
    )
    if scope not in key.scopes:
        raise AwsError("AccessDeniedException", f"this key lacks the {scope.value!r} scope", 403)
    wait = request.app[LIMITER].acquire(key.key_id)
    if wait:
        raise AwsError(
            "ThrottlingException", f"this key is over its rate limit; retry in {wait:.2f} s", 429
        )
    return key, body


Operation = Callable[[web.Request, bytes], Awaitable[dict[str, Any] | None]]


def operation(scope: Scope, call: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A route: authenticate, run `call` on the body, answer every failure in AWS's form."""

    async def handle(request: web.Request) -> web.Response:
        response = await _answer(request, scope, call)
        # The SDK reports it as ResponseMetadata.RequestId: the same id as X-Request-Id, in the
        # gateway's log lines and the metadata of the events the call appended.
        response.headers["x-amzn-RequestId"] = request[REQUEST_ID_KEY]
        return response

    return handle


async def _answer(request: web.Request, scope: Scope, call: Operation) -> web.Response:
    try:
        key, body = await authenticate(request, scope)
        CURRENT_KEY.set(key)
        return _json(await call(request, body))
    except SignatureError as exc:
        return _error(exc.code, exc.message, exc.status)
    except AwsError as exc:
        retry = {"Retry-After": "1"} if exc.status == 429 else None
        return _error(exc.code, exc.message, exc.status, retry)
    except Refused as exc:
        where = f"{exc.field}: " if exc.field else ""
        return _error("InvalidInputException", where + exc.detail, 400)
    except CredentialsKeyError as exc:
        log.error("cannot open an AWS key's secret: %s", exc)
        return _error("InternalFailure", "the gateway cannot verify this key (logged)", 500)
    except UNAVAILABLE as exc:
        log.warning("database unavailable: %r", exc)
        return _error(
            "ServiceUnavailableException",
            "the event store cannot be reached; retry later",
            503,
            {"Retry-After": "1"},
        )
    except Exception:
        # The route, not the path (as problem_middleware logs it).
        log.exception("unhandled error in %s %s", request.method, request.match_info.route)
        return _error("InternalFailure", "an unexpected error; it has been logged", 500)


# --- bodies ---------------------------------------------------------------------------------


class AwsModel(BaseModel):
    # Members a newer SDK may send are ignored, as AWS ignores what it does not know; the ones
    # Segue cannot honour are named and refused by the handlers instead.
    model_config = ConfigDict(extra="ignore", frozen=True)


Name = Annotated[str, Field(min_length=1, max_length=256)]


class GetRecommendationsIn(AwsModel):
    campaignArn: str | None = None
    recommenderArn: str | None = None
    itemId: str | None = None
    userId: Name | None = None
    numResults: int | None = None
    context: dict[str, str] | None = None
    filterArn: str | None = None
    filterValues: dict[str, str] | None = None
    promotions: list[Any] | None = None
    metadataColumns: dict[str, Any] | None = None


class GetPersonalizedRankingIn(AwsModel):
    campaignArn: str
    inputList: Annotated[list[Name], Field(min_length=1, max_length=MAX_RESULTS)]
    userId: Name
    context: dict[str, str] | None = None
    filterArn: str | None = None
    filterValues: dict[str, str] | None = None
    metadataColumns: dict[str, Any] | None = None


class EventIn(AwsModel):
    eventId: Name | None = None
    eventType: Name
    eventValue: float | None = None
    itemId: Name | None = None
    properties: str | None = None
    sentAt: float
    recommendationId: Annotated[str, Field(min_length=1, max_length=40)] | None = None
    impression: Annotated[list[Name], Field(min_length=1, max_length=25)] | None = None
    metricAttribution: dict[str, Any] | None = None


class PutEventsIn(AwsModel):
    trackingId: Name
    userId: Name | None = None
    sessionId: Name
    eventList: Annotated[list[EventIn], Field(min_length=1, max_length=10)]


class ItemPut(AwsModel):
    itemId: Name
    properties: str | None = None


class PutItemsIn(AwsModel):
    datasetArn: str
    items: Annotated[list[ItemPut], Field(min_length=1, max_length=10)]


class UserPut(AwsModel):
    userId: Name
    properties: str | None = None


class PutUsersIn(AwsModel):
    datasetArn: str
    users: Annotated[list[UserPut], Field(min_length=1, max_length=10)]


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation(exc: ValidationError) -> AwsError:
    first = exc.errors()[0]
    where = _where(tuple(first["loc"]))
    return invalid(f"{where}: {first['msg']}" if where else str(first["msg"]))


def parse(raw: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise _validation(exc) from None


def build(model: type[M], names: dict[str, str], **fields: Any) -> M:
    """A Segue request from translated fields; its refusals as InvalidInputException naming
    the member of the AWS request (`names`: Segue field -> AWS member) the value came from."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        head = names.get(str(loc[0]), str(loc[0])) if loc else ""
        where = head + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
        raise invalid(f"{where}: {first['msg']}" if where else str(first["msg"])) from None


def properties(text: str | None, where: str) -> dict[str, Any]:
    """A `properties` member: a JSON object, sent as text."""
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid(f"{where}: must be a JSON object, as text") from None
    if not isinstance(value, dict):
        raise invalid(f"{where}: must be a JSON object, as text")
    return value


def resource(arn: str, kinds: tuple[str, ...], where: str) -> str:
    """The name at the end of a Personalize ARN of one of `kinds`."""
    match = _ARN.fullmatch(arn)
    if match is None or match[1] not in kinds:
        raise invalid(
            f"{where}: must be the ARN of a Personalize {' or '.join(kinds)}, "
            "arn:aws:personalize:<region>:<account>:<type>/<name>"
        )
    return match[2]


def surface_of(settings: Settings, arn: str, kinds: tuple[str, ...], where: str) -> Surface:
    name = resource(arn, kinds, where)
    try:
        return Surface(settings.personalize_surfaces.get(name, name))
    except ValueError:
        raise not_found(
            f"no {' or '.join(kinds)} {name!r}: Segue serves the surfaces "
            f"{', '.join(s.value for s in Surface)}; SEGUE_PERSONALIZE_SURFACES maps other names"
        ) from None


def _unsupported(body: BaseModel, names: tuple[str, ...]) -> None:
    # Ignoring a filter or promotion would answer with items the caller meant to keep out.
    for name in names:
        if getattr(body, name) is not None:
            raise invalid(f"{name}: not supported by Segue (docs/personalize.md)")


def _context(context: dict[str, str] | None, user_id: str) -> dict[str, Any]:
    out: dict[str, Any] = dict(context or {})
    # The context is logged verbatim with the slate, where forgetting the listener cannot reach.
    where = mention(out, [user_id])
    if where is not None:
        raise invalid(f"context{where}: must not contain the userId (it is logged with the slate)")
    return out


def _slate(served: Any) -> list[dict[str, Any]]:
    return [{"itemId": s.item_id, "score": s.score} for s in served.slate]


# --- personalize-runtime --------------------------------------------------------------------


async def get_recommendations(request: web.Request, raw: bytes) -> dict[str, Any]:
    body = parse(raw, GetRecommendationsIn)
    settings = request.app[SETTINGS]
    if (body.campaignArn is None) == (body.recommenderArn is None):
        raise invalid("send one of campaignArn and recommenderArn")
    arn, where = (
        (body.campaignArn, "campaignArn")
        if body.campaignArn is not None
        else (body.recommenderArn, "recommenderArn")
    )
    assert arn is not None
    surface = surface_of(settings, arn, ("campaign", "recommender"), where)
    _unsupported(body, ("itemId", "filterArn", "filterValues", "promotions", "metadataColumns"))
    if body.userId is None:
        raise invalid("userId: required (Segue recommends for a listener)")
    n = DEFAULT_RESULTS if body.numResults is None else body.numResults
    if not 1 <= n <= MAX_RESULTS:
        raise invalid(f"numResults: must be between 1 and {MAX_RESULTS}")
    req = build(
        RecommendationIn,
        RUNTIME_NAMES,
        user_id=body.userId,
        surface=surface,
        n=min(n, MAX_SLATE),
        context=_context(body.context, body.userId),
    )
    served = await request.app[RECOMMENDER].recommend(req)
    return {"itemList": _slate(served), "recommendationId": str(served.recommendation_id)}


async def get_personalized_ranking(request: web.Request, raw: bytes) -> dict[str, Any]:
    body = parse(raw, GetPersonalizedRankingIn)
    surface = surface_of(request.app[SETTINGS], body.campaignArn, ("campaign",), "campaignArn")
    _unsupported(body, ("filterArn", "filterValues", "metadataColumns"))
    candidates = list(dict.fromkeys(body.inputList))
    if len(candidates) > MAX_SLATE:
        raise invalid(f"inputList: Segue ranks at most {MAX_SLATE} distinct items")
    req = build(
        RecommendationIn,
        RUNTIME_NAMES,
        user_id=body.userId,
        surface=surface,
        n=len(candidates),
        context=_context(body.context, body.userId),
        candidates=candidates,
    )
    served = await request.app[RECOMMENDER].recommend(req)
    return {
        "personalizedRanking": _slate(served),
        "recommendationId": str(served.recommendation_id),
    }


# --- personalize-events ---------------------------------------------------------------------


def event_kind(settings: Settings, event_type: str, where: str) -> OutcomeKind:
    if event_type in settings.personalize_event_types:
        return settings.personalize_event_types[event_type]
    try:
        return OutcomeKind(event_type.strip().lower().replace("-", "_").replace(" ", "_"))
    except ValueError:
        raise invalid(
            f"{where}: {event_type!r} is no outcome kind "
            f"({', '.join(k.value for k in OutcomeKind)}); SEGUE_PERSONALIZE_EVENT_TYPES maps "
            "other event types"
        ) from None


def recommendation(value: str | None) -> uuid.UUID | None:
    """Segue's recommendation ids are UUIDs; any other id was issued by Personalize before the
    switch and attributes nothing here (docs/decisions.md, "Personalize-compatible routes")."""
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def event_id(tracking_id: str, user_id: str, session_id: str, event: EventIn) -> uuid.UUID:
    """The outcome's id: from the caller's eventId, else from everything the event says, so an
    SDK's retry of the same call is recognised as a duplicate."""
    if event.eventId is not None:
        return uuid.uuid5(EVENT_NAMESPACE, f"id\0{tracking_id}\0{event.eventId}")
    content = [
        tracking_id,
        user_id,
        session_id,
        event.eventType,
        event.eventValue,
        event.itemId,
        event.sentAt,
        event.recommendationId,
        event.impression,
        event.properties,
    ]
    return uuid.uuid5(EVENT_NAMESPACE, orjson.dumps(content).decode())


_OUTCOME_FIELD = re.compile(r"outcomes\[(\d+)\]\.(\w+)")
RUNTIME_NAMES = {"user_id": "userId", "n": "numResults", "candidates": "inputList"}


def event_names(where: str, item: str) -> dict[str, str]:
    """An outcome's fields -> the members of the event it came from."""
    return {
        "event_id": f"{where}.eventId",
        "user_id": "userId",
        "item_id": item,
        "value": f"{where}.eventValue",
        "recommendation_id": f"{where}.recommendationId",
        "occurred_at": f"{where}.sentAt",
    }


async def put_events(request: web.Request, raw: bytes) -> None:
    body = parse(raw, PutEventsIn)
    settings = request.app[SETTINGS]
    # Personalize keys anonymous events by session; so does Segue, as the listener.
    user = body.userId or body.sessionId
    outcomes: list[OutcomeIn] = []
    names: list[dict[str, str]] = []

    def add(where: str, item: str, **fields: Any) -> None:
        names.append(event_names(where, item))
        outcomes.append(build(OutcomeIn, names[-1], user_id=user, **fields))

    for i, e in enumerate(body.eventList):
        where = f"eventList[{i}]"
        kind = event_kind(settings, e.eventType, f"{where}.eventType")
        properties(e.properties, f"{where}.properties")
        if e.itemId is None and e.impression is None:
            raise invalid(f"{where}: an itemId or an impression list is needed")
        try:
            occurred = datetime.fromtimestamp(e.sentAt, UTC)
        except (OverflowError, OSError, ValueError):
            raise invalid(f"{where}.sentAt: out of range") from None
        rid = recommendation(e.recommendationId)
        base = event_id(body.trackingId, user, body.sessionId, e)
        if e.itemId is not None:
            add(
                where,
                f"{where}.itemId",
                event_id=base,
                item_id=e.itemId,
                kind=kind,
                recommendation_id=rid,
                value=e.eventValue,
                occurred_at=occurred,
            )
        seen: set[str] = set()
        for k, item in enumerate(e.impression or ()):
            if item in seen:
                continue  # shown once, whatever the list repeats
            seen.add(item)
            add(
                where,
                f"{where}.impression[{k}]",
                event_id=uuid.uuid5(EVENT_NAMESPACE, f"{base}/impression/{item}"),
                item_id=item,
                kind=OutcomeKind.IMPRESSION,
                recommendation_id=rid,
                occurred_at=occurred,
            )
    batch = build(OutcomesIn, {}, outcomes=outcomes)
    try:
        await request.app[OUTCOMES].record(batch)
    except Refused as exc:
        # Name the member of the AWS request, not the field of the outcome it became.
        match = _OUTCOME_FIELD.fullmatch(exc.field or "")
        if match is not None:
            exc.field = names[int(match[1])].get(match[2], exc.field)
        raise


async def put_items(request: web.Request, raw: bytes) -> None:
    body = parse(raw, PutItemsIn)
    settings = request.app[SETTINGS]
    resource(body.datasetArn, ("dataset",), "datasetArn")
    items: dict[str, ItemUpserted] = {}
    for i, it in enumerate(body.items):
        attributes = properties(it.properties, f"items[{i}].properties")
        named = attributes.get("kind")
        kind = ItemKind(named if named in set(ItemKind) else settings.personalize_item_kind)
        checked = build(
            ItemIn,
            {
                "item_id": f"items[{i}].itemId",
                "kind": f"items[{i}].properties.kind",
                "attributes": f"items[{i}].properties",
            },
            item_id=it.itemId,
            kind=kind,
            attributes=attributes,
        )
        # A later put of the same item in one call wins, as it would in two calls.
        items[it.itemId] = ItemUpserted(
            item_id=checked.item_id, kind=checked.kind.value, attributes=dict(checked.attributes)
        )
    await request.app[CATALOG].upsert(items.values())


async def put_users(request: web.Request, raw: bytes) -> None:
    """Validated and acknowledged, not kept: the policy uses no listener attributes, and the log
    is append-only, where a listener's attributes would outlive their erasure (docs/decisions.md,
    "Personalize-compatible routes")."""
    body = parse(raw, PutUsersIn)
    resource(body.datasetArn, ("dataset",), "datasetArn")
    for i, user in enumerate(body.users):
        properties(user.properties, f"users[{i}].properties")


# --- the routes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    operation: str
    scope: Scope
    call: Operation


ROUTES: tuple[Route, ...] = (
    Route("POST", "/recommendations", "GetRecommendations", Scope.RECOMMEND, get_recommendations),
    Route(
        "POST",
        "/personalize-ranking",
        "GetPersonalizedRanking",
        Scope.RECOMMEND,
        get_personalized_ranking,
    ),
    Route("POST", "/events", "PutEvents", Scope.INGEST, put_events),
    Route("POST", "/items", "PutItems", Scope.CATALOG, put_items),
    Route("POST", "/users", "PutUsers", Scope.INGEST, put_users),
)


async def _keys(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    key = settings.credentials_key.get_secret_value() if settings.credentials_key else None
    app[AWS_KEYS] = AwsKeys(app[POOL], key, settings.key_cache_seconds)
    yield


def check_settings(settings: Settings) -> None:
    """Refuse to start with a mapping that names no surface or kind, rather than answer every
    call of it with an error."""
    for name, surface in settings.personalize_surfaces.items():
        if surface not in set(Surface):
            raise ValueError(f"SEGUE_PERSONALIZE_SURFACES: {name!r} -> unknown surface {surface!r}")
    if settings.personalize_item_kind not in set(ItemKind):
        raise ValueError(
            f"SEGUE_PERSONALIZE_ITEM_KIND: unknown kind {settings.personalize_item_kind!r}"
        )


def setup(app: web.Application) -> None:
    """Add the routes and the key lookup to `app` (after the pool's cleanup context)."""
    check_settings(app[SETTINGS])
    app.cleanup_ctx.append(_keys)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, operation(route.scope, route.call))
