"""The bodies Segue answers with, and problem details: the HTTP edge's own shapes (the requests
the services take are `gateway.serving.requests`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    Field,
)

from gateway.serving.requests import Model


class OutcomesOut(Model):
    accepted: int = Field(description="Outcomes stored by this request")
    duplicates: int = Field(description="Outcomes whose event_id was already stored")


# --- recommendations ------------------------------------------------------------------------


class SlateItemOut(Model):
    item_id: str
    position: int = Field(description="0-based")
    score: float
    propensity: float = Field(
        description="Probability that the policy put this item at this position"
    )


class PolicyOut(Model):
    name: str
    version: str


class RecommendationOut(Model):
    recommendation_id: UUID
    items: list[SlateItemOut]
    policy: PolicyOut
    index_version: str


# --- catalogue ------------------------------------------------------------------------------


class ItemOut(Model):
    item_id: str
    kind: str
    attributes: dict[str, Any]
    vector: list[float] | None
    retired: bool
    version: int = Field(description="The item stream's version after this change")


class ItemsOut(Model):
    items: list[ItemOut]


# --- service --------------------------------------------------------------------------------


class ForgetOut(Model):
    status: Literal["accepted"] = Field(
        description="The same answer for every id, known, unknown or already forgotten: the link "
        "between the id and its events is gone now; the listener's projection rows go within "
        "the projectors' lag"
    )


class HealthOut(Model):
    status: Literal["ok"]


class ReadyOut(Model):
    status: Literal["ready", "degraded", "not ready"] = Field(
        description="degraded: ready, but the published index is unusable and this process "
        "serves the index it loaded before or the popularity fallback (checks.index says why)"
    )
    checks: dict[str, str]


class FieldError(Model):
    field: str
    message: str
    type: str


class Problem(Model):
    """RFC 9457 problem details; `field` names the first offending field."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[FieldError] | None = None


# --- rewards and status ---------------------------------------------------------------------


class RewardOut(Model):
    sum: float = Field(description="Attributed, weighted outcomes")
    mean: float = Field(description="sum / count")
    count: int = Field(description="Impressions served")


class SurfaceRewardsOut(Model):
    served: int
    outcomes: dict[str, int] = Field(description="Attributed outcomes by kind")
    reward: RewardOut


class LongTermOut(Model):
    estimate: float = Field(description="Expected active days over the horizon after a stream")
    variance: float
    observed_traces: int = Field(description="Traces with at least one day observed")
    horizon_days: int


class ItemRewardsOut(Model):
    item_id: str
    as_of: datetime
    definition_version: str
    served: int
    outcomes: dict[str, int] = Field(description="Every outcome by kind, attributed or not")
    reward: RewardOut
    positions: dict[str, int] = Field(description="Times served at each 0-based position")
    by_surface: dict[str, SurfaceRewardsOut]
    long_term: LongTermOut
    projected_through: datetime | None = Field(
        description="Every event recorded before this instant is counted (the rewards "
        "projection is settled through it; an explicit as_of is answered only once it is past)"
    )


class ProjectionStatusOut(Model):
    name: str
    version: int
    status: str
    definition_version: str
    position: int = Field(description="global_position of the last event applied")
    events_applied: int
    lag_events: int
    lag_seconds: float
    error: str | None = Field(
        default=None, description="Why the projector stopped (status failed); it retries"
    )
    failed_position: int | None = Field(
        default=None, description="global_position of the event it cannot apply"
    )


class IndexOut(Model):
    version: str | None = Field(description="The version this process serves; null if none")
    built_at: datetime | None
    items: int
    recall_at_10: float | None = Field(description="Measured against exact search at build")
    position: int | None = Field(description="The affinity position the index reflects")
    building: bool
    error: str | None = Field(description="Why the newest published version was not loaded")


class StatusOut(Model):
    projections: list[ProjectionStatusOut]
    events: int = Field(description="Events in the store")
    index: IndexOut


# --- blends, similar items ------------------------------------------------------------------


class SimilarItemOut(Model):
    item_id: str
    score: float = Field(description="Dot product of the item embeddings: higher is closer")


class SimilarOut(Model):
    item_id: str
    items: list[SimilarItemOut]
    index_version: str
