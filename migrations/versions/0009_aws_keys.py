"""AWS keys: an API key may be an access key id with its encrypted secret instead of a hash.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

The Personalize-compatible routes verify AWS Signature Version 4, which needs the secret itself
(docs/decisions.md, "AWS keys"); such keys have no bearer token, so no hash.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("aws_secret", sa.LargeBinary, nullable=True))
    op.alter_column("api_keys", "key_hash", nullable=True)
    op.create_check_constraint(
        "one_credential", "api_keys", "(key_hash IS NULL) <> (aws_secret IS NULL)"
    )


def downgrade() -> None:
    # The schema before this revision cannot hold an AWS key: they go with it.
    op.execute("DELETE FROM api_keys WHERE key_hash IS NULL")
    op.drop_constraint("one_credential", "api_keys", type_="check")
    op.alter_column("api_keys", "key_hash", nullable=False)
    op.drop_column("api_keys", "aws_secret")
