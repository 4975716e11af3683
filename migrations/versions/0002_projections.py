"""Projection registry (versions, checkpoints) and reward definitions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from gateway.store.tables import Xid8

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projections",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("schema_name", sa.Text, nullable=False),
        sa.Column("definition_version", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("tx_id", Xid8(), nullable=False, server_default=sa.text("'0'::xid8")),
        sa.Column("global_position", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("last_recorded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("events_applied", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "status IN ('building', 'live', 'retired')", name="ck_projections_status"
        ),
        sa.PrimaryKeyConstraint("name", "version", name="pk_projections"),
        sa.UniqueConstraint("schema_name", name="uq_projections_schema_name"),
    )
    op.create_index(
        "ix_projections_one_live",
        "projections",
        ["name"],
        unique=True,
        postgresql_where=sa.text("status = 'live'"),
    )
    op.create_table(
        "reward_definitions",
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("body", pg.JSONB, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("version", name="pk_reward_definitions"),
    )


def downgrade() -> None:
    # Projection schemas are derived data; they go with the registry that names them.
    conn = op.get_bind()
    for (schema,) in conn.execute(sa.text("SELECT schema_name FROM projections")):
        op.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    op.drop_table("reward_definitions")
    op.drop_index("ix_projections_one_live", table_name="projections")
    op.drop_table("projections")
