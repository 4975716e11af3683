"""HTTP handlers: parse, call one service, serialize. SQL lives in the wings below (the
services, `gateway.store.reads`), never here."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote_to_bytes

import orjson
from aiohttp import web
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from domain.events import ItemUpserted, RecommendationServed
from gateway.http.appkeys import (
    CATALOG,
    CLOCK,
    ERASURE,
    INDEX,
    INDEX_SERVICE,
    OPENAPI,
    OUTCOMES,
    POOL,
    RECOMMENDER,
    REWARDS,
    SETTINGS,
)
from gateway.http.auth import CURRENT_KEY
from gateway.http.problems import ProblemError, from_validation
from gateway.http.schemas import (
    ForgetOut,
    HealthOut,
    IndexOut,
    ItemOut,
    ItemRewardsOut,
    ItemsOut,
    LongTermOut,
    OutcomesOut,
    PolicyOut,
    ProjectionStatusOut,
    ReadyOut,
    RecommendationOut,
    RewardOut,
    SimilarItemOut,
    SimilarOut,
    SlateItemOut,
    StatusOut,
    SurfaceRewardsOut,
)
from gateway.metrics import scrape
from gateway.projections.rewards import SurfaceRewards
from gateway.projections.runner import Status, publish_lag
from gateway.projections.runner import failed as failed_projections
from gateway.projections.runner import status as projection_status
from gateway.serving.catalog import CatalogItem
from gateway.serving.erasure import mention
from gateway.serving.recommendations import NO_INDEX, idempotent_id
from gateway.serving.requests import (
    BlendIn,
    ItemBody,
    ItemId,
    ItemsIn,
    OutcomesIn,
    RecommendationIn,
    Rfc3339,
    UserId,
)
from gateway.store import reads
from gateway.store.database import ping

M = TypeVar("M", bound=BaseModel)

_ITEM_ID: TypeAdapter[str] = TypeAdapter(ItemId)
_USER_ID: TypeAdapter[str] = TypeAdapter(UserId)
# Query strings are text: "5" is 5 here (the JSON bodies stay strict).
_N: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1, le=100)])


def reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=model.model_dump_json().encode(), content_type="application/json"
    )


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The body as `model`, or a problem: 415 not JSON, 413 too big, 400 malformed, 422 invalid."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ProblemError(
            415,
            "unsupported-media-type",
            "Unsupported Media Type",
            f"send application/json, not {ctype or 'no content type'}",
            field="Content-Type",
        )
    if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise ProblemError(
            415,
            "unsupported-media-type",
            "Unsupported Media Type",
            f"JSON is UTF-8; charset={request.charset} is not accepted",
            field="Content-Type",
        )
    raw = await request.read()
    if not raw.strip():
        raise ProblemError(400, "empty-body", "Empty body", "a JSON body is required", field="body")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation(exc) from None


def path_text(request: web.Request, name: str, adapter: TypeAdapter[str]) -> str:
    """The path parameter `name`, validated by `adapter`; 422 naming it when it is invalid, or
    when its percent-encoding is not UTF-8 (the router leaves such bytes encoded, so `%FF` would
    otherwise silently become the three-character id "%FF", the same as `%25FF`)."""
    resource = request.match_info.route.resource
    template = resource.canonical.split("/") if resource is not None else []
    raw = request.raw_path.partition("?")[0].split("/")
    marker = "{" + name + "}"
    if marker in template and len(raw) == len(template):
        try:
            unquote_to_bytes(raw[template.index(marker)]).decode("utf-8")
        except UnicodeDecodeError:
            raise ProblemError(
                422,
                "validation",
                "Invalid request",
                f"{name}: the percent-encoded bytes are not UTF-8",
                field=name,
            ) from None
    try:
        return adapter.validate_python(request.match_info[name])
    except ValidationError as exc:
        raise from_validation(exc, prefix=name) from None


def path_item_id(request: web.Request) -> str:
    return path_text(request, "item_id", _ITEM_ID)


def item_out(item: CatalogItem | ItemUpserted, version: int, retired: bool = False) -> ItemOut:
    return ItemOut(
        item_id=item.item_id,
        kind=item.kind,
        attributes=item.attributes,
        vector=list(item.vector) if item.vector is not None else None,
        retired=item.retired if isinstance(item, CatalogItem) else retired,
        version=version,
    )


def _no_user_ids_in_context(context: dict[str, Any], user_ids: list[str]) -> None:
    # The context is logged verbatim with the slate, in an append-only log that erasure cannot
    # rewrite: a listener's own id there would survive their forgetting.
    where = mention(context, user_ids)
    if where is not None:
        raise ProblemError(
            422,
            "validation",
            "Invalid request",
            "context must not contain a listener's id: it is logged with the slate, which "
            "forgetting the listener cannot undo",
            field=f"context{where}",
        )


IDEMPOTENCY_KEY = "Idempotency-Key"
_IDEMPOTENCY_KEY: TypeAdapter[str] = TypeAdapter(
    Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")]
)


def idempotency(request: web.Request) -> uuid.UUID | None:
    """The recommendation id an `Idempotency-Key` header asks for, or None without one."""
    raw = request.headers.get(IDEMPOTENCY_KEY)
    if raw is None:
        return None
    try:
        value = _IDEMPOTENCY_KEY.validate_python(raw)
    except ValidationError as exc:
        raise from_validation(exc, prefix=IDEMPOTENCY_KEY) from None
    key = CURRENT_KEY.get()
    assert key is not None, "idempotency keys are only read on authenticated routes"
    return idempotent_id(key.key_id, value)


async def recommend(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, RecommendationIn)
    _no_user_ids_in_context(body.context, [body.user_id])
    served = await request.app[RECOMMENDER].recommend(body, recommendation_id=idempotency(request))
    return reply(recommendation_out(served))


async def blend(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, BlendIn)
    seen: set[str] = set()
    for i, user in enumerate(body.user_ids):
        if user in seen:
            raise ProblemError(
                422,
                "validation",
                "Invalid request",
                f"listener {user!r} appears twice",
                field=f"user_ids[{i}]",
            )
        seen.add(user)
    _no_user_ids_in_context(body.context, body.user_ids)
    served = await request.app[RECOMMENDER].blend(body, recommendation_id=idempotency(request))
    return reply(recommendation_out(served))


def query_n(request: web.Request) -> int:
    try:
        return _N.validate_python(request.query.get("n", "10"))
    except ValidationError as exc:
        raise from_validation(exc, prefix="n") from None


def path_user_id(request: web.Request) -> str:
    return path_text(request, "user_id", _USER_ID)


async def discover(request: web.Request) -> web.StreamResponse:
    user_id = path_user_id(request)
    n = query_n(request)
    return reply(recommendation_out(await request.app[RECOMMENDER].discover(user_id, n)))


async def forget(request: web.Request) -> web.StreamResponse:
    await request.app[ERASURE].forget(path_user_id(request))
    return reply(ForgetOut(status="accepted"), status=202)


async def similar(request: web.Request) -> web.StreamResponse:
    item_id = path_item_id(request)
    n = query_n(request)
    if await request.app[CATALOG].get(item_id) is None:
        raise _not_found(item_id)
    found = request.app[RECOMMENDER].similar(item_id, n)
    items, version = found if found is not None else ([], NO_INDEX)
    return reply(
        SimilarOut(
            item_id=item_id,
            items=[SimilarItemOut(item_id=i, score=s) for i, s in items],
            index_version=version,
        )
    )


def recommendation_out(served: RecommendationServed) -> RecommendationOut:
    return RecommendationOut(
        recommendation_id=served.recommendation_id,
        items=[
            SlateItemOut(
                item_id=s.item_id, position=s.position, score=s.score, propensity=s.propensity
            )
            for s in served.slate
        ],
        policy=PolicyOut(name=served.policy_name, version=served.policy_version),
        index_version=served.index_version,
    )


async def record_outcomes(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, OutcomesIn)
    result = await request.app[OUTCOMES].record(body)
    return reply(OutcomesOut(accepted=result.accepted, duplicates=result.duplicates))


def _upserted(body: ItemBody, item_id: str) -> ItemUpserted:
    return ItemUpserted(
        item_id=item_id,
        kind=body.kind.value,
        attributes=dict(body.attributes),
        vector=tuple(body.vector) if body.vector is not None else None,
    )


async def upsert_items(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ItemsIn)
    seen: set[str] = set()
    for i, it in enumerate(body.items):
        if it.item_id in seen:
            raise ProblemError(
                422,
                "duplicate-item",
                "Duplicate item",
                f"item {it.item_id!r} appears twice in one request",
                field=f"items[{i}].item_id",
            )
        seen.add(it.item_id)
    stored = await request.app[CATALOG].upsert(_upserted(it, it.item_id) for it in body.items)
    return reply(ItemsOut(items=[item_out(it, v) for it, v in stored]))


async def put_item(request: web.Request) -> web.StreamResponse:
    item_id = path_item_id(request)
    body = await parse_body(request, ItemBody)
    if body.item_id is not None and body.item_id != item_id:
        raise ProblemError(
            422,
            "id-mismatch",
            "Item id mismatch",
            "the body's item_id differs from the path's",
            field="item_id",
        )
    [(item, version)] = await request.app[CATALOG].upsert([_upserted(body, item_id)])
    return reply(item_out(item, version))


def _not_found(item_id: str) -> ProblemError:
    return ProblemError(
        404, "not-found", "Not Found", f"no item {item_id!r} in the catalogue", field="item_id"
    )


async def get_item(request: web.Request) -> web.StreamResponse:
    item_id = path_item_id(request)
    catalog = request.app[CATALOG]
    item = await catalog.get(item_id)
    if item is None:
        raise _not_found(item_id)
    return reply(item_out(item, await catalog.version(item_id)))


async def retire_item(request: web.Request) -> web.StreamResponse:
    item_id = path_item_id(request)
    retired = await request.app[CATALOG].retire(item_id)
    if retired is None:
        raise _not_found(item_id)
    item, version = retired
    return reply(item_out(item, version))


async def healthz(request: web.Request) -> web.StreamResponse:
    return reply(HealthOut(status="ok"))


async def readyz(request: web.Request) -> web.StreamResponse:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(1.0):
            await ping(request.app[POOL])
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    ready = all(v == "ok" for v in checks.values())
    # An index is not needed to answer (new installs serve without one, and a damaged one is
    # replaced by the last one loaded or by the popularity fallback), so it does not decide
    # readiness; a damaged published index makes the process "degraded", still ready.
    holder = request.app[INDEX]
    degraded = holder.error is not None
    if degraded:
        checks["index"] = f"degraded: {holder.error}"
    elif holder.current is None:
        checks["index"] = "none yet"
    else:
        checks["index"] = f"ok (version {holder.current.version})"
    # A projector stopped at an event it cannot apply: answers go on from aggregates that no
    # longer move, so the process is degraded (still ready: every process would be the same).
    if ready:
        try:
            async with asyncio.timeout(1.0):
                stuck = await failed_projections(request.app[POOL])
        except Exception as exc:
            stuck = []
            checks["projections"] = f"unknown: {exc.__class__.__name__}"
        else:
            checks["projections"] = (
                "; ".join(f"{n} stopped at event {pos}: {err}" for n, err, pos in stuck)
                if stuck
                else "ok"
            )
        degraded = degraded or bool(stuck)
    state: Literal["ready", "degraded", "not ready"] = (
        "not ready" if not ready else "degraded" if degraded else "ready"
    )
    return reply(ReadyOut(status=state, checks=checks), status=200 if ready else 503)


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=orjson.dumps(request.app[OPENAPI]), content_type="application/json")


async def metrics(request: web.Request) -> web.StreamResponse:
    body, content_type = scrape()
    return web.Response(body=body, headers={"Content-Type": content_type})


_AS_OF: TypeAdapter[datetime] = TypeAdapter(Rfc3339)


def _reward(r: SurfaceRewards) -> RewardOut:
    return RewardOut(sum=float(r.reward_sum), mean=r.mean, count=r.served)


async def item_rewards(request: web.Request) -> web.StreamResponse:
    item_id = path_item_id(request)
    now = request.app[CLOCK]()
    raw = request.query.get("as_of")
    as_of = now
    if raw is not None:
        try:
            as_of = _AS_OF.validate_python(raw)
        except ValidationError as exc:
            raise from_validation(exc, prefix="as_of") from None
        if as_of > now:
            raise ProblemError(
                422,
                "validation",
                "Invalid request",
                "as_of must not be in the future",
                field="as_of",
            )
    if await request.app[CATALOG].get(item_id) is None:
        raise _not_found(item_id)
    found = await request.app[REWARDS].item(item_id, as_of, current=raw is None)
    if found is None:
        raise ProblemError(
            503,
            "not-ready",
            "Service Unavailable",
            "the rewards projection has not started yet",
            headers={"Retry-After": "1"},
        )
    lt = found.long_term
    return reply(
        ItemRewardsOut(
            item_id=item_id,
            as_of=as_of,
            definition_version=found.definition_version,
            served=found.total.served,
            outcomes=found.total.outcomes,
            reward=_reward(found.total),
            positions={str(p): n for p, n in sorted(found.positions.items())},
            by_surface={
                s: SurfaceRewardsOut(served=r.served, outcomes=r.outcomes, reward=_reward(r))
                for s, r in sorted(found.by_surface.items())
            },
            long_term=LongTermOut(
                estimate=lt.estimate,
                variance=lt.variance,
                observed_traces=lt.observed_traces,
                horizon_days=found.horizon_days,
            ),
            projected_through=found.projected_through,
        )
    )


def projection_out(r: Status) -> ProjectionStatusOut:
    """A projection's status as the admin routes answer it."""
    return ProjectionStatusOut(
        name=r.name,
        version=r.version,
        status=r.status,
        definition_version=r.definition_version,
        position=r.position.global_position,
        events_applied=r.events_applied,
        lag_events=r.lag_events,
        lag_seconds=r.lag_seconds,
        error=r.error,
        failed_position=r.failed_position,
    )


async def admin_status(request: web.Request) -> web.StreamResponse:
    pool = request.app[POOL]
    # Both counts read a table that grows with the log: the slow bound, not the pool's.
    slow = request.app[SETTINGS].slow_query_timeout_seconds
    rows = await projection_status(pool, lag_timeout=slow)
    publish_lag(rows)
    events = await reads.count(pool, timeout=slow)
    return reply(
        StatusOut(
            projections=[projection_out(r) for r in rows],
            events=int(events),
            index=index_out(request),
        )
    )


def index_out(request: web.Request) -> IndexOut:
    service = request.app[INDEX_SERVICE]
    current = request.app[INDEX].current
    manifest = current.manifest if current is not None else {}
    return IndexOut(
        version=manifest.get("version"),
        built_at=datetime.fromisoformat(manifest["built_at"]) if manifest else None,
        items=int(manifest.get("items", 0)),
        recall_at_10=manifest.get("recall_at_10"),
        position=manifest.get("position"),
        building=service.building,
        error=request.app[INDEX].error or service.last_error,
    )


async def rebuild_index(request: web.Request) -> web.StreamResponse:
    request.app[INDEX_SERVICE].request_build()
    return reply(index_out(request), status=202)
