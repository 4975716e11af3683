"""Domain events: what happened, as immutable values.

Every event type has a `schema_version`. Payloads are stored as JSON; `to_payload` writes the
current version and `domain.upcasting.decode` reads any version ever written. Listener identifiers
in events are always pseudonyms (see `gateway.serving.listeners`), never what the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

JSON = dict[str, Any]


class OutcomeKind(StrEnum):
    """What a listener did with an item. Unknown kinds are rejected at the edge, never dropped."""

    IMPRESSION = "impression"
    CLICK = "click"
    STREAM_START = "stream_start"
    STREAM_30S = "stream_30s"
    COMPLETE = "complete"
    SKIP = "skip"
    SAVE = "save"
    LIKE = "like"
    DISLIKE = "dislike"
    FOLLOW = "follow"
    SHARE = "share"
    ACTIVE_DAY = "active_day"
    # A score the client computed itself (the Personalizer-compatible routes' rewards, -1..1):
    # worth its value times the definition's weight, where every other kind is worth the weight.
    REWARD = "reward"


@dataclass(frozen=True, slots=True)
class SlateEntry:
    """One position of a served slate.

    `propensity` is the marginal probability that the logging policy put this item at this
    position, given the request: what inverse-propensity estimators divide by.
    """

    item_id: str
    position: int
    score: float
    propensity: float


@dataclass(frozen=True, slots=True)
class ItemUpserted:
    TYPE: ClassVar[str] = "ItemUpserted"
    SCHEMA_VERSION: ClassVar[int] = 1

    item_id: str
    kind: str
    attributes: JSON = field(default_factory=dict)
    vector: tuple[float, ...] | None = None

    def stream_id(self) -> str:
        return f"item-{self.item_id}"


@dataclass(frozen=True, slots=True)
class ItemRetired:
    TYPE: ClassVar[str] = "ItemRetired"
    SCHEMA_VERSION: ClassVar[int] = 1

    item_id: str

    def stream_id(self) -> str:
        return f"item-{self.item_id}"


@dataclass(frozen=True, slots=True)
class RecommendationServed:
    """A slate as served: enough to replay the request and to evaluate any other policy offline."""

    TYPE: ClassVar[str] = "RecommendationServed"
    SCHEMA_VERSION: ClassVar[int] = 4

    recommendation_id: UUID
    user: str
    surface: str
    context: JSON
    slate: tuple[SlateEntry, ...]
    policy_name: str
    policy_version: str
    index_version: str
    requested_at: datetime
    # The request as the policy saw it, so a candidate policy can be re-run on it.
    candidates: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    n: int = 10
    # A blend's listeners (pseudonyms), `user` being the first; empty for one listener.
    members: tuple[str, ...] = ()
    # The experiment and arm whose policy drew the slate; None outside any experiment.
    experiment: str | None = None
    arm: str | None = None

    def stream_id(self) -> str:
        return f"recommendation-{self.recommendation_id}"


@dataclass(frozen=True, slots=True)
class RecommendationDeferred:
    """A slate drawn but not yet shown (a Personalizer rank with `deferActivation`). It is the
    first event of the recommendation's stream and carries the slate as `RecommendationServed`
    would; nothing learns from it or evaluates it. Activation appends that `RecommendationServed`
    to the same stream; a slate never activated stays out of learning and evaluation."""

    TYPE: ClassVar[str] = "RecommendationDeferred"
    SCHEMA_VERSION: ClassVar[int] = 1

    served: RecommendationServed

    def stream_id(self) -> str:
        # Not the recommendation's stream: that one starts with the `RecommendationServed`
        # activation appends, as every reader of slates expects.
        return f"deferred-{self.served.recommendation_id}"


@dataclass(frozen=True, slots=True)
class OutcomeRecorded:
    TYPE: ClassVar[str] = "OutcomeRecorded"
    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: UUID
    user: str
    item_id: str
    kind: OutcomeKind
    occurred_at: datetime
    recommendation_id: UUID | None = None
    value: float | None = None

    def stream_id(self) -> str:
        return f"listener-{self.user}"


@dataclass(frozen=True, slots=True)
class ListenerForgotten:
    """A listener asked to be forgotten. It carries the pseudonym only: the client's id is never
    in the log, and the mapping between the two is deleted when this is recorded. Projections
    drop the listener's own rows when they fold it; item aggregates keep what they counted."""

    TYPE: ClassVar[str] = "ListenerForgotten"
    SCHEMA_VERSION: ClassVar[int] = 1

    user: str

    def stream_id(self) -> str:
        return f"listener-{self.user}"


# Every experiment's lifecycle is on one stream: starting one checks the names already used
# against that stream's version, and serving reads every running experiment with one read.
EXPERIMENTS_STREAM = "experiments"


@dataclass(frozen=True, slots=True)
class ExperimentStarted:
    """An online experiment began. `definition` is `domain.experiments.Experiment.to_json()`:
    kept as data here so that events do not depend on the analysis code."""

    TYPE: ClassVar[str] = "ExperimentStarted"
    SCHEMA_VERSION: ClassVar[int] = 1

    name: str
    definition: JSON
    started_at: datetime

    def stream_id(self) -> str:
        return EXPERIMENTS_STREAM


@dataclass(frozen=True, slots=True)
class ExperimentStopped:
    """Traffic goes back to the default policy; the log keeps what the arms did."""

    TYPE: ClassVar[str] = "ExperimentStopped"
    SCHEMA_VERSION: ClassVar[int] = 1

    name: str
    reason: str
    stopped_at: datetime

    def stream_id(self) -> str:
        return EXPERIMENTS_STREAM


@dataclass(frozen=True, slots=True)
class ExperimentShipped:
    """The experiment ended with `arm` as the winner (an experiment is stopped by shipping)."""

    TYPE: ClassVar[str] = "ExperimentShipped"
    SCHEMA_VERSION: ClassVar[int] = 1

    name: str
    arm: str
    shipped_at: datetime

    def stream_id(self) -> str:
        return EXPERIMENTS_STREAM


@dataclass(frozen=True, slots=True)
class ExperimentAssigned:
    """A listener's first slate in an experiment: which arm the salted hash put them in. On the
    listener's stream, so that their `ListenerForgotten` follows it and the projections drop the
    assignment with the rest of the listener's rows."""

    TYPE: ClassVar[str] = "ExperimentAssigned"
    SCHEMA_VERSION: ClassVar[int] = 1

    experiment: str
    user: str
    arm: str
    assigned_at: datetime

    def stream_id(self) -> str:
        return f"listener-{self.user}"


DomainEvent = (
    ItemUpserted
    | ItemRetired
    | RecommendationServed
    | RecommendationDeferred
    | OutcomeRecorded
    | ListenerForgotten
    | ExperimentStarted
    | ExperimentStopped
    | ExperimentShipped
    | ExperimentAssigned
)

EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.TYPE: cls
    for cls in (
        ItemUpserted,
        ItemRetired,
        RecommendationServed,
        RecommendationDeferred,
        OutcomeRecorded,
        ListenerForgotten,
        ExperimentStarted,
        ExperimentStopped,
        ExperimentShipped,
        ExperimentAssigned,
    )
}


def to_payload(event: DomainEvent) -> JSON:
    """The JSON payload of `event` at its type's current schema version."""
    match event:
        case ItemUpserted():
            return {
                "item_id": event.item_id,
                "kind": event.kind,
                "attributes": event.attributes,
                "vector": list(event.vector) if event.vector is not None else None,
            }
        case ItemRetired():
            return {"item_id": event.item_id}
        case RecommendationServed():
            return {
                "recommendation_id": str(event.recommendation_id),
                "user": event.user,
                "surface": event.surface,
                "context": event.context,
                "slate": [
                    {
                        "item_id": s.item_id,
                        "position": s.position,
                        "score": s.score,
                        "propensity": s.propensity,
                    }
                    for s in event.slate
                ],
                "policy": {"name": event.policy_name, "version": event.policy_version},
                "index_version": event.index_version,
                "requested_at": event.requested_at.isoformat(),
                "request": {
                    "n": event.n,
                    "candidates": list(event.candidates) if event.candidates is not None else None,
                    "exclude": list(event.exclude),
                    "kinds": list(event.kinds),
                },
                "members": list(event.members),
                "experiment": (
                    {"name": event.experiment, "arm": event.arm}
                    if event.experiment is not None
                    else None
                ),
            }
        case RecommendationDeferred():
            return to_payload(event.served)
        case OutcomeRecorded():
            return {
                "event_id": str(event.event_id),
                "user": event.user,
                "item_id": event.item_id,
                "kind": event.kind.value,
                "occurred_at": event.occurred_at.isoformat(),
                "recommendation_id": (
                    str(event.recommendation_id) if event.recommendation_id is not None else None
                ),
                "value": event.value,
            }
        case ListenerForgotten():
            return {"user": event.user}
        case ExperimentStarted():
            return {
                "name": event.name,
                "definition": event.definition,
                "started_at": event.started_at.isoformat(),
            }
        case ExperimentStopped():
            return {
                "name": event.name,
                "reason": event.reason,
                "stopped_at": event.stopped_at.isoformat(),
            }
        case ExperimentShipped():
            return {
                "name": event.name,
                "arm": event.arm,
                "shipped_at": event.shipped_at.isoformat(),
            }
        case ExperimentAssigned():
            return {
                "experiment": event.experiment,
                "user": event.user,
                "arm": event.arm,
                "assigned_at": event.assigned_at.isoformat(),
            }


def _slate(raw: list[JSON]) -> tuple[SlateEntry, ...]:
    return tuple(
        SlateEntry(
            item_id=str(s["item_id"]),
            position=int(s["position"]),
            score=float(s["score"]),
            propensity=float(s["propensity"]),
        )
        for s in raw
    )


def from_current_payload(event_type: str, payload: JSON) -> DomainEvent:
    """Build an event from a payload already at its type's current schema version."""
    if event_type == ItemUpserted.TYPE:
        vector = payload.get("vector")
        return ItemUpserted(
            item_id=payload["item_id"],
            kind=payload["kind"],
            attributes=dict(payload.get("attributes") or {}),
            vector=tuple(float(v) for v in vector) if vector is not None else None,
        )
    if event_type == ItemRetired.TYPE:
        return ItemRetired(item_id=payload["item_id"])
    if event_type == RecommendationDeferred.TYPE:
        served = from_current_payload(RecommendationServed.TYPE, payload)
        assert isinstance(served, RecommendationServed)
        return RecommendationDeferred(served)
    if event_type == RecommendationServed.TYPE:
        request = payload["request"]
        candidates = request.get("candidates")
        experiment = payload.get("experiment")
        return RecommendationServed(
            recommendation_id=UUID(payload["recommendation_id"]),
            user=payload["user"],
            surface=payload["surface"],
            context=dict(payload.get("context") or {}),
            slate=_slate(payload["slate"]),
            policy_name=payload["policy"]["name"],
            policy_version=payload["policy"]["version"],
            index_version=payload["index_version"],
            requested_at=datetime.fromisoformat(payload["requested_at"]),
            candidates=tuple(candidates) if candidates is not None else None,
            exclude=tuple(request.get("exclude") or ()),
            kinds=tuple(request.get("kinds") or ()),
            n=int(request["n"]),
            members=tuple(payload.get("members") or ()),
            experiment=experiment["name"] if experiment else None,
            arm=experiment["arm"] if experiment else None,
        )
    if event_type == OutcomeRecorded.TYPE:
        rec = payload.get("recommendation_id")
        value = payload.get("value")
        return OutcomeRecorded(
            event_id=UUID(payload["event_id"]),
            user=payload["user"],
            item_id=payload["item_id"],
            kind=OutcomeKind(payload["kind"]),
            occurred_at=datetime.fromisoformat(payload["occurred_at"]),
            recommendation_id=UUID(rec) if rec is not None else None,
            value=float(value) if value is not None else None,
        )
    if event_type == ListenerForgotten.TYPE:
        return ListenerForgotten(user=payload["user"])
    if event_type == ExperimentStarted.TYPE:
        return ExperimentStarted(
            name=payload["name"],
            definition=dict(payload["definition"]),
            started_at=datetime.fromisoformat(payload["started_at"]),
        )
    if event_type == ExperimentStopped.TYPE:
        return ExperimentStopped(
            name=payload["name"],
            reason=payload["reason"],
            stopped_at=datetime.fromisoformat(payload["stopped_at"]),
        )
    if event_type == ExperimentShipped.TYPE:
        return ExperimentShipped(
            name=payload["name"],
            arm=payload["arm"],
            shipped_at=datetime.fromisoformat(payload["shipped_at"]),
        )
    if event_type == ExperimentAssigned.TYPE:
        return ExperimentAssigned(
            experiment=payload["experiment"],
            user=payload["user"],
            arm=payload["arm"],
            assigned_at=datetime.fromisoformat(payload["assigned_at"]),
        )
    raise UnknownEventType(event_type)


class UnknownEventType(ValueError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type
