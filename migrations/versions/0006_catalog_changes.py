"""Catalogue change feed: the transaction that last wrote each catalogue row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

A gateway keeps the live catalogue in memory. Reloading a million rows every second to see
other processes' changes is not affordable, and neither `updated_at` (a transaction's start) nor
`global_position` (taken before commit) orders commits: a change that commits late can carry a
smaller value than one already read. The writing transaction's id can: every transaction below a
snapshot's `xmin` has ended, so a reader that remembers the `xmin` of its last read and next asks
for rows whose `tx_id` is at least that misses no commit (docs/decisions.md 62).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TX = sa.text("(pg_current_xact_id()::text::bigint)")


def upgrade() -> None:
    op.add_column(
        "catalog_items",
        sa.Column("tx_id", sa.BigInteger, nullable=False, server_default=CURRENT_TX),
    )
    op.create_index("ix_catalog_items_tx_id", "catalog_items", ["tx_id"])


def downgrade() -> None:
    op.drop_index("ix_catalog_items_tx_id", table_name="catalog_items")
    op.drop_column("catalog_items", "tx_id")
