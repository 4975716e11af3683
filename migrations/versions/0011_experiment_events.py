"""Experiments: `analytics.event_types` learns the experiment events and RecommendationServed v4.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

No table changes: experiments and assignments are events, and their projection's tables are
created by the projector. Databases already at 0009 only need the new schemas published for
analysts, as `gateway.store.schemas.refresh_event_types` asks of every migration that comes with
a new event type or version.
"""

from collections.abc import Sequence

from alembic import op

from gateway.store.schemas import refresh_event_types

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    refresh_event_types()


def downgrade() -> None:
    op.execute(
        "DELETE FROM analytics.event_types WHERE event_type IN ('ExperimentStarted', "
        "'ExperimentStopped', 'ExperimentShipped', 'ExperimentAssigned') "
        "OR (event_type = 'RecommendationServed' AND schema_version = 4)"
    )
    op.execute(
        "UPDATE analytics.event_types SET is_current = true "
        "WHERE event_type = 'RecommendationServed' AND schema_version = 3"
    )
