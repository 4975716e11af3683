"""Exporting the log to files and importing it back: JSON Lines and Parquet, one shape both ways.

Every event is one line (or row) of `type`, `event_id`, `recorded_at`, `schema_version`,
`stream_id`, `stream_version`, `payload` and `metadata`, in commit order. JSON Lines keeps the
payload and metadata as objects; Parquet keeps them as JSON text (payloads differ per type).

Export reads one REPEATABLE READ snapshot through a server-side cursor, so memory stays bounded
and the file is a consistent cut of the log. Import parses and checks the whole file first,
copying it into a temporary staging table (binary COPY, in batches), and only then writes, in one
transaction: new events are appended to their streams in file order (versions continue each
stream, as the store's appends do), their ids recorded, the streams' versions moved on, the
catalogue kept, as the append transaction keeps it, and the mapping of any listener the file
forgets deleted. Events whose id is already stored are skipped, so importing a file twice adds
nothing. A bad line stops the import before anything is written, naming the line.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from domain.events import EVENT_TYPES, ItemRetired, ItemUpserted, ListenerForgotten
from domain.upcasting import decode
from gateway.projections.catalog import CatalogProjection
from gateway.store import bulk, reads
from gateway.store.postgres import Connection

FORMATS = ("jsonl", "parquet")
BATCH_ROWS = 5000
# How long an export waits for the transactions that may still commit into its window.
SETTLE_SECONDS = 60.0
FIELDS = (
    "type",
    "event_id",
    "recorded_at",
    "schema_version",
    "stream_id",
    "stream_version",
    "payload",
    "metadata",
)
REQUIRED = frozenset({"type", "event_id", "recorded_at", "payload"})

_PARQUET_FIELDS: list[pa.Field[Any]] = [
    pa.field("type", pa.string(), nullable=False),
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("schema_version", pa.int16(), nullable=False),
    pa.field("stream_id", pa.string(), nullable=False),
    pa.field("stream_version", pa.int64(), nullable=False),
    pa.field("payload", pa.string(), nullable=False),  # JSON text
    pa.field("metadata", pa.string(), nullable=False),  # JSON text
]
PARQUET_SCHEMA = pa.schema(_PARQUET_FIELDS)


def format_of(path: Path, given: str | None) -> str:
    """`given`, or the format the file name says (`.jsonl`, `.ndjson`, `.parquet`, `.pq`)."""
    if given is not None:
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"cannot tell the format of {path.name!r} from its name; give --format")


# --- export ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """`since` inclusive and `until` exclusive, on `recorded_at`; empty tuples mean any."""

    since: datetime | None = None
    until: datetime | None = None
    types: tuple[str, ...] = ()
    surfaces: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its arguments (`gateway.store.bulk.export_filter`)."""
        return bulk.export_filter(self.since, self.until, self.types, self.surfaces)


class Sink(Protocol):
    def write(self, rows: Sequence[asyncpg.Record]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Writes lines to an open binary file."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, rows: Sequence[asyncpg.Record]) -> None:
        self._out.write(
            b"".join(
                orjson.dumps(
                    {
                        "type": r[0],
                        "event_id": str(r[1]),
                        "recorded_at": r[2].astimezone(UTC).isoformat(),
                        "schema_version": r[3],
                        "stream_id": r[4],
                        "stream_version": r[5],
                        # As PostgreSQL wrote them: no round trip through Python floats.
                        "payload": orjson.Fragment(r[6]),
                        "metadata": orjson.Fragment(r[7]),
                    }
                )
                + b"\n"
                for r in rows
            )
        )

    def close(self) -> None:
        self._out.flush()


class ParquetSink:
    """Writes one row group per batch."""

    def __init__(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(str(path), PARQUET_SCHEMA, compression="zstd")

    def write(self, rows: Sequence[asyncpg.Record]) -> None:
        columns = [
            [r[0] for r in rows],
            [str(r[1]) for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
            [r[5] for r in rows],
            [r[6] for r in rows],
            [r[7] for r in rows],
        ]
        self._writer.write_batch(pa.record_batch(columns, schema=PARQUET_SCHEMA))

    def close(self) -> None:
        self._writer.close()


async def export_events(
    conn: Connection,
    sink: Sink,
    filters: Filters,
    *,
    on_total: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_until: Callable[[datetime], None] | None = None,
    batch_rows: int = BATCH_ROWS,
    settle_timeout: float = SETTLE_SECONDS,
) -> int:
    """Write every event matching `filters` to `sink`, in commit order, from one snapshot;
    returns how many. `on_total` hears the count first, `on_batch` each batch's size.

    The window ends at `filters.until`, or at the database's clock when the export starts
    (`on_until` hears which), and is read only once settled: no event recorded before its end
    can commit later, so it is final, and a later export from that instant on (`--since`) has
    exactly the rest (docs/decisions.md §83). A window still open after `settle_timeout` s
    raises NotSettled."""
    until = filters.until if filters.until is not None else await reads.clock(conn)
    await reads.settle(conn, until, timeout=settle_timeout)
    if on_until is not None:
        on_until(until)
    filters = replace(filters, until=until)
    where, args = filters.where()
    written = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if on_total is not None:
            on_total(await bulk.count_exported(conn, where, args))
        batch: list[asyncpg.Record] = []
        async for row in bulk.export_cursor(conn, where, args, prefetch=batch_rows):
            batch.append(row)
            if len(batch) >= batch_rows:
                sink.write(batch)
                written += len(batch)
                if on_batch is not None:
                    on_batch(len(batch))
                batch = []
        if batch:
            sink.write(batch)
            written += len(batch)
            if on_batch is not None:
                on_batch(len(batch))
    return written


# --- import ---------------------------------------------------------------------------------


class BadLine(ValueError):
    """A line (JSON Lines, 1-based) or row (Parquet, 1-based) that cannot be imported."""

    def __init__(self, where: str, number: int, reason: str) -> None:
        super().__init__(f"{where} {number}: {reason}")
        self.where = where
        self.number = number
        self.reason = reason


# One staged event: (line, stream_id, event_id, type, schema_version, payload, metadata, at).
Staged = tuple[int, str, uuid.UUID, str, int, str, str, datetime]


def check(raw: Any, number: int, where: str) -> Staged:
    """One line's object, checked as the store and the projectors will need it."""

    def bad(reason: str) -> BadLine:
        return BadLine(where, number, reason)

    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}")
    missing = sorted(REQUIRED - {k for k, v in raw.items() if v is not None})
    if missing:
        raise bad(f"missing {missing[0]!r}")
    event_type = raw["type"]
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise bad(f"unknown event type {event_type!r}")
    try:
        event_id = uuid.UUID(str(raw["event_id"]))
    except ValueError:
        raise bad(f"event_id {raw['event_id']!r} is not a UUID") from None
    at = raw["recorded_at"]
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            raise bad(f"recorded_at {raw['recorded_at']!r} is not an RFC 3339 time") from None
    if not isinstance(at, datetime):
        raise bad(f"recorded_at {raw['recorded_at']!r} is not an RFC 3339 time")
    if at.tzinfo is None:
        raise bad("recorded_at needs a time zone")
    version = raw.get("schema_version")
    version = EVENT_TYPES[event_type].SCHEMA_VERSION if version is None else version
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"schema_version {version!r} is not a positive integer")
    stream_version = raw.get("stream_version")
    if stream_version is not None and (
        not isinstance(stream_version, int)
        or isinstance(stream_version, bool)
        or stream_version < 1
    ):
        raise bad(f"stream_version {stream_version!r} is not a positive integer")
    payload, metadata = raw["payload"], raw.get("metadata") or {}
    if not isinstance(payload, dict):
        raise bad("payload is not an object")
    if not isinstance(metadata, dict):
        raise bad("metadata is not an object")
    try:
        event = decode(event_type, version, payload)
    except Exception as exc:  # whatever the payload lacks, say so rather than crash later
        raise bad(f"payload of {event_type} v{version} does not decode: {exc!r}") from None
    stream_id = raw.get("stream_id") or event.stream_id()
    if not isinstance(stream_id, str):
        raise bad("stream_id is not a string")
    payload_text = orjson.dumps(payload).decode()
    metadata_text = orjson.dumps(metadata).decode()
    if "\\u0000" in payload_text or "\\u0000" in metadata_text or "\x00" in stream_id:
        raise bad("contains a NUL character, which PostgreSQL cannot store")
    return (number, stream_id, event_id, event_type, version, payload_text, metadata_text, at)


def read_jsonl(path: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[Staged]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if on_bytes is not None:
                on_bytes(len(line))
            if not line.strip():
                continue
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise BadLine("line", number, f"not JSON ({exc})") from None
            yield check(raw, number, "line")


def _json_column(value: Any, name: str, number: int) -> Any:
    if value is None or not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise BadLine("row", number, f"{name} is not JSON text") from None


def read_parquet(path: Path, on_rows: Callable[[int], None] | None = None) -> Iterator[Staged]:
    try:
        file = pq.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise BadLine("row", 0, f"not a Parquet file ({exc})") from None
    missing = sorted(REQUIRED - set(file.schema_arrow.names))
    if missing:
        raise BadLine("row", 1, f"no column {missing[0]!r}")
    number = 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS):
        for raw in batch.to_pylist():
            number += 1
            raw["payload"] = _json_column(raw.get("payload"), "payload", number)
            raw["metadata"] = _json_column(raw.get("metadata"), "metadata", number)
            yield check(raw, number, "row")
        if on_rows is not None:
            on_rows(batch.num_rows)


@dataclass(frozen=True, slots=True)
class ImportResult:
    read: int  # events in the file
    imported: int  # appended now
    duplicates: int  # already stored, or repeated in the file

    def __str__(self) -> str:
        return f"{self.read} events read, {self.imported} imported, {self.duplicates} duplicates"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def import_events(
    conn: asyncpg.Connection,
    staged: Iterable[Staged],
    *,
    on_writing: Callable[[int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ImportResult:
    """Stage every event of `staged` (which raises `BadLine` on the first bad one: nothing is
    written then), then append the new ones in one transaction."""
    await bulk.create_staging(conn)
    try:
        read = 0
        batch: list[Staged] = []
        for row in staged:
            batch.append(row)
            if len(batch) >= batch_rows:
                await bulk.stage(conn, batch)
                read += len(batch)
                batch = []
        if batch:
            await bulk.stage(conn, batch)
            read += len(batch)
        if on_writing is not None:
            on_writing(read)
        async with conn.transaction():
            imported = await bulk.append_staged(conn)
            catalogue = CatalogProjection()
            items = await bulk.written_here(conn, [ItemUpserted.TYPE, ItemRetired.TYPE])
            if items:
                await catalogue.apply(conn, items)
            # A forgetting in the file forgets here too: a mapping restored from elsewhere
            # must not link an id to a pseudonym the log says was forgotten.
            gone = [
                e.payload["user"] for e in await bulk.written_here(conn, [ListenerForgotten.TYPE])
            ]
            if gone:
                await conn.execute(
                    "DELETE FROM listeners WHERE pseudonym = ANY($1::uuid[])",
                    [u for u in gone if _is_uuid(u)],
                )
        return ImportResult(read, imported, read - imported)
    finally:
        await bulk.drop_staging(conn)
