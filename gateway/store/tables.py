"""The database schema as SQLAlchemy Core tables: Alembic's target metadata and the one place
table and column names are spelled. Hot-path statements live next to the code that runs them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

# Alembic's recommended naming convention, so constraint names are stable across migrations.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Xid8(sa.types.UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (13+): never wraps, so it orders commits safely."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# So reflection (Alembic's autogenerate and the schema test) recognises the column type.
pg.base.ischema_names["xid8"] = Xid8


events = sa.Table(
    "events",
    metadata,
    sa.Column("global_position", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("tx_id", Xid8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
    # Read when the row is built, after the stream locks and after `tx_id` (migration 0008).
    sa.Column(
        "recorded_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("clock_timestamp()"),
    ),
    sa.Column("stream_id", sa.Text, nullable=False),
    sa.Column("stream_version", sa.BigInteger, nullable=False),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("schema_version", sa.SmallInteger, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # Readers page through commits in (tx_id, global_position) order.
    sa.Index("ix_events_tx_position", "tx_id", "global_position"),
    sa.Index("ix_events_stream", "stream_id", "stream_version"),
    sa.Index("ix_events_recorded_at_brin", "recorded_at", postgresql_using="brin"),
    # The UTC day, for analysts' daily views (migration 0003).
    sa.Index(
        "ix_events_recorded_day_brin",
        sa.text("((recorded_at AT TIME ZONE 'UTC')::date)"),
        postgresql_using="brin",
    ),
)

# Optimistic concurrency lives here, not in a unique index on events, so that events can later be
# partitioned by time (a partitioned table's unique indexes must include the partition key).
streams = sa.Table(
    "streams",
    metadata,
    sa.Column("stream_id", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

# Idempotency: one row per client event id, pointing at where the original landed.
event_ids = sa.Table(
    "event_ids",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("global_position", sa.BigInteger, nullable=False),
    sa.Column("stream_id", sa.Text, nullable=False),
    sa.Column("stream_version", sa.BigInteger, nullable=False),
)

# The only place a listener's own identifier is kept. Events and projections hold the pseudonym;
# erasure deletes the row, after which the log can no longer be linked to the person.
listeners = sa.Table(
    "listeners",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column(
        "pseudonym",
        pg.UUID(as_uuid=True),
        nullable=False,
        unique=True,
        server_default=sa.text("gen_random_uuid()"),
    ),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    # SHA-256 of the whole key: keys are 256-bit random, so a slow KDF would add nothing.
    sa.Column("key_hash", sa.LargeBinary, nullable=True, unique=True),
    sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    # An AWS access key's secret, encrypted with SEGUE_CREDENTIALS_KEY: Signature Version 4 is
    # verified by signing again, which takes the secret itself, so a hash cannot do
    # (docs/decisions.md, "AWS keys"). Such a key's id is its access key id; it has no key_hash.
    sa.Column("aws_secret", sa.LargeBinary, nullable=True),
    sa.CheckConstraint("(key_hash IS NULL) <> (aws_secret IS NULL)", name="one_credential"),
)

# Each gateway process's running count of requests granted per API key, read by the others so
# that a key's rate limit holds across processes (gateway.http.ratelimit.SharedSpend). Unlogged:
# losing a second of counts in a crash costs nothing worth a WAL write per sync.
rate_limit_spend = sa.Table(
    "rate_limit_spend",
    metadata,
    sa.Column("process_id", pg.UUID, primary_key=True),
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("spent", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    prefixes=["UNLOGGED"],
)

# The live catalogue, kept by the append transaction that records ItemUpserted/ItemRetired, so a
# request can be answered from an item the moment its upsert was acknowledged.
catalog_items = sa.Table(
    "catalog_items",
    metadata,
    sa.Column("item_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("attributes", pg.JSONB, nullable=False),
    sa.Column("vector", pg.ARRAY(sa.Float), nullable=True),
    sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("global_position", sa.BigInteger, nullable=False),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # The transaction that wrote the row last: the gateways' change feed (migration 0006).
    sa.Column(
        "tx_id",
        sa.BigInteger,
        nullable=False,
        server_default=sa.text("(pg_current_xact_id()::text::bigint)"),
    ),
    sa.Index("ix_catalog_items_tx_id", "tx_id"),
)

# One row per version of each projection. The live version serves reads; a rebuild fills a
# `building` one in its own schema, then swaps. The checkpoint is the position of the last event
# applied, advanced in the same transaction as the projection's writes.
projections = sa.Table(
    "projections",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("schema_name", sa.Text, nullable=False, unique=True),
    sa.Column("definition_version", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("tx_id", Xid8(), nullable=False, server_default=sa.text("'0'::xid8")),
    sa.Column("global_position", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("last_recorded_at", sa.DateTime(timezone=True), nullable=True),
    # Every event recorded before this instant is applied (migration 0008).
    sa.Column("settled_through", sa.DateTime(timezone=True), nullable=True),
    sa.Column("events_applied", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    # What stopped the projector, and at which event (migration 0007); null while it runs.
    sa.Column("failure", sa.Text, nullable=True),
    sa.Column("failed_position", sa.BigInteger, nullable=True),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.CheckConstraint("status IN ('building', 'live', 'retired')", name="status"),
    sa.Index(
        "ix_projections_one_live", "name", unique=True, postgresql_where=sa.text("status = 'live'")
    ),
)

reward_definitions = sa.Table(
    "reward_definitions",
    metadata,
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("body", pg.JSONB, nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)
