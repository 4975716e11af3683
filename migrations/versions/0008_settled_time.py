"""The log's time axis: an event is stamped after its locks, and projections say up to which
instant they are settled.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

`recorded_at` was `now()`, the start of the appending transaction, taken before its stream locks
were waited on: it could go backwards within a stream, and an event could commit after an instant
already later than its stamp, so a window of the log cut at that instant lost it (docs/decisions.md
§83). It is now `clock_timestamp()`, read when the row is built: after the stream locks (the
store inserts the events after locking and versioning their streams) and after the transaction has
its id (the `tx_id` column's default, `pg_current_xact_id()`, comes first in the row). Hence an
event stamped before an instant T belongs to a transaction that had its id before T, and T is
settled once every transaction with an id then has ended.

`projections.settled_through`: the latest instant up to which every event is applied.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("events", "recorded_at", server_default=sa.text("clock_timestamp()"))
    op.add_column(
        "projections", sa.Column("settled_through", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("projections", "settled_through")
    op.alter_column("events", "recorded_at", server_default=sa.text("now()"))
