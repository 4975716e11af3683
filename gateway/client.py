"""An async Python client for the Segue HTTP API (used by the tests, the simulator and the
benchmarks).

    async with SegueClient("http://127.0.0.1:8080", key) as segue:
        slate = await segue.recommend("user-1", surface="home", n=10)
        await segue.record_outcomes([outcome(...)])

Errors come back as `SegueError` carrying the problem+json body. A 503 (the event store is
away), a 429 (rate limited) and a lost connection are retried (tenacity), after the answer's
`Retry-After` when it gives one, else with jittered exponential waits, within `retry_seconds`
in all. Every route is safe to retry: outcomes are idempotent by `event_id`, catalogue writes
leave the same state, and a recommendation or blend is sent with an `Idempotency-Key` made once
per call, so a retried one is answered with the slate first logged for it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypedDict
from urllib.parse import quote

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
)

from gateway.backoff import jittered

RETRIED_STATUSES = frozenset({429, 503})


# --- the answers, typed (plain dicts at run time: `answer["items"]` as before) ---------------


class SlateItem(TypedDict):
    item_id: str
    position: int
    score: float
    propensity: float


class Policy(TypedDict):
    name: str
    version: str


class Recommendation(TypedDict):
    recommendation_id: str
    items: list[SlateItem]
    policy: Policy
    index_version: str


class Outcomes(TypedDict):
    accepted: int
    duplicates: int


class Item(TypedDict):
    item_id: str
    kind: str
    attributes: dict[str, Any]
    vector: list[float] | None
    retired: bool
    version: int


class Forgotten(TypedDict):
    status: Literal["accepted"]


class SimilarItem(TypedDict):
    item_id: str
    score: float


class Similar(TypedDict):
    item_id: str
    items: list[SimilarItem]
    index_version: str


class Reward(TypedDict):
    sum: float
    mean: float
    count: int


class SurfaceRewards(TypedDict):
    served: int
    outcomes: dict[str, int]
    reward: Reward


class LongTerm(TypedDict):
    estimate: float
    variance: float
    observed_traces: int
    horizon_days: int


class ItemRewards(TypedDict):
    item_id: str
    as_of: str
    definition_version: str
    served: int
    outcomes: dict[str, int]
    reward: Reward
    positions: dict[str, int]
    by_surface: dict[str, SurfaceRewards]
    long_term: LongTerm
    projected_through: str | None


class ProjectionStatus(TypedDict):
    name: str
    version: int
    status: str
    definition_version: str
    position: int
    events_applied: int
    lag_events: int
    lag_seconds: float
    error: str | None
    failed_position: int | None


class IndexStatus(TypedDict):
    version: str | None
    built_at: str | None
    items: int
    recall_at_10: float | None
    position: int | None
    building: bool
    error: str | None


class Status(TypedDict):
    projections: list[ProjectionStatus]
    events: int
    index: IndexStatus


class Ready(TypedDict):
    status: Literal["ready", "degraded", "not ready"]
    checks: dict[str, str]


class Rebuild(TypedDict):
    projection: str
    state: Literal["running", "done", "failed"]
    definition_version: str | None
    version: int | None
    position: int
    target: int
    started_at: str
    finished_at: str | None
    error: str | None


class DashboardIndex(IndexStatus):
    age_seconds: float | None


class RequestFigures(TypedDict):
    requests: int
    rate_per_second: float
    client_errors: int
    errors: int
    p50_seconds: float | None
    p95_seconds: float | None
    p99_seconds: float | None
    mean_seconds: float | None


class RouteFigures(RequestFigures):
    method: str
    route: str


class Requests(TypedDict):
    process_id: int
    window_seconds: float
    total: RequestFigures
    routes: list[RouteFigures]


class Dashboard(TypedDict):
    generated_at: str
    projections: list[ProjectionStatus]
    rebuilds: list[Rebuild]
    index: DashboardIndex
    requests: Requests


class SurfaceDay(TypedDict):
    day: str
    surface: str
    slates: int
    outcomes: int
    reward: float
    reward_per_slate: float


class KindDay(TypedDict):
    day: str
    kind: str
    count: int


class Series(TypedDict):
    since: str
    until: str
    definition_version: str | None
    rewards: list[SurfaceDay]
    outcomes: list[KindDay]


class SegueError(Exception):
    """A non-2xx answer. `problem` is the RFC 9457 body (`type`, `detail`, `field`...)."""

    def __init__(self, status: int, problem: dict[str, Any], headers: Mapping[str, str]) -> None:
        super().__init__(f"{status}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem
        self.field: str | None = problem.get("field")
        self.retry_after = headers.get("Retry-After")


def outcome(
    user_id: str,
    item_id: str,
    kind: str,
    *,
    recommendation_id: str | uuid.UUID | None = None,
    value: float | None = None,
    occurred_at: datetime | None = None,
    event_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """One outcome in the wire shape, with a fresh idempotency key unless one is given."""
    out: dict[str, Any] = {
        "event_id": str(event_id or uuid.uuid4()),
        "user_id": user_id,
        "item_id": item_id,
        "kind": kind,
    }
    if recommendation_id is not None:
        out["recommendation_id"] = str(recommendation_id)
    if value is not None:
        out["value"] = value
    if occurred_at is not None:
        out["occurred_at"] = occurred_at.isoformat()
    return out


class SegueClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry_seconds: float = 60.0,
    ) -> None:
        """`timeout` bounds one attempt; `retry_seconds` all the attempts of one call (0: no
        retries)."""
        self.retry_seconds = retry_seconds
        self.retries = 0  # attempts repeated so far, by this client
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout)
        )

    async def __aenter__(self) -> SegueClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One call: attempts until an answer that is not worth retrying, or `retry_seconds`."""
        if self.retry_seconds <= 0:
            return await self._attempt(method, path, json, params, headers)
        backoff = jittered(0.2, 5.0)

        def wait(state: RetryCallState) -> float:
            self.retries += 1
            failure = state.outcome.exception() if state.outcome is not None else None
            if isinstance(failure, SegueError) and failure.retry_after is not None:
                try:
                    return min(float(failure.retry_after), 30.0)
                except ValueError:
                    pass  # an HTTP date: rare from Segue; fall back to the backoff
            return float(backoff(state))

        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_worth_retrying),
            wait=wait,
            stop=stop_after_delay(self.retry_seconds),
            reraise=True,
        ):
            with attempt:
                return await self._attempt(method, path, json, params, headers)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def _attempt(
        self,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        async with self._session.request(
            method,
            self.base_url + path,
            json=json,
            params=params,
            headers={**self._headers, **(headers or {})},
        ) as resp:
            if resp.content_type in ("application/json", "application/problem+json"):
                body = await resp.json(content_type=None)
            else:
                body = await resp.text()
            if resp.status >= 400:
                problem = body if isinstance(body, dict) else {"detail": str(body)}
                raise SegueError(resp.status, problem, resp.headers)
            return body

    async def recommend(
        self,
        user_id: str,
        *,
        surface: str = "home",
        n: int = 10,
        context: Mapping[str, Any] | None = None,
        candidates: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        kinds: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Recommendation:
        """One slate. Retries send the same `Idempotency-Key` (one is made if none is given),
        so however often the call is retried, one slate is logged and answered."""
        body: dict[str, Any] = {"user_id": user_id, "surface": surface, "n": n}
        if context:
            body["context"] = dict(context)
        if candidates is not None:
            body["candidates"] = list(candidates)
        if exclude:
            body["exclude"] = list(exclude)
        if kinds:
            body["kinds"] = list(kinds)
        result: Recommendation = await self.request(
            "POST",
            "/v1/recommendations",
            json=body,
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
        )
        return result

    async def blend(
        self,
        user_ids: Sequence[str],
        *,
        surface: str = "home",
        n: int = 10,
        idempotency_key: str | None = None,
    ) -> Recommendation:
        result: Recommendation = await self.request(
            "POST",
            "/v1/blends",
            json={"user_ids": list(user_ids), "surface": surface, "n": n},
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
        )
        return result

    async def discover(self, user_id: str, *, n: int = 10) -> Recommendation:
        result: Recommendation = await self.request(
            "GET", f"/v1/users/{quote(user_id, safe='')}/discover", params={"n": str(n)}
        )
        return result

    async def forget(self, user_id: str) -> Forgotten:
        """Erasure (admin scope): the same answer whether or not the id was known."""
        result: Forgotten = await self.request(
            "POST", f"/v1/users/{quote(user_id, safe='')}/forget"
        )
        return result

    async def record_outcomes(self, outcomes: Iterable[Mapping[str, Any]]) -> Outcomes:
        result: Outcomes = await self.request(
            "POST", "/v1/outcomes", json={"outcomes": list(outcomes)}
        )
        return result

    async def put_item(
        self,
        item_id: str,
        kind: str,
        attributes: Mapping[str, Any] | None = None,
        vector: Sequence[float] | None = None,
    ) -> Item:
        body: dict[str, Any] = {"kind": kind, "attributes": dict(attributes or {})}
        if vector is not None:
            body["vector"] = list(vector)
        result: Item = await self.request("PUT", f"/v1/items/{quote(item_id, safe='')}", json=body)
        return result

    async def upsert_items(self, items: Iterable[Mapping[str, Any]]) -> list[Item]:
        result = await self.request("POST", "/v1/items", json={"items": list(items)})
        return list(result["items"])

    async def get_item(self, item_id: str) -> Item:
        result: Item = await self.request("GET", f"/v1/items/{quote(item_id, safe='')}")
        return result

    async def retire_item(self, item_id: str) -> Item:
        result: Item = await self.request("DELETE", f"/v1/items/{quote(item_id, safe='')}")
        return result

    async def ready(self) -> bool:
        try:
            await self._attempt("GET", "/readyz", None, None, None)
        except (SegueError, aiohttp.ClientError):
            return False
        return True

    async def similar(self, item_id: str, *, n: int = 10) -> Similar:
        result: Similar = await self.request(
            "GET", f"/v1/items/{quote(item_id, safe='')}/similar", params={"n": str(n)}
        )
        return result

    async def item_rewards(self, item_id: str, *, as_of: datetime | None = None) -> ItemRewards:
        params = {"as_of": as_of.isoformat()} if as_of is not None else None
        result: ItemRewards = await self.request(
            "GET", f"/v1/items/{quote(item_id, safe='')}/rewards", params=params
        )
        return result

    async def status(self) -> Status:
        """Projections, event count and index (admin scope)."""
        result: Status = await self.request("GET", "/v1/admin/status")
        return result

    async def rebuild_index(self) -> IndexStatus:
        """Start an index build now (admin scope); answered at once, 202."""
        result: IndexStatus = await self.request("POST", "/v1/admin/index/rebuild")
        return result

    async def dashboard(self) -> Dashboard:
        """What the admin page shows besides its charts (admin scope)."""
        result: Dashboard = await self.request("GET", "/v1/admin/dashboard")
        return result

    async def dashboard_series(self, *, days: int = 14) -> Series:
        """Reward per slate and the outcome mix by UTC day served, today included (admin)."""
        result: Series = await self.request(
            "GET", "/v1/admin/dashboard/series", params={"days": str(days)}
        )
        return result

    async def rebuild_projection(self, projection: str) -> Rebuild:
        """Start rebuilding a projection from the log (admin scope); answered at once, 202."""
        result: Rebuild = await self.request(
            "POST", "/v1/admin/projections/rebuild", json={"projection": projection}
        )
        return result

    async def health(self) -> bool:
        """Liveness: the process answers."""
        try:
            await self._attempt("GET", "/healthz", None, None, None)
        except (SegueError, aiohttp.ClientError):
            return False
        return True

    async def readiness(self) -> Ready:
        """The readiness checks as the server gives them (503 included: not retried)."""
        try:
            result: Ready = await self._attempt("GET", "/readyz", None, None, None)
        except SegueError as exc:
            return {"status": "not ready", "checks": exc.problem.get("checks", {})}
        return result

    async def metrics(self) -> str:
        """The Prometheus text of the process answering."""
        text: str = await self.request("GET", "/metrics")
        return text

    async def openapi(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/openapi.json")
        return result


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, SegueError):
        return exc.status in RETRIED_STATUSES
    return isinstance(exc, aiohttp.ClientConnectionError | asyncio.TimeoutError)
