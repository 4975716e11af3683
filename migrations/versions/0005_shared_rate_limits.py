"""Shared rate limits: each gateway process's spending per API key, for the others to read.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

An unlogged table: its rows are running counts that each process rewrites a few times a second,
and a crash that empties it only forgives a second or so of spending.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_spend",
        sa.Column("process_id", pg.UUID, primary_key=True),
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("spent", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("rate_limit_spend")
