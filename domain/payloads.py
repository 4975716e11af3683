"""The stored JSON shape of every event type at every schema version ever written.

`domain.events` holds the events as the code uses them; the log holds their payloads, which
differ (a slate's policy is nested, ids are strings, old versions lack fields). These classes
describe the payloads themselves, one per (type, version), so that their JSON Schemas can be
generated for analysts (`segue schemas write docs/events`). Nothing here is instantiated: a field
typed `UUID` or `datetime` is a JSON string in that format.

When an event changes: add a class for the new version (keep the old ones: stored events never
change), register it in `PAYLOADS`, write the upcaster in `domain.upcasting`, and regenerate the
published schemas. A test fails until all three agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.events import (
    ItemRetired,
    ItemUpserted,
    ListenerForgotten,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationDeferred,
    RecommendationServed,
)


@dataclass(frozen=True)
class ItemUpsertedV1:
    """An item was added to the catalogue or changed. Stream `item-{item_id}`."""

    item_id: str
    """The client's id of the item."""
    kind: str
    """`track`, `episode`, `show`, `album`, `artist`, `playlist` or `audiobook`."""
    attributes: dict[str, Any]
    """Free-form metadata; `show` names an episode's show (long-term rewards count any episode
    of the same show as coming back)."""
    vector: list[float] | None
    """An optional content vector, blended into the item's embedding."""


@dataclass(frozen=True)
class ItemRetiredV1:
    """An item was retired: it is no longer recommended, and keeps its history."""

    item_id: str
    """The client's id of the item."""


@dataclass(frozen=True)
class SlateEntryV1:
    """One position of a served slate."""

    item_id: str
    """The item served at this position."""
    position: int
    """0-based position in the slate."""
    score: float
    """The policy's score for the item (higher ranks first)."""
    propensity: float
    """P(this item at this position | the request) under the logging policy: what
    inverse-propensity estimators divide by."""


@dataclass(frozen=True)
class PolicyV1:
    """The policy that drew the slate."""

    name: str
    """The policy's name."""
    version: str
    """The policy's version: changes whenever its behaviour does."""


@dataclass(frozen=True)
class RequestV1:
    """The request as the policy saw it, so that another policy can be re-run on it."""

    n: int
    """How many items were asked for."""
    candidates: list[str] | None
    """The caller's candidates (rerank mode), or null when the index supplied them."""
    exclude: list[str]
    """Items the caller asked to leave out."""
    kinds: list[str]
    """Item kinds the caller restricted the slate to (empty: any)."""


@dataclass(frozen=True)
class RecommendationServedV1:
    """A slate as served (first version: flat policy fields, no request). Stream
    `recommendation-{recommendation_id}`."""

    recommendation_id: UUID
    """The id returned to the client; outcomes name it."""
    user: str
    """The listener's pseudonym (never the client's user id)."""
    surface: str
    """Where the slate was shown: `home`, `search`, `shelf`, `podcasts`, `music`."""
    context: dict[str, Any]
    """The client's free-form request context."""
    slate: list[SlateEntryV1]
    """The items served, in position order."""
    policy_name: str
    """The policy's name."""
    policy_version: str
    """The policy's version."""
    index_version: str
    """The nearest-neighbour index that supplied candidates (`none` before the first build)."""
    requested_at: datetime
    """When the gateway received the request: the start of every attribution window."""


@dataclass(frozen=True)
class RecommendationServedV2:
    """A slate as served, with the request that produced it. Stream
    `recommendation-{recommendation_id}`."""

    recommendation_id: UUID
    """The id returned to the client; outcomes name it."""
    user: str
    """The listener's pseudonym (never the client's user id)."""
    surface: str
    """Where the slate was shown: `home`, `search`, `shelf`, `podcasts`, `music`."""
    context: dict[str, Any]
    """The client's free-form request context."""
    slate: list[SlateEntryV1]
    """The items served, in position order."""
    policy: PolicyV1
    """The policy that drew the slate."""
    index_version: str
    """The nearest-neighbour index that supplied candidates (`none` before the first build)."""
    requested_at: datetime
    """When the gateway received the request: the start of every attribution window."""
    request: RequestV1
    """The request as the policy saw it."""


@dataclass(frozen=True)
class RecommendationServedV3:
    """A slate as served, with the request that produced it and, for a blend, every listener
    it was served to. Stream `recommendation-{recommendation_id}`."""

    recommendation_id: UUID
    """The id returned to the client; outcomes name it."""
    user: str
    """The listener's pseudonym (never the client's user id); a blend's first listener."""
    surface: str
    """Where the slate was shown: `home`, `search`, `shelf`, `podcasts`, `music`."""
    context: dict[str, Any]
    """The client's free-form request context."""
    slate: list[SlateEntryV1]
    """The items served, in position order."""
    policy: PolicyV1
    """The policy that drew the slate."""
    index_version: str
    """The nearest-neighbour index that supplied candidates (`none` before the first build)."""
    requested_at: datetime
    """When the gateway received the request: the start of every attribution window."""
    request: RequestV1
    """The request as the policy saw it."""
    members: list[str]
    """A blend's listeners (pseudonyms), `user` first; empty for a single listener."""


@dataclass(frozen=True)
class RecommendationDeferredV1:
    """A slate drawn but not yet shown (a Personalizer rank with `deferActivation`): the payload a
    `RecommendationServed` v3 would have. Nothing learns from it or evaluates it; activating it
    appends that `RecommendationServed` (stamped with the activation's time). Stream
    `deferred-{recommendation_id}`."""

    recommendation_id: UUID
    """The id the slate will be served under once activated."""
    user: str
    """The listener's pseudonym (never the client's user id)."""
    surface: str
    """Where the slate is to be shown (`personalizer`)."""
    context: dict[str, Any]
    """The client's request context."""
    slate: list[SlateEntryV1]
    """The items drawn, in position order."""
    policy: PolicyV1
    """The policy that drew the slate."""
    index_version: str
    """The nearest-neighbour index loaded when it was drawn (`none` before the first build)."""
    requested_at: datetime
    """When the gateway received the rank request."""
    request: RequestV1
    """The request as the policy saw it."""
    members: list[str]
    """Always empty: Personalizer ranks are for one listener."""


@dataclass(frozen=True)
class OutcomeRecordedV1:
    """Something a listener did with an item, as the client reported it. Stream
    `listener-{user}`."""

    event_id: UUID
    """The client's idempotency key: an outcome sent twice is stored once."""
    user: str
    """The listener's pseudonym (never the client's user id)."""
    item_id: str
    """The item acted on."""
    kind: OutcomeKind
    """What the listener did."""
    occurred_at: datetime
    """When it happened, by the client's clock: attribution windows are measured with it."""
    recommendation_id: UUID | None
    """The slate the client says led to it, or null for an organic interaction."""
    value: float | None
    """A measure that goes with the kind (e.g. milliseconds played before a skip; a `reward`'s
    score, -1..1 from the Personalizer-compatible routes), or null."""


@dataclass(frozen=True)
class ListenerForgottenV1:
    """A listener was forgotten (erasure): the mapping from their user id to this pseudonym was
    deleted, and the projections dropped their rows. Events before it still carry the pseudonym,
    which no longer leads to anyone. Stream `listener-{user}`."""

    user: str
    """The forgotten listener's pseudonym (never the client's user id)."""


# Every (event type, schema version) ever written, and the class describing its payload.
PAYLOADS: dict[tuple[str, int], type] = {
    (ItemUpserted.TYPE, 1): ItemUpsertedV1,
    (ItemRetired.TYPE, 1): ItemRetiredV1,
    (RecommendationServed.TYPE, 1): RecommendationServedV1,
    (RecommendationServed.TYPE, 2): RecommendationServedV2,
    (RecommendationServed.TYPE, 3): RecommendationServedV3,
    (RecommendationDeferred.TYPE, 1): RecommendationDeferredV1,
    (OutcomeRecorded.TYPE, 1): OutcomeRecordedV1,
    (ListenerForgotten.TYPE, 1): ListenerForgottenV1,
}
