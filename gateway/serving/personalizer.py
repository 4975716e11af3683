"""Azure AI Personalizer's Rank and Reward API on Segue's own events (docs/personalizer.md).

- An action is a catalogue item of kind `action`, upserted when first seen or when its features
  change, with its features as attributes and, hashed, as its content vector.
- A rank is a slate on the `personalizer` surface ranking only the request's actions (the
  caller's candidates), its excluded actions left out; the event id names the recommendation id
  (`recommendation_id`), so a retried rank is answered with the slate already logged.
- A rank with `deferActivation` is logged as `RecommendationDeferred`; activating it appends the
  `RecommendationServed`. Until then nothing learns from it or evaluates it, and its rewards are
  ignored, as Personalizer ignores them.
- A reward is an outcome of kind `reward` on the action the slot was given, its value the score.
  Its event id is derived from (recommendation, slot): the first reward counts ("earliest", as
  Personalizer aggregates by default), and the default reward, appended once the reward wait time
  is over, is the same event: whichever comes first is the one kept.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from domain.events import (
    ItemUpserted,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationDeferred,
    RecommendationServed,
    to_payload,
)
from domain.features import hashed_vector
from domain.upcasting import decode
from gateway.serving.catalog import Catalog
from gateway.serving.errors import IdempotencyKeyReused, Refused
from gateway.serving.items import KIND_CODES
from gateway.serving.recommendations import Recommender, logged_slate
from gateway.serving.requests import ItemId, ItemKind, JsonObject, RecommendationIn, Surface
from gateway.store import reads
from gateway.store.api import NO_STREAM, EventStore, NewEvent, WrongExpectedVersion
from gateway.store.background import run_every

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("6d0f4a8e-2c1b-4f7a-9e35-b8c2d1f0a6e7")
# The listener a rank is served to when the caller names none: Personalizer has no user ids.
SHARED_LISTENER = "personalizer"
MAX_ACTIONS = 50  # Personalizer's own limit
MAX_SLOTS = 50
EventId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^/\x00]+$")]


class Unknown(Refused):
    """No rank was logged under this event id."""

    code = "not-found"
    title = "Not found"
    status = 404


class ActionIdTaken(Refused):
    """An action id that is the id of a catalogue item of another kind."""

    code = "action-id-taken"
    title = "Action id taken"
    status = 409


class EventIdTaken(Refused):
    """An event id a different rank was logged under."""

    code = "event-id-taken"
    title = "Event id taken"
    status = 409


class _Camel(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Action(_Camel):
    id: ItemId
    features: Annotated[list[JsonObject], Field(max_length=100)] = Field(default_factory=list)


class RankIn(_Camel):
    context_features: Annotated[list[JsonObject], Field(max_length=100)] | None = None
    actions: Annotated[list[Action], Field(min_length=1, max_length=MAX_ACTIONS)]
    excluded_actions: Annotated[list[ItemId], Field(max_length=MAX_ACTIONS)] | None = None
    event_id: EventId | None = None
    defer_activation: bool | None = None


class Slot(_Camel):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    baseline_action: ItemId
    excluded_actions: Annotated[list[ItemId], Field(max_length=MAX_ACTIONS)] | None = None
    features: Annotated[list[JsonObject], Field(max_length=100)] | None = None


class MultiSlotRankIn(_Camel):
    context_features: Annotated[list[JsonObject], Field(max_length=100)] | None = None
    actions: Annotated[list[Action], Field(min_length=1, max_length=MAX_ACTIONS)]
    slots: Annotated[list[Slot], Field(min_length=1, max_length=MAX_SLOTS)]
    event_id: EventId | None = None
    defer_activation: bool | None = None


RewardValue = Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)]


class RewardIn(_Camel):
    value: RewardValue


class SlotReward(_Camel):
    slot_id: Annotated[str, Field(min_length=1, max_length=256)]
    value: RewardValue


class MultiSlotRewardIn(_Camel):
    reward: Annotated[list[SlotReward], Field(min_length=1, max_length=MAX_SLOTS)]


@dataclass(frozen=True, slots=True)
class Ranked:
    event_id: str
    # (action id, probability) in rank order; excluded actions last, with probability 0.
    ranking: list[tuple[str, float]]
    reward_action_id: str | None


@dataclass(frozen=True, slots=True)
class SlotsRanked:
    event_id: str
    slots: list[tuple[str, str | None]]  # (slot id, reward action id)


@dataclass(frozen=True, slots=True)
class PersonalizerConfig:
    reward_wait: timedelta
    default_reward: float


def recommendation_id(event_id: str) -> uuid.UUID:
    """The recommendation a Personalizer event id names. Not scoped to the API key: a
    Personalizer resource has two keys that clients rotate between, and a reward sent with the
    other key must find its rank."""
    return uuid.uuid5(NAMESPACE, event_id)


def reward_event_id(rid: uuid.UUID, slot: str) -> uuid.UUID:
    """The one outcome a slot's reward is: the first sent, or the default."""
    return uuid.uuid5(NAMESPACE, f"{rid}/reward/{slot}")


# A single-slot rank's one slot, in reward event ids.
SINGLE = ""


def slot_actions(served: RecommendationServed) -> dict[str, str | None]:
    """slot id -> the action it was given: for a single-slot rank, its top action; for a
    multi-slot one, in slot order, the best-ranked action not taken by an earlier slot nor
    excluded from this one (none when every action is)."""
    ranked = [s.item_id for s in served.slate]
    slots = served.context.get("slots")
    if not isinstance(slots, list):
        return {SINGLE: ranked[0] if ranked else None}
    taken: set[str] = set()
    out: dict[str, str | None] = {}
    for slot in slots:
        excluded = set(slot.get("excludedActions") or ())
        chosen = next((a for a in ranked if a not in taken and a not in excluded), None)
        if chosen is not None:
            taken.add(chosen)
        out[str(slot["id"])] = chosen
    return out


class Personalizer:
    def __init__(
        self,
        store: EventStore,
        catalog: Catalog,
        recommender: Recommender,
        clock: Callable[[], datetime],
        config: PersonalizerConfig,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._recommender = recommender
        self._clock = clock
        self.config = config
        # action id -> the features last upserted by this process: a rank whose actions are
        # unchanged writes nothing to the catalogue.
        self._known: OrderedDict[str, bytes] = OrderedDict()

    async def rank(self, req: RankIn, listener: str) -> Ranked:
        ids = [a.id for a in req.actions]
        excluded = list(dict.fromkeys(req.excluded_actions or ()))
        eligible = [a for a in ids if a not in set(excluded)]
        if not eligible:
            raise Refused("every action is excluded", field="excludedActions")
        # After every check of the request: a refused rank changes nothing.
        await self._upsert(req.actions)
        context: dict[str, Any] = {"contextFeatures": req.context_features or []}
        event_id, served = await self._draw(
            req.event_id, listener, ids, excluded, len(eligible), context, req.defer_activation
        )
        ranking = [(s.item_id, s.propensity) for s in served.slate]
        ranking += [(a, 0.0) for a in excluded if a in set(ids)]
        top = served.slate[0].item_id if served.slate else None
        return Ranked(event_id, ranking, top)

    async def rank_slots(self, req: MultiSlotRankIn, listener: str) -> SlotsRanked:
        ids = [a.id for a in req.actions]
        for i, slot in enumerate(req.slots):
            if slot.baseline_action not in ids:
                raise Refused(
                    "a slot's baseline action must be one of the actions",
                    field=f"slots[{i}].baselineAction",
                )
        if len({s.id for s in req.slots}) != len(req.slots):
            raise Refused("slot ids must be distinct", field="slots")
        await self._upsert(req.actions)
        # Every slot is kept verbatim in the context: a reward finds its slot's action from them
        # and the logged ranking (`slot_actions`), as does the default reward.
        context: dict[str, Any] = {
            "contextFeatures": req.context_features or [],
            "slots": [s.model_dump(by_alias=True, exclude_none=True) for s in req.slots],
        }
        event_id, served = await self._draw(
            req.event_id, listener, ids, [], len(ids), context, req.defer_activation
        )
        return SlotsRanked(event_id, list(slot_actions(served).items()))

    async def _draw(
        self,
        event_id: str | None,
        listener: str,
        actions: list[str],
        excluded: list[str],
        n: int,
        context: dict[str, Any],
        defer: bool | None,
    ) -> tuple[str, RecommendationServed]:
        event_id = event_id or uuid.uuid4().hex
        request = RecommendationIn(
            user_id=listener,
            surface=Surface.PERSONALIZER,
            n=min(n, 100),
            context=context,
            candidates=list(dict.fromkeys(actions)),
            exclude=excluded,
            kinds=[ItemKind.ACTION],
        )
        try:
            served = await self._recommender.recommend(
                request, recommendation_id=recommendation_id(event_id), defer=bool(defer)
            )
        except IdempotencyKeyReused:
            # The same event id and body is a retry, answered with the logged slate; another
            # body under it would make its reward ambiguous.
            raise EventIdTaken(
                f"event id {event_id!r} was used before by a different rank; a rank sent again "
                "must be sent unchanged",
                field="eventId",
            ) from None
        return event_id, served

    async def _upsert(self, actions: Sequence[Action]) -> None:
        seen: set[str] = set()
        for i, a in enumerate(actions):
            if a.id in seen:
                raise Refused(f"action {a.id!r} is listed twice", field=f"actions[{i}].id")
            seen.add(a.id)
        table = await self._catalog.table()
        rows = table.rows_of([a.id for a in actions])
        for i, (a, row) in enumerate(zip(actions, rows.tolist(), strict=True)):
            if row >= 0 and int(table.kind[row]) != KIND_CODES[ItemKind.ACTION.value]:
                raise ActionIdTaken(
                    f"{a.id!r} is the id of a catalogue item that is not an action",
                    field=f"actions[{i}].id",
                )
        changed = []
        for a in actions:
            features = [dict(f) for f in a.features]
            digest = orjson.dumps(features, option=orjson.OPT_SORT_KEYS)
            if self._known.get(a.id) == digest:
                continue
            changed.append(
                (
                    ItemUpserted(
                        item_id=a.id,
                        kind=ItemKind.ACTION.value,
                        attributes={"features": features},
                        vector=hashed_vector(features),
                    ),
                    digest,
                )
            )
        if changed:
            await self._catalog.upsert(u for u, _ in changed)
            for u, digest in changed:
                self._known[u.item_id] = digest
                self._known.move_to_end(u.item_id)
            while len(self._known) > 100_000:
                self._known.popitem(last=False)

    async def reward(self, event_id: str, rewards: dict[str, float]) -> None:
        """Record `rewards` (slot id -> value; `SINGLE` for a single-slot rank). A reward for a
        rank not activated, or after the reward wait time, is ignored, as Personalizer ignores
        it; a second reward for a slot too (the first is kept)."""
        rid = recommendation_id(event_id)
        served = await logged_slate(self._store, rid)
        if served is None:
            if await logged_slate(self._store, rid, deferred_too=True) is not None:
                return  # drawn but never activated
            raise Unknown(f"no rank was logged under event id {event_id!r}", field="eventId")
        given = slot_actions(served)
        for slot in rewards:
            if slot not in given:
                raise Refused(f"event {event_id!r} has no slot {slot!r}", field="slotId")
        now = self._clock()
        if now > served.requested_at + self.config.reward_wait:
            return
        await self._append_rewards(served, {s: (v, now) for s, v in rewards.items()}, given)

    async def _append_rewards(
        self,
        served: RecommendationServed,
        rewards: dict[str, tuple[float, datetime]],
        given: dict[str, str | None],
    ) -> int:
        events = []
        for slot, (value, at) in rewards.items():
            item = given[slot]
            if item is None:
                continue  # a slot every action was excluded from has nothing to reward
            event = OutcomeRecorded(
                event_id=reward_event_id(served.recommendation_id, slot),
                user=served.user,
                item_id=item,
                kind=OutcomeKind.REWARD,
                occurred_at=at,
                recommendation_id=served.recommendation_id,
                value=value,
            )
            events.append(
                NewEvent(
                    event.event_id,
                    event.stream_id(),
                    event.TYPE,
                    event.SCHEMA_VERSION,
                    to_payload(event),
                )
            )
        if not events:
            return 0
        result = await self._store.append(events)
        return sum(not r.duplicate for r in result.recorded)

    async def activate(self, event_id: str) -> None:
        """Serve a deferred rank: append its `RecommendationServed`, stamped now (the reward
        wait time and the attribution windows start when it is shown). Activating a rank that
        was not deferred, or twice, changes nothing."""
        rid = recommendation_id(event_id)
        if await logged_slate(self._store, rid) is not None:
            return
        events = await self._store.read_stream(f"deferred-{rid}")
        if not events:
            raise Unknown(f"no rank was logged under event id {event_id!r}", field="eventId")
        e = events[0]
        deferred = decode(e.event_type, e.schema_version, e.payload)
        assert isinstance(deferred, RecommendationDeferred)
        d = deferred.served
        served = RecommendationServed(
            recommendation_id=d.recommendation_id,
            user=d.user,
            surface=d.surface,
            context=d.context,
            slate=d.slate,
            policy_name=d.policy_name,
            policy_version=d.policy_version,
            index_version=d.index_version,
            requested_at=self._clock(),
            candidates=d.candidates,
            exclude=d.exclude,
            kinds=d.kinds,
            n=d.n,
            members=d.members,
        )
        with contextlib.suppress(WrongExpectedVersion):  # activated concurrently
            await self._store.append(
                [
                    NewEvent(
                        # Derived, so a retried activation is a duplicate, never a second event.
                        uuid.uuid5(NAMESPACE, f"{rid}/activate"),
                        served.stream_id(),
                        served.TYPE,
                        served.SCHEMA_VERSION,
                        to_payload(served),
                    )
                ],
                expected={served.stream_id(): NO_STREAM},
            )

    async def default_rewards(
        self, conn: asyncpg.Pool, since: datetime, until: datetime, batch: int = 500
    ) -> int:
        """Give the default reward to every slot of the slates served in [since, until) that has
        none yet; returns how many were given. Slots rewarded in time keep theirs: the default is
        the same event, so it is a duplicate."""
        after, given = (since, 0), 0
        while True:
            rows = await reads.served_between(conn, Surface.PERSONALIZER.value, after, until, batch)
            for recorded_at, position, version, payload in rows:
                after = (recorded_at, position)
                served = decode(RecommendationServed.TYPE, version, orjson.loads(payload))
                assert isinstance(served, RecommendationServed)
                slots = slot_actions(served)
                at = served.requested_at + self.config.reward_wait
                value = self.config.default_reward
                given += await self._append_rewards(
                    served, dict.fromkeys(slots, (value, at)), slots
                )
            if len(rows) < batch:
                return given

    async def apply_defaults(self, pool: asyncpg.Pool, every: float, lookback: timedelta) -> None:
        """Apply default rewards as their wait times end, for as long as the process runs. Every
        gateway process does it; they append the same events, which are duplicates after the
        first. A restart looks back `lookback` for slates whose wait ended while it was down."""
        swept = self._clock() - self.config.reward_wait - lookback

        async def once() -> None:
            nonlocal swept
            until = self._clock() - self.config.reward_wait
            # Served rows are stamped with their transaction's start: one still committing
            # when the sweep reads is caught by the next sweep's overlap.
            given = await self.default_rewards(pool, swept - timedelta(seconds=every * 2), until)
            swept = until
            if given:
                log.info("gave the default reward to %d Personalizer slots", given)

        await run_every(every, once, "apply Personalizer default rewards", log)
