"""Projection failures: the error that stopped a projection, and the event it stopped at.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

A projector that cannot fold an event retries it with backoff and never skips it; every process
(and `segue status`) must be able to see that it is stuck, and where (docs/decisions.md 65).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("projections", sa.Column("failure", sa.Text, nullable=True))
    op.add_column("projections", sa.Column("failed_position", sa.BigInteger, nullable=True))
    op.add_column("projections", sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ("failed_at", "failed_position", "failure"):
        op.drop_column("projections", column)
