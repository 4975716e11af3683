"""JSON Schemas of every event type and schema version, generated from `domain.payloads`.

The same generated schemas are published in the repository (`docs/events/`, written by
`segue schemas write docs/events`; a test fails when they are stale) and stored in the database
table `analytics.event_types` (by the migrations, through `refresh_event_types`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain import payloads
from domain.events import EVENT_TYPES
from domain.payloads import PAYLOADS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
INDEX = "index.json"
README = "README.md"
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "docs" / "events"


@dataclass(frozen=True)
class EventSchema:
    event_type: str
    schema_version: int
    current: bool
    description: str
    schema: dict[str, Any]

    @property
    def file_name(self) -> str:
        return f"{self.event_type}.v{self.schema_version}.json"


class MissingPayloadSchema(ValueError):
    """An event type or version has no payload class in `domain.payloads`, or one is
    registered for a version the code does not know."""


def _check_registry() -> None:
    problems = [
        f"{name} v{v} has no payload class in domain/payloads.py"
        for name, cls in EVENT_TYPES.items()
        for v in range(1, cls.SCHEMA_VERSION + 1)
        if (name, v) not in PAYLOADS
    ]
    problems += [
        f"domain/payloads.py describes {name} v{v}, which domain/events.py does not define"
        for name, v in PAYLOADS
        if name not in EVENT_TYPES or v > EVENT_TYPES[name].SCHEMA_VERSION
    ]
    if problems:
        raise MissingPayloadSchema("; ".join(problems))


def _configure_payload_classes() -> None:
    # Payloads are exactly what the gateway wrote: no other fields. Attribute docstrings become
    # descriptions. Set here rather than in domain/, which must not know about pydantic.
    for value in vars(payloads).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            value.__pydantic_config__ = {  # type: ignore[attr-defined]
                "extra": "forbid",
                "use_attribute_docstrings": True,
            }


def _tidy(node: Any, *, in_properties: bool = False) -> Any:
    """Drop the titles pydantic derives from property names ("Item Id": noise next to the
    name) and join docstring lines into one-line descriptions."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if in_properties:
                out[key] = {k: _tidy(v) for k, v in value.items() if k != "title"}
            elif key == "description" and isinstance(value, str):
                out[key] = " ".join(value.split())
            else:
                out[key] = _tidy(value, in_properties=key == "properties")
        return out
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


def _schema_of(event_type: str, version: int, cls: type) -> dict[str, Any]:
    from pydantic import TypeAdapter

    generated = _tidy(TypeAdapter(cls).json_schema(mode="validation"))
    generated.pop("title", None)
    return {
        "$schema": DIALECT,
        "title": f"{event_type} v{version}",
        "x-segue-event-type": event_type,
        "x-segue-schema-version": version,
        **generated,
    }


def event_schemas(*, strict: bool = True) -> list[EventSchema]:
    """Every event type at every schema version, ordered by type then version.

    Raises MissingPayloadSchema when domain/events.py and domain/payloads.py disagree, unless
    `strict` is false: then only the versions both know are returned."""
    if strict:
        _check_registry()
    _configure_payload_classes()
    out = []
    for (name, version), cls in sorted(PAYLOADS.items()):
        if name not in EVENT_TYPES or version > EVENT_TYPES[name].SCHEMA_VERSION:
            continue
        schema = _schema_of(name, version, cls)
        out.append(
            EventSchema(
                name,
                version,
                version == EVENT_TYPES[name].SCHEMA_VERSION,
                str(schema.get("description", "")),
                schema,
            )
        )
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _readme(schemas: list[EventSchema]) -> str:
    rows = "\n".join(
        f"| `{s.event_type}` | {s.schema_version}{' (current)' if s.current else ''} "
        f"| [{s.file_name}]({s.file_name}) | {s.description} |"
        for s in schemas
    )
    return (
        "# Event schemas\n\n"
        "Generated from `domain/payloads.py` by `segue schemas write docs/events`; do not edit.\n"
        "Each file is the JSON Schema (2020-12) of the `payload` column of `events` for one\n"
        "`event_type` and `schema_version`. Readers upcast old versions to the current one\n"
        "(`domain/upcasting.py`); the log keeps what was written. The same schemas are in the\n"
        "database, in `analytics.event_types`.\n\n"
        "| event type | version | schema | what it records |\n"
        "|---|---|---|---|\n"
        f"{rows}\n"
    )


def rendered(schemas: list[EventSchema] | None = None) -> dict[str, str]:
    """The published folder's contents: file name -> text."""
    schemas = event_schemas() if schemas is None else schemas
    files = {s.file_name: _dumps(s.schema) for s in schemas}
    files[INDEX] = _dumps(
        {
            "event_types": [
                {
                    "event_type": s.event_type,
                    "schema_version": s.schema_version,
                    "current": s.current,
                    "file": s.file_name,
                }
                for s in schemas
            ]
        }
    )
    files[README] = _readme(schemas)
    return files


def differences(folder: Path) -> list[str]:
    """What differs between `folder` and freshly generated schemas (empty: up to date)."""
    want = rendered()
    have = (
        {p.name: p.read_text() for p in folder.glob("*") if p.is_file()} if folder.is_dir() else {}
    )
    out = [f"{name}: missing" for name in sorted(want.keys() - have.keys())]
    out += [f"{name}: not generated (stale?)" for name in sorted(have.keys() - want.keys())]
    out += [
        f"{name}: differs" for name in sorted(want.keys() & have.keys()) if want[name] != have[name]
    ]
    return out


def write(folder: Path) -> list[str]:
    """Write the schemas into `folder`, removing files the generator no longer produces;
    returns the names of the files written or removed."""
    folder.mkdir(parents=True, exist_ok=True)
    want = rendered()
    changed = []
    for path in sorted(folder.glob("*")):
        if path.is_file() and path.name not in want:
            path.unlink()
            changed.append(path.name)
    for name, text in want.items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    return changed


def refresh_event_types() -> None:
    """Replace the rows of `analytics.event_types` with the schemas this code generates.

    Call it from a migration's `upgrade()` (0003 does) whenever an event type or version is
    added, so that databases already migrated learn about it too. A version without a payload
    class is left out rather than failing the migration; the tests insist on it."""
    import sqlalchemy as sa
    from alembic import op

    op.execute("DELETE FROM analytics.event_types")
    # One statement per row with the JSON as text cast to jsonb: works online, and renders as
    # literals for `alembic upgrade --sql` (SQLAlchemy has no literal form for a JSONB value).
    insert = sa.text(
        "INSERT INTO analytics.event_types "
        "(event_type, schema_version, is_current, description, json_schema) "
        "VALUES (:event_type, :schema_version, :is_current, :description, "
        "CAST(:json_schema AS jsonb))"
    )
    for s in event_schemas(strict=False):
        op.execute(
            insert.bindparams(
                event_type=s.event_type,
                schema_version=s.schema_version,
                is_current=s.current,
                description=s.description,
                json_schema=json.dumps(s.schema),
            )
        )
