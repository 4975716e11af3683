"""The requests the services take: validated commands. The HTTP edge parses request bodies
straight into them and publishes them in /openapi.json, so the published contract cannot drift
from what the services enforce (the response bodies are `gateway.http.schemas`).

Models are strict (no "3" for 3, no unknown fields) and parsed straight from JSON bytes.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
)

from domain.events import OutcomeKind

MAX_OUTCOMES = 1000
MAX_ITEMS = 1000
MAX_JSON_DEPTH = 8
MAX_JSON_NODES = 2000


def _clean_text(value: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL; refusing it here keeps "stored verbatim or a 4xx"
    # true instead of a 500 from the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _clean_json(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    nodes = 0

    def walk(v: JsonValue, depth: int) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_JSON_NODES:
            raise ValueError(f"must have at most {MAX_JSON_NODES} values")
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"must be nested at most {MAX_JSON_DEPTH} levels deep")
        if isinstance(v, str):
            _clean_text(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError("numbers must be finite")
        elif isinstance(v, int) and not -(2**63) <= v < 2**64:
            # orjson (and most JSON consumers) stop at 64 bits.
            raise ValueError("integers must fit in 64 bits")
        elif isinstance(v, dict):
            for k, child in v.items():
                _clean_text(k)
                walk(child, depth + 1)
        elif isinstance(v, list):
            for child in v:
                walk(child, depth + 1)

    walk(value, 0)
    return value


# RFC 3339's date-time: pydantic alone also takes "1700000000" (epoch seconds), "2024-01-01T00:00Z"
# (no seconds) and a space for the T, none of which the published `format: date-time` allows.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339(value: object) -> object:
    if not isinstance(value, str):
        return value  # refused by the strict datetime that follows
    if not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 date-time with a time zone, e.g. 2026-03-02T12:00:00Z"
        )
    # Parsed here, because a strict model takes only datetimes once a validator has run;
    # nanoseconds (Go's RFC3339Nano) are cut to the microseconds Python and PostgreSQL keep.
    return datetime.fromisoformat(value.upper())


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
Text = Annotated[str, AfterValidator(_clean_text)]
# Published, not used to validate: the NUL check's own message is clearer than "should match".
NO_NUL = {"pattern": "^[^\\u0000]*$"}
# Length first, then the NUL check, so a too-long id is explained in characters.
UserId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        description="The listener's id in the client's system",
        json_schema_extra=NO_NUL,
    ),
    AfterValidator(_clean_text),
]
ItemId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        description="The catalogue's item id",
        json_schema_extra=NO_NUL,
    ),
    AfterValidator(_clean_text),
]


def _integral(value: object) -> object:
    # JSON Schema's "integer" includes 93.0; a strict int alone would refuse what the spec allows.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


SlateSize = Annotated[int, Field(ge=1, le=100), BeforeValidator(_integral)]
JsonObject = Annotated[dict[str, JsonValue], AfterValidator(_clean_json)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ItemKind(StrEnum):
    TRACK = "track"
    EPISODE = "episode"
    SHOW = "show"
    ALBUM = "album"
    ARTIST = "artist"
    PLAYLIST = "playlist"
    AUDIOBOOK = "audiobook"
    # A Personalizer action (docs/personalizer.md): only ever served when asked for by kind,
    # so a rank's actions never turn up in a listener's home slate.
    ACTION = "action"


class Surface(StrEnum):
    """Where a slate is shown. `search` and `shelf` rerank the caller's candidates;
    `podcasts` and `music` restrict the kinds of item; `personalizer` ranks Personalizer
    actions (the compatible routes under /personalizer/)."""

    HOME = "home"
    SEARCH = "search"
    SHELF = "shelf"
    PODCASTS = "podcasts"
    MUSIC = "music"
    PERSONALIZER = "personalizer"


class Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# --- outcomes -------------------------------------------------------------------------------


class OutcomeIn(Model):
    event_id: UUID = Field(description="Client-chosen idempotency key: resending it is harmless")
    user_id: UserId
    item_id: ItemId
    kind: OutcomeKind
    recommendation_id: UUID | None = Field(
        default=None, description="The recommendation this outcome came from, if any"
    )
    value: Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)] | None = Field(
        default=None, description="A measure of the outcome, e.g. milliseconds played"
    )
    occurred_at: Rfc3339 | None = Field(
        default=None, description="RFC 3339 with a time zone; defaults to the time received"
    )


class OutcomesIn(Model):
    outcomes: list[OutcomeIn] = Field(min_length=1, max_length=MAX_OUTCOMES)


MAX_SESSION = 50
SESSION_SCHEMA: dict[str, JsonValue] = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^\\u0000]*$"},
    "maxItems": MAX_SESSION,
    "description": "Item ids the listener just played, in the order played (the last is the "
    "latest): the slate leans towards items like them, and, where replays are not offered, "
    "leaves them out. Absent: the listener's latest items as Segue recorded them.",
}


def _session_is_item_ids(context: dict[str, JsonValue]) -> dict[str, JsonValue]:
    session = context.get("session")
    if session is None:
        return context
    if (
        not isinstance(session, list)
        or len(session) > MAX_SESSION
        or not all(isinstance(i, str) and 1 <= len(i) <= 256 for i in session)
    ):
        raise ValueError(
            f"session must be a list of at most {MAX_SESSION} item ids (1-256 characters each)"
        )
    return context


def session_of(context: dict[str, JsonValue]) -> list[str] | None:
    """The item ids a (validated) request context says were just played, latest first."""
    session = context.get("session")
    if not isinstance(session, list):
        return None
    return [i for i in reversed(session) if isinstance(i, str)]


class RecommendationIn(Model):
    user_id: UserId
    surface: Surface = Surface.HOME
    n: SlateSize = 10
    context: Annotated[JsonObject, AfterValidator(_session_is_item_ids)] = Field(
        default_factory=dict,
        description="Free-form request context, logged with the slate. One key is Segue's: "
        "`session`, the item ids just played",
        json_schema_extra={"properties": {"session": SESSION_SCHEMA}},
    )
    candidates: Annotated[list[ItemId], Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="Rerank mode: rank only these items"
    )
    exclude: Annotated[list[ItemId], Field(max_length=1000)] = Field(default_factory=list)
    kinds: Annotated[list[ItemKind], Field(max_length=len(ItemKind))] = Field(
        default_factory=list, description="Only items of these kinds"
    )


class ItemBody(Model):
    item_id: ItemId | None = Field(default=None, description="If given, must match the path")
    kind: ItemKind
    attributes: JsonObject = Field(default_factory=dict)
    vector: Annotated[list[FiniteFloat], Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="Optional content vector"
    )


class ItemIn(ItemBody):
    item_id: ItemId


class ItemsIn(Model):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS)


class BlendIn(Model):
    user_ids: Annotated[list[UserId], Field(min_length=2, max_length=10)] = Field(
        description="2-10 distinct listeners sharing one slate",
        # Enforced by the handler (a 422 naming the repeat); published so generators know.
        json_schema_extra={"uniqueItems": True},
    )
    surface: Surface = Surface.HOME
    n: SlateSize = 10
    context: JsonObject = Field(default_factory=dict)
    exclude: Annotated[list[ItemId], Field(max_length=1000)] = Field(default_factory=list)
    kinds: Annotated[list[ItemKind], Field(max_length=len(ItemKind))] = Field(default_factory=list)


# --- experiments ----------------------------------------------------------------------------

# As `domain.experiments.NAME`: lower-case, so that names compare as they read.
ExperimentName = Annotated[
    str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="1-63 of a-z, 0-9, - and _")
]
# The policy's tunables (`domain.ranking.PolicyParams` less its name and version).
PolicyParam = Literal[
    "epsilon",
    "tail_epsilon",
    "tail",
    "w_affinity",
    "w_reward",
    "w_long_term",
    "optimism",
    "max_per_group",
]


class ArmIn(Model):
    name: ExperimentName
    weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = Field(
        default=1.0, description="Share of the listeners: weight / sum of the arms' weights"
    )
    params: dict[PolicyParam, Annotated[float, Field(ge=-1000, le=1000, allow_inf_nan=False)]] = (
        Field(
            default_factory=dict,
            description="The policy's parameters that differ from the version's (none: the "
            "version as it is, a control arm)",
        )
    )
    policy_version: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="A named policy version (default: the current one)"
    )


class MetricIn(Model):
    name: ExperimentName
    reward: JsonObject | None = Field(
        default=None,
        description="A reward definition (weights per outcome kind, attribution windows; see "
        "`segue evaluate --reward`); default: the gateway's default definition",
    )


class ExperimentIn(Model):
    name: ExperimentName
    hypothesis: Annotated[str, Field(max_length=2000)] = ""
    arms: Annotated[list[ArmIn], Field(min_length=2, max_length=10)] = Field(
        description="The first arm is the control every other arm is compared with"
    )
    surfaces: Annotated[list[Surface], Field(min_length=1, max_length=len(Surface))] = Field(
        description="Where the arms' policies serve slates; a surface is in at most one running "
        "experiment"
    )
    primary: MetricIn = Field(description="The metric the experiment decides on")
    guardrails: Annotated[list[MetricIn], Field(max_length=10)] = Field(
        default_factory=list, description="Metrics that must not get worse"
    )
    minimum_detectable_effect: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = Field(
        description="The smallest difference in reward per slate worth finding"
    )
    alpha: Annotated[float, Field(gt=0, lt=0.5, allow_inf_nan=False)] = Field(
        default=0.05, description="1 - the confidence of the always-valid intervals"
    )


class ExperimentStopIn(Model):
    reason: Annotated[str, Field(min_length=1, max_length=1000)] = Field(
        description="Why it is stopped, for the log"
    )


class ExperimentShipIn(Model):
    arm: ExperimentName = Field(description="The arm shipped")
