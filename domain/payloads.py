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
    ExperimentAssigned,
    ExperimentShipped,
    ExperimentStarted,
    ExperimentStopped,
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
class ExperimentArmV1:
    """The experiment a slate was drawn for, and the listener's arm in it."""

    name: str
    """The experiment's name."""
    arm: str
    """The arm whose policy drew the slate."""


@dataclass(frozen=True)
class RecommendationDeferredV1:
    """A slate drawn but not yet shown (a Personalizer rank with `deferActivation`): the payload a
    `RecommendationServed` v4 would have. Nothing learns from it or evaluates it; activating it
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
    experiment: ExperimentArmV1 | None
    """The experiment arm that drew it, as `RecommendationServed` v4 says; null for none."""


@dataclass(frozen=True)
class RecommendationServedV4:
    """A slate as served, with the request that produced it, every listener of a blend, and the
    experiment arm that drew it. Stream `recommendation-{recommendation_id}`."""

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
    """The policy that drew the slate (an experiment arm's parameters give it its own
    version)."""
    index_version: str
    """The nearest-neighbour index that supplied candidates (`none` before the first build)."""
    requested_at: datetime
    """When the gateway received the request: the start of every attribution window."""
    request: RequestV1
    """The request as the policy saw it."""
    members: list[str]
    """A blend's listeners (pseudonyms), `user` first; empty for a single listener."""
    experiment: ExperimentArmV1 | None
    """The running experiment covering the surface and the listener's arm in it, or null when
    no experiment drew the slate. Propensities are those of the arm's policy."""


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


@dataclass(frozen=True)
class ExperimentStartedV1:
    """An online experiment began. Stream `experiments` (every experiment's lifecycle)."""

    name: str
    """The experiment's name, unique in the log."""
    definition: dict[str, Any]
    """Hypothesis, arms (name, traffic weight, policy version and parameter overrides),
    surfaces, primary metric and guardrails (reward definitions), minimum detectable effect,
    alpha, and the salt of the assignment hash."""
    started_at: datetime
    """When it was started."""


@dataclass(frozen=True)
class ExperimentStoppedV1:
    """An experiment was stopped without shipping an arm; listeners get the default policy
    again. Stream `experiments`."""

    name: str
    """The experiment's name."""
    reason: str
    """Why, as the operator said."""
    stopped_at: datetime
    """When it was stopped."""


@dataclass(frozen=True)
class ExperimentShippedV1:
    """An experiment ended with an arm shipped. Stream `experiments`."""

    name: str
    """The experiment's name."""
    arm: str
    """The arm shipped."""
    shipped_at: datetime
    """When it was shipped."""


@dataclass(frozen=True)
class ExperimentAssignedV1:
    """A listener's first slate in an experiment, and the arm the salted hash put them in.
    Stream `listener-{user}`, so the listener's erasure follows it."""

    experiment: str
    """The experiment's name."""
    user: str
    """The listener's pseudonym (never the client's user id)."""
    arm: str
    """The listener's arm."""
    assigned_at: datetime
    """When the listener was first served in the experiment."""


# Every (event type, schema version) ever written, and the class describing its payload.
PAYLOADS: dict[tuple[str, int], type] = {
    (ItemUpserted.TYPE, 1): ItemUpsertedV1,
    (ItemRetired.TYPE, 1): ItemRetiredV1,
    (RecommendationServed.TYPE, 1): RecommendationServedV1,
    (RecommendationServed.TYPE, 2): RecommendationServedV2,
    (RecommendationServed.TYPE, 3): RecommendationServedV3,
    (RecommendationDeferred.TYPE, 1): RecommendationDeferredV1,
    (RecommendationServed.TYPE, 4): RecommendationServedV4,
    (OutcomeRecorded.TYPE, 1): OutcomeRecordedV1,
    (ListenerForgotten.TYPE, 1): ListenerForgottenV1,
    (ExperimentStarted.TYPE, 1): ExperimentStartedV1,
    (ExperimentStopped.TYPE, 1): ExperimentStoppedV1,
    (ExperimentShipped.TYPE, 1): ExperimentShippedV1,
    (ExperimentAssigned.TYPE, 1): ExperimentAssignedV1,
}
