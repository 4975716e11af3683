"""Recording outcomes: check what they refer to, pseudonymise, append the batch atomically."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import orjson

from domain.events import OutcomeRecorded, RecommendationServed, to_payload
from gateway.metrics import OUTCOMES
from gateway.serving.errors import (
    EventIdReused,
    InvalidValue,
    ItemNotInSlate,
    UnknownRecommendation,
)
from gateway.serving.listeners import Pseudonyms
from gateway.serving.requests import OutcomesIn
from gateway.store import reads
from gateway.store.api import AppendResult, EventStore, NewEvent

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_SKEW = timedelta(days=1)  # client clocks run ahead; further than this is a bug, not skew


class SlateLookup:
    """recommendation id -> the item ids of its slate. Served slates never change, so they are
    cached; an unknown id is looked up again every time (it may be served by another process)."""

    def __init__(self, pool: asyncpg.Pool, cache_size: int = 50_000) -> None:
        self._pool = pool
        self._cache: OrderedDict[UUID, frozenset[str]] = OrderedDict()
        self._cache_size = cache_size

    async def slates(self, ids: set[UUID]) -> dict[UUID, frozenset[str]]:
        out = {i: self._cache[i] for i in ids if i in self._cache}
        missing = [i for i in ids if i not in out]
        if missing:
            streams = {f"recommendation-{i}": i for i in missing}
            rows = await reads.first_events(
                self._pool, list(streams), RecommendationServed.TYPE, "slate"
            )
            for stream_id, slate in rows:
                rid = streams[stream_id]
                items = frozenset(s["item_id"] for s in orjson.loads(slate))
                out[rid] = items
                self._cache[rid] = items
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out


class OutcomeRecorder:
    def __init__(
        self,
        store: EventStore,
        slates: SlateLookup,
        pseudonyms: Pseudonyms,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._slates = slates
        self._pseudonyms = pseudonyms
        self._clock = clock

    async def record(self, batch: OutcomesIn) -> AppendResult:
        """All or nothing: one bad outcome rejects the batch, naming it, before any write."""
        outcomes = batch.outcomes
        rec_ids = {o.recommendation_id for o in outcomes if o.recommendation_id is not None}
        slates = await self._slates.slates(rec_ids) if rec_ids else {}
        for i, o in enumerate(outcomes):
            if o.recommendation_id is None:
                continue
            slate = slates.get(o.recommendation_id)
            if slate is None:
                raise UnknownRecommendation(
                    f"no recommendation {o.recommendation_id} was served",
                    field=f"outcomes[{i}].recommendation_id",
                )
            if o.item_id not in slate:
                raise ItemNotInSlate(
                    f"item {o.item_id!r} was not in recommendation {o.recommendation_id}",
                    field=f"outcomes[{i}].item_id",
                )
        now = self._clock()
        for i, o in enumerate(outcomes):
            if o.occurred_at is not None and not EARLIEST <= o.occurred_at <= now + MAX_SKEW:
                raise InvalidValue(
                    f"occurred_at must be between {EARLIEST.date()} and a day from now",
                    field=f"outcomes[{i}].occurred_at",
                )
        users = await self._pseudonyms.resolve(o.user_id for o in outcomes)
        events = []
        for o in outcomes:
            event = OutcomeRecorded(
                event_id=o.event_id,
                user=users[o.user_id],
                item_id=o.item_id,
                kind=o.kind,
                occurred_at=o.occurred_at or now,
                recommendation_id=o.recommendation_id,
                value=o.value,
            )
            events.append(
                NewEvent(
                    o.event_id,
                    event.stream_id(),
                    event.TYPE,
                    event.SCHEMA_VERSION,
                    to_payload(event),
                )
            )
        result = await self._store.append(events)
        await self._check_duplicates(events, result)
        for o, r in zip(outcomes, result.recorded, strict=True):
            if not r.duplicate:
                OUTCOMES.labels(o.kind.value).inc()
        return result

    # What makes an outcome the same outcome: a retry carries all of it unchanged. (`occurred_at`
    # is left out: a client that omits it gets the server's clock, which differs on a retry.)
    SAME = ("user", "item_id", "kind", "value", "recommendation_id")

    async def _check_duplicates(self, events: list[NewEvent], result: AppendResult) -> None:
        """An event id stored before is a harmless duplicate only if it is the same outcome;
        an id reused for another one is refused, naming it (the new outcomes of the request
        are stored; resending the request with the id fixed is safe)."""
        again = [i for i, r in enumerate(result.recorded) if r.duplicate]
        if not again:
            return
        stored = await self._store.read_events([events[i].event_id for i in again])
        for i in again:
            original = stored.get(events[i].event_id)
            new = events[i].payload
            if original is None or any(original.payload.get(k) != new.get(k) for k in self.SAME):
                raise EventIdReused(
                    f"event_id {events[i].event_id} was stored before for another outcome "
                    "(a retry must resend the same user, item, kind, value and "
                    "recommendation); use a new id for a new outcome",
                    field=f"outcomes[{i}].event_id",
                )
