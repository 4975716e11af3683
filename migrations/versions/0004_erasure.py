"""Erasure: `analytics.event_types` learns the `ListenerForgotten` event.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

No table changes: forgetting deletes `listeners` rows and the projections (whose tables the
projector creates) drop their own. Databases already at 0003 only need the new event's schema
published for analysts, as `gateway.store.schemas.refresh_event_types` asks of every migration
that comes with a new event type.
"""

from collections.abc import Sequence

from alembic import op

from gateway.store.schemas import refresh_event_types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    refresh_event_types()


def downgrade() -> None:
    op.execute("DELETE FROM analytics.event_types WHERE event_type = 'ListenerForgotten'")
