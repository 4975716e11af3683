"""Personalizer-compatible routes: `analytics.event_types` learns `RecommendationDeferred` and
the `reward` outcome kind; the views weigh a `reward` by its value, as the folds do; the
definition `music-podcasts-2` is stored.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

No table changes: a deferred rank is an event of its own stream, a Personalizer reward an
outcome of kind `reward` (docs/decisions.md, "Personalizer-compatible routes").
"""

import importlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from domain.rewards import DEFAULT
from gateway.store.schemas import refresh_event_types

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The views of 0003 weigh an outcome by its kind alone; a `reward` is worth its value times that.
_ANALYTICS = importlib.import_module("migrations.versions.0003_analytics")
BY_KIND = _ANALYTICS.REWARD
BY_VALUE = BY_KIND.replace(
    "    ELSE COALESCE",
    """    WHEN o.payload ->> 'kind' = 'reward'
    THEN COALESCE((d.body -> 'weights' ->> 'reward')::numeric, 0)
         * COALESCE((o.payload ->> 'value')::numeric, 0)
    ELSE COALESCE""",
)
REWARD_COLUMN = (
    "The outcome's weight under the current definition (0 for a skip after the skip "
    "threshold; for a reward, the weight times its value)."
)
REWARD_COLUMN_BEFORE = (
    "The outcome's weight under the current definition (0 for a skip after the skip threshold)."
)


def _reward_column(text: str) -> None:
    quoted = text.replace("'", "''")
    op.execute(f"COMMENT ON COLUMN analytics.attributed_outcomes.reward IS '{quoted}'")


def _weigh(old: str, new: str) -> None:
    for name, sql, _, _ in _ANALYTICS.VIEWS:
        if old in sql:
            op.execute(f"CREATE OR REPLACE VIEW analytics.{name} AS {sql.replace(old, new)}")


def upgrade() -> None:
    assert BY_VALUE != BY_KIND
    _weigh(BY_KIND, BY_VALUE)
    _reward_column(REWARD_COLUMN)
    refresh_event_types()
    # Stored beside music-podcasts-1 so that `segue rebuild rewards --definition` and
    # `segue evaluate --reward` can name it; a live projection keeps its own until rebuilt.
    op.execute(
        sa.text(
            "INSERT INTO reward_definitions (version, body) VALUES (:v, CAST(:b AS jsonb)) "
            "ON CONFLICT (version) DO NOTHING"
        ).bindparams(v=DEFAULT.version, b=json.dumps(DEFAULT.to_json()))
    )


def downgrade() -> None:
    _weigh(BY_VALUE, BY_KIND)
    _reward_column(REWARD_COLUMN_BEFORE)
    op.execute("DELETE FROM analytics.event_types WHERE event_type = 'RecommendationDeferred'")
