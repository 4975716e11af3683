"""Analytics: documented views over the event store, the event schemas, the analyst role.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

The views decode payloads of every stored schema version (old shapes are read with COALESCE, as
the upcasters in domain/upcasting.py do), and attribute outcomes to slate positions by the rules
of domain/reward_fold.py under the current reward definition. Every view and column carries a
COMMENT; `\\d+ analytics.*` in psql shows them.

`segue_analyst` is cluster-wide: it is created only if missing (several databases of one server
share it), and the downgrade revokes this database's grants and drops the role only when nothing
in any other database still refers to it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from domain.rewards import DEFAULT
from gateway.store.schemas import refresh_event_types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "segue_analyst"
# A default for the analyst's sessions (they may SET another deliberately): long enough for a
# scan of months of events, short enough that a forgotten cross join does not run all night.
STATEMENT_TIMEOUT = "5min"
IDLE_IN_TRANSACTION_TIMEOUT = "10min"
# What the analyst may read besides the analytics schema. Never `listeners` (the link between a
# pseudonym and a person) or `api_keys`.
ANALYST_TABLES = ("events", "reward_definitions", "projections", "catalog_items")

# The UTC day of an event: what the daily view groups by, with a BRIN index of its own so that
# filtering the view by day reads only the matching part of the log.
DAY = "((recorded_at AT TIME ZONE 'UTC')::date)"

# The reward definition the views use: the live rewards projection's, else the newest stored.
REWARD_DEFINITION = """
SELECT d.version, d.body, (p.name IS NOT NULL) AS live
FROM public.reward_definitions d
LEFT JOIN public.projections p
       ON p.name = 'rewards' AND p.status = 'live' AND p.definition_version = d.version
ORDER BY (p.name IS NOT NULL) DESC, d.created_at DESC, d.version
LIMIT 1
"""

REWARD_WEIGHTS = """
SELECT d.version AS definition_version, k.kind,
       COALESCE((d.body -> 'weights' ->> k.kind)::numeric, 0) AS weight,
       COALESCE((d.body -> 'windows_seconds' ->> k.kind)::integer, 0) AS window_seconds
FROM analytics.reward_definition d
CROSS JOIN LATERAL (
    SELECT jsonb_object_keys(d.body -> 'weights')
    UNION
    SELECT jsonb_object_keys(d.body -> 'windows_seconds')
) AS k(kind)
"""

# v1 kept the policy as `policy_name`/`policy_version` and no request; v2 nested the policy and
# added `request`; v3 added `members`. Each COALESCE reads the current shape, then the older.
RECOMMENDATIONS = """
SELECT
    (e.payload ->> 'recommendation_id')::uuid AS recommendation_id,
    e.payload ->> 'user' AS listener,
    e.payload ->> 'surface' AS surface,
    (s.entry ->> 'position')::integer AS position,
    s.entry ->> 'item_id' AS item_id,
    (s.entry ->> 'score')::double precision AS score,
    (s.entry ->> 'propensity')::double precision AS propensity,
    COALESCE(e.payload -> 'policy' ->> 'name', e.payload ->> 'policy_name') AS policy_name,
    COALESCE(e.payload -> 'policy' ->> 'version', e.payload ->> 'policy_version')
        AS policy_version,
    e.payload ->> 'index_version' AS index_version,
    (e.payload ->> 'requested_at')::timestamptz AS requested_at,
    e.recorded_at,
    jsonb_array_length(e.payload -> 'slate') AS slate_size,
    COALESCE(
        e.payload -> 'request',
        jsonb_build_object(
            'n', jsonb_array_length(e.payload -> 'slate'),
            'candidates', NULL, 'exclude', '[]'::jsonb, 'kinds', '[]'::jsonb
        )
    ) AS request,
    COALESCE(e.payload -> 'members', '[]'::jsonb) AS members,
    e.payload -> 'context' AS context,
    e.schema_version,
    e.global_position
FROM public.events e
CROSS JOIN LATERAL jsonb_array_elements(e.payload -> 'slate') AS s(entry)
WHERE e.event_type = 'RecommendationServed'
"""

OUTCOMES = """
SELECT
    (e.payload ->> 'event_id')::uuid AS event_id,
    e.payload ->> 'user' AS listener,
    e.payload ->> 'item_id' AS item_id,
    e.payload ->> 'kind' AS kind,
    (e.payload ->> 'value')::double precision AS value,
    (e.payload ->> 'occurred_at')::timestamptz AS occurred_at,
    (e.payload ->> 'recommendation_id')::uuid AS recommendation_id,
    e.recorded_at,
    e.schema_version,
    e.global_position
FROM public.events e
WHERE e.event_type = 'OutcomeRecorded'
"""

# The attribution rule of domain/reward_fold.py, written once for both views that use it. `o` is
# the outcome event, `r` the slate's, `d` the definition. The slate is found through its stream
# (`recommendation-{id}`, decision 5), which the (stream_id, stream_version) index serves: a
# lateral lookup per outcome, so that a query over a day of outcomes costs a day's worth of
# probes however long the log is (a hash join would read every slate ever served). As in the
# fold, a slate only counts for outcomes logged after it (in the readers' commit order).
SLATE_OF_OUTCOME = """
    SELECT r.payload, r.recorded_at, r.global_position
    FROM public.events r
    WHERE r.stream_id = 'recommendation-' || ((o.payload ->> 'recommendation_id')::uuid)::text
      AND r.event_type = 'RecommendationServed'
      AND (r.tx_id, r.global_position) < (o.tx_id, o.global_position)
    LIMIT 1
"""

# An outcome counts for the slate when it happened from a minute before the slate (client clock
# skew) to the end of its kind's window.
IN_WINDOW = """
    (o.payload ->> 'occurred_at')::timestamptz
        >= (r.payload ->> 'requested_at')::timestamptz - interval '1 minute'
    AND (o.payload ->> 'occurred_at')::timestamptz
        <= (r.payload ->> 'requested_at')::timestamptz
           + COALESCE((d.body -> 'windows_seconds' ->> (o.payload ->> 'kind'))::double precision, 0)
             * interval '1 second'
"""

# The outcome's weight under the definition: a skip after the threshold is not counted against.
REWARD = """
CASE
    WHEN o.payload ->> 'kind' = 'skip'
         AND (o.payload ->> 'value')::double precision
             >= COALESCE((d.body ->> 'skip_threshold_ms')::double precision, 30000)
    THEN 0::numeric
    ELSE COALESCE((d.body -> 'weights' ->> (o.payload ->> 'kind'))::numeric, 0)
END
"""

ATTRIBUTED_OUTCOMES = f"""
SELECT
    (o.payload ->> 'event_id')::uuid AS event_id,
    (o.payload ->> 'recommendation_id')::uuid AS recommendation_id,
    (s.entry ->> 'position')::integer AS position,
    o.payload ->> 'item_id' AS item_id,
    o.payload ->> 'kind' AS kind,
    (o.payload ->> 'value')::double precision AS value,
    o.payload ->> 'user' AS listener,
    r.payload ->> 'user' AS served_to,
    r.payload ->> 'surface' AS surface,
    (s.entry ->> 'score')::double precision AS score,
    (s.entry ->> 'propensity')::double precision AS propensity,
    COALESCE(r.payload -> 'policy' ->> 'name', r.payload ->> 'policy_name') AS policy_name,
    COALESCE(r.payload -> 'policy' ->> 'version', r.payload ->> 'policy_version')
        AS policy_version,
    r.payload ->> 'index_version' AS index_version,
    (r.payload ->> 'requested_at')::timestamptz AS requested_at,
    (o.payload ->> 'occurred_at')::timestamptz AS occurred_at,
    (o.payload ->> 'occurred_at')::timestamptz - (r.payload ->> 'requested_at')::timestamptz
        AS delay,
    {REWARD} AS reward,
    d.version AS definition_version,
    o.recorded_at,
    r.recorded_at AS served_recorded_at,
    o.global_position
FROM public.events o
LEFT JOIN analytics.reward_definition d ON true
CROSS JOIN LATERAL ({SLATE_OF_OUTCOME}) AS r
-- The fold keeps a slate as {{item: position}}, so an item listed twice counts at its last place.
CROSS JOIN LATERAL (
    SELECT x.entry
    FROM jsonb_array_elements(r.payload -> 'slate') WITH ORDINALITY AS x(entry, ord)
    WHERE x.entry ->> 'item_id' = o.payload ->> 'item_id'
    ORDER BY x.ord DESC
    LIMIT 1
) AS s
WHERE o.event_type = 'OutcomeRecorded'
  AND o.payload ->> 'recommendation_id' IS NOT NULL
  AND {IN_WINDOW}
"""

ITEM_REWARDS_DAILY = f"""
SELECT item_id, day, surface,
       sum(served)::bigint AS served,
       sum(n)::bigint AS outcomes,
       COALESCE(jsonb_object_agg(kind, n) FILTER (WHERE kind IS NOT NULL), '{{}}'::jsonb)
           AS outcome_counts,
       sum(reward) AS reward
FROM (
    SELECT item_id, day, surface, kind, sum(served) AS served, count(kind) AS n,
           sum(reward) AS reward
    FROM (
        SELECT s.entry ->> 'item_id' AS item_id,
               {DAY.replace("recorded_at", "e.recorded_at")} AS day,
               e.payload ->> 'surface' AS surface,
               1 AS served, NULL::text AS kind, 0::numeric AS reward
        FROM public.events e
        CROSS JOIN LATERAL jsonb_array_elements(e.payload -> 'slate') AS s(entry)
        WHERE e.event_type = 'RecommendationServed'
        UNION ALL
        SELECT o.payload ->> 'item_id',
               {DAY.replace("recorded_at", "o.recorded_at")},
               r.payload ->> 'surface',
               0, o.payload ->> 'kind',
               CASE WHEN r.global_position IS NULL THEN 0::numeric ELSE {REWARD} END
        FROM public.events o
        LEFT JOIN analytics.reward_definition d ON true
        LEFT JOIN LATERAL ({SLATE_OF_OUTCOME}) AS r
               ON {IN_WINDOW}
              AND r.payload -> 'slate'
                  @> jsonb_build_array(jsonb_build_object('item_id', o.payload ->> 'item_id'))
        WHERE o.event_type = 'OutcomeRecorded'
    ) AS facts
    GROUP BY item_id, day, surface, kind
) AS by_kind
GROUP BY item_id, day, surface
"""

INDEXED = "Filter on it to read only part of the log: the events table has a BRIN index on it."
WHEN_RECORDED = (
    f"When the event store recorded the event (its append transaction's start). {INDEXED}"
)

VIEWS: list[tuple[str, str, str, dict[str, str]]] = [
    (
        "reward_definition",
        REWARD_DEFINITION,
        "The reward definition the other views attribute and weigh outcomes with: the live "
        "rewards projection's, or else the newest stored one. One row.",
        {
            "version": "The definition's version (reward_definitions.version).",
            "body": "The definition as JSON: weights, windows_seconds, horizon_days, "
            "skip_threshold_ms, stream_kinds (docs/rewards.md).",
            "live": "True when the live rewards projection uses this definition.",
        },
    ),
    (
        "reward_weights",
        REWARD_WEIGHTS,
        "The current reward definition, one row per outcome kind it mentions.",
        {
            "definition_version": "The definition's version.",
            "kind": "The outcome kind.",
            "weight": "What one attributed outcome of this kind is worth (a skip after "
            "skip_threshold_ms of listening is worth 0 whatever this says).",
            "window_seconds": "How long after a slate was served an outcome of this kind still "
            "counts as that slate's doing.",
        },
    ),
    (
        "recommendations",
        RECOMMENDATIONS,
        "One row per item of every served slate (RecommendationServed, every schema version): "
        "what was served, where, at which position, with which propensity, by which policy.",
        {
            "recommendation_id": "The slate's id, as returned to the client and named by outcomes.",
            "listener": "The listener's pseudonym (a blend's first listener). Never the client's "
            "user id: that mapping is not readable by analysts.",
            "surface": "Where the slate was shown: home, search, shelf, podcasts, music.",
            "position": "0-based position of the item in the slate.",
            "item_id": "The item served.",
            "score": "The policy's score for the item.",
            "propensity": "P(this item at this position | the request) under the logging policy: "
            "what inverse-propensity estimators divide by.",
            "policy_name": "The policy that drew the slate.",
            "policy_version": "The policy's version.",
            "index_version": "The nearest-neighbour index that supplied candidates.",
            "requested_at": "When the gateway received the request; attribution windows start "
            "here.",
            "recorded_at": WHEN_RECORDED,
            "slate_size": "How many items the slate held.",
            "request": "The request as the policy saw it (n, candidates, exclude, kinds); for "
            "schema version 1, which did not keep it, reconstructed as the upcaster does.",
            "members": "A blend's listeners (JSON array of pseudonyms); empty for one listener.",
            "context": "The client's free-form request context.",
            "schema_version": "The stored payload's schema version (docs/events/).",
            "global_position": "The event's position in the log (events.global_position).",
        },
    ),
    (
        "outcomes",
        OUTCOMES,
        "One row per reported outcome (OutcomeRecorded), attributed or not.",
        {
            "event_id": "The client's idempotency key for the outcome.",
            "listener": "The pseudonym of the listener who acted.",
            "item_id": "The item acted on.",
            "kind": "What happened: impression, click, stream_start, stream_30s, complete, skip, "
            "save, like, dislike, follow, share, active_day.",
            "value": "A measure going with the kind (e.g. ms played before a skip), or null.",
            "occurred_at": "When it happened, by the client's clock.",
            "recommendation_id": "The slate the client says led to it; null for organic "
            "interactions. Whether it counts for that slate: analytics.attributed_outcomes.",
            "recorded_at": WHEN_RECORDED,
            "schema_version": "The stored payload's schema version.",
            "global_position": "The event's position in the log.",
        },
    ),
    (
        "attributed_outcomes",
        ATTRIBUTED_OUTCOMES,
        "Each outcome attributed to the slate position that caused it, by the rules of the "
        "rewards projection (docs/rewards.md): it names a slate logged before it, its item is in "
        "that slate, and it happened from one minute before the slate was requested to the end "
        "of its kind's window under the current definition (analytics.reward_definition). "
        "Outcomes that are not attributed are only in analytics.outcomes.",
        {
            "event_id": "The outcome's idempotency key (analytics.outcomes.event_id).",
            "recommendation_id": "The slate it is attributed to.",
            "position": "The 0-based position of the item in that slate.",
            "item_id": "The item.",
            "kind": "The outcome kind.",
            "value": "The outcome's value, or null.",
            "listener": "Who acted (a blend's slate is served to several listeners).",
            "served_to": "The slate's listener (a blend's first listener).",
            "surface": "The slate's surface.",
            "score": "The item's score in the slate.",
            "propensity": "The item's propensity at that position.",
            "policy_name": "The policy that drew the slate.",
            "policy_version": "The policy's version.",
            "index_version": "The index that supplied the slate's candidates.",
            "requested_at": "When the slate was requested.",
            "occurred_at": "When the outcome happened (client clock).",
            "delay": "occurred_at - requested_at.",
            "reward": "The outcome's weight under the current definition (0 for a skip after "
            "the skip threshold).",
            "definition_version": "The reward definition used for windows and weights.",
            "recorded_at": f"When the outcome was recorded. {INDEXED}",
            "served_recorded_at": "When the slate was recorded.",
            "global_position": "The outcome event's position in the log.",
        },
    ),
    (
        "item_rewards_daily",
        ITEM_REWARDS_DAILY,
        "Per item, UTC day and surface: times served, outcomes and reward. The day is the one "
        "each event was recorded on (the slate's for served, the outcome's for outcomes and "
        "reward), as the rewards projection keys its aggregates; outcomes not attributed to a "
        "slate have a null surface. Filtering on day reads only those days of the log.",
        {
            "item_id": "The item.",
            "day": "The UTC day the counted events were recorded on. "
            "Filter on it: the events table has a BRIN index on this expression.",
            "surface": "The slate's surface; null for outcomes not attributed to any slate.",
            "served": "Times the item was served (one per slate position).",
            "outcomes": "Outcomes for the item (attributed ones under their slate's surface).",
            "outcome_counts": "The outcomes by kind, as a JSON object {kind: count}.",
            "reward": "Sum of the weights of the attributed outcomes under the current "
            "definition: the rewards projection's reward_sum.",
        },
    ),
]

EVENT_TYPES_COMMENTS = {
    "event_type": "The event type (events.event_type).",
    "schema_version": "A payload schema version of that type (events.schema_version).",
    "is_current": "True for the version the gateway writes today; older ones are upcast on read.",
    "description": "What the event records.",
    "json_schema": "The JSON Schema (2020-12) of events.payload for this type and version; the "
    "same as docs/events/<type>.v<version>.json in the repository.",
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comment(kind: str, name: str, text: str) -> None:
    op.execute(f"COMMENT ON {kind} {name} IS {_literal(text)}")


def upgrade() -> None:
    op.execute("CREATE SCHEMA analytics")
    _comment(
        "SCHEMA",
        "analytics",
        "Documented, read-only views over the event store for analysts (README: Analysts).",
    )
    op.create_index(
        "ix_events_recorded_day_brin", "events", [sa.text(DAY)], postgresql_using="brin"
    )
    # The definition the views fall back to before any projection has run.
    op.execute(
        sa.text(
            "INSERT INTO reward_definitions (version, body) VALUES (:v, CAST(:b AS jsonb)) "
            "ON CONFLICT (version) DO NOTHING"
        ).bindparams(v=DEFAULT.version, b=_json(DEFAULT.to_json()))
    )

    op.execute(
        "CREATE TABLE analytics.event_types (event_type text NOT NULL, "
        "schema_version smallint NOT NULL, is_current boolean NOT NULL, "
        "description text NOT NULL, json_schema jsonb NOT NULL, "
        "CONSTRAINT pk_event_types PRIMARY KEY (event_type, schema_version))"
    )
    _comment(
        "TABLE",
        "analytics.event_types",
        "Every event type and schema version with the JSON Schema of its payload, generated "
        "from domain/payloads.py (refreshed by migrations).",
    )
    for column, text in EVENT_TYPES_COMMENTS.items():
        _comment("COLUMN", f"analytics.event_types.{column}", text)
    refresh_event_types()

    for name, sql, about, columns in VIEWS:
        op.execute(f"CREATE VIEW analytics.{name} AS {sql}")
        _comment("VIEW", f"analytics.{name}", about)
        for column, text in columns.items():
            _comment("COLUMN", f"analytics.{name}.{column}", text)

    _create_role()
    op.execute(f"GRANT USAGE ON SCHEMA analytics TO {ROLE}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(ANALYST_TABLES)} TO {ROLE}")
    op.execute(
        f"DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {ROLE}', "
        "current_database()); END $$"
    )


def _create_role() -> None:
    # Roles belong to the server, not the database: another database may have created it (even
    # at this moment: the unique_violation), and then its settings are left as they are.
    op.execute(
        f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        BEGIN
            CREATE ROLE {ROLE} LOGIN;
            ALTER ROLE {ROLE} SET statement_timeout = '{STATEMENT_TIMEOUT}';
            ALTER ROLE {ROLE} SET idle_in_transaction_session_timeout
                = '{IDLE_IN_TRANSACTION_TIMEOUT}';
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'cannot create the analyst role {ROLE}: %', SQLERRM
                    USING HINT = 'ALTER ROLE ' || current_user || ' CREATEROLE once, or have '
                        'a superuser CREATE ROLE {ROLE} LOGIN first (deploy/README.md)';
        END;
    END IF;
END
$$"""
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA analytics CASCADE")
    op.drop_index("ix_events_recorded_day_brin", table_name="events")
    op.execute(f"REVOKE ALL ON {', '.join(ANALYST_TABLES)} FROM {ROLE}")
    op.execute(
        f"DO $$ BEGIN EXECUTE format('REVOKE ALL ON DATABASE %I FROM {ROLE}', "
        "current_database()); END $$"
    )
    # Drop the role only when no database of the server grants it anything, owns nothing by it
    # and no other role is a member of it; otherwise leave it for the databases that use it.
    op.execute(
        f"""
DO $$
DECLARE
    analyst oid := (SELECT oid FROM pg_roles WHERE rolname = '{ROLE}');
BEGIN
    IF analyst IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_shdepend
                       WHERE refclassid = 'pg_authid'::regclass AND refobjid = analyst)
       AND NOT EXISTS (SELECT FROM pg_auth_members WHERE roleid = analyst) THEN
        BEGIN
            DROP ROLE {ROLE};
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            RAISE NOTICE '{ROLE} kept: %', SQLERRM;
        END;
    END IF;
END
$$"""
    )
    # The default definition inserted by upgrade stays: projections may refer to it, and the
    # projector stores it anyway when it starts.


def _json(value: object) -> str:
    import json

    return json.dumps(value)
