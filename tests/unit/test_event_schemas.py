"""The published event schemas (docs/events/) are what the generator produces from
domain/payloads.py, and they describe what the gateway really writes, at every version."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from domain import payloads
from domain.events import EVENT_TYPES, JSON, DomainEvent, to_payload
from domain.upcasting import upcast
from gateway.cli.main import main
from gateway.store.schemas import (
    DEFAULT_FOLDER,
    INDEX,
    MissingPayloadSchema,
    differences,
    event_schemas,
    rendered,
    write,
)
from tests.unit.test_events import EXAMPLES

EVENTS = [e for e in EXAMPLES if isinstance(e, DomainEvent)]
SCHEMAS = {(s.event_type, s.schema_version): s.schema for s in event_schemas()}


def validator(event_type: str, version: int) -> Draft202012Validator:
    schema = SCHEMAS[(event_type, version)]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(event_type: str, version: int, payload: JSON) -> list[str]:
    return [e.message for e in validator(event_type, version).iter_errors(payload)]


def test_published_schemas_are_up_to_date() -> None:
    assert differences(DEFAULT_FOLDER) == [], "run `segue schemas write docs/events`"


def test_every_type_and_version_has_a_schema() -> None:
    want = {
        (name, v) for name, cls in EVENT_TYPES.items() for v in range(1, cls.SCHEMA_VERSION + 1)
    }
    assert set(SCHEMAS) == want
    current = {(s.event_type, s.schema_version) for s in event_schemas() if s.current}
    assert current == {(name, cls.SCHEMA_VERSION) for name, cls in EVENT_TYPES.items()}


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_what_the_gateway_writes_matches_the_current_schema(event: DomainEvent) -> None:
    assert errors(event.TYPE, event.SCHEMA_VERSION, to_payload(event)) == []


def test_every_type_has_an_example_checked_against_its_schema() -> None:
    assert {e.TYPE for e in EVENTS} == set(EVENT_TYPES)


def _v3(payload: JSON) -> JSON:
    return {k: v for k, v in payload.items() if k != "experiment"}


def _v2(payload: JSON) -> JSON:
    return {k: v for k, v in payload.items() if k not in ("members", "experiment")}


def _v1(payload: JSON) -> JSON:
    drop = ("members", "request", "policy", "experiment")
    out = {k: v for k, v in payload.items() if k not in drop}
    out["policy_name"] = payload["policy"]["name"]
    out["policy_version"] = payload["policy"]["version"]
    return out


def test_old_versions_describe_what_the_upcasters_accept() -> None:
    served = next(e for e in EVENTS if e.TYPE == "RecommendationServed")
    current = to_payload(served)
    for version, old in ((1, _v1(current)), (2, _v2(current)), (3, _v3(current))):
        assert errors("RecommendationServed", version, old) == []
        # An old payload is not a current one, and the upcast result is.
        assert errors("RecommendationServed", 4, old) != []
        assert errors("RecommendationServed", 4, upcast("RecommendationServed", version, old)) == []


def test_an_experiment_slate_matches_the_current_schema() -> None:
    served = [e for e in EVENTS if e.TYPE == "RecommendationServed"]
    tagged = [to_payload(e) for e in served if to_payload(e)["experiment"] is not None]
    assert tagged
    assert errors("RecommendationServed", 4, tagged[0]) == []
    assert errors("RecommendationServed", 4, {**tagged[0], "experiment": {"name": "x"}}) != []


def test_schemas_refuse_what_the_gateway_never_writes() -> None:
    outcome = to_payload(next(e for e in EVENTS if e.TYPE == "OutcomeRecorded"))
    assert errors("OutcomeRecorded", 1, {**outcome, "extra": 1}) != []
    assert errors("OutcomeRecorded", 1, {**outcome, "kind": "teleport"}) != []
    assert errors("OutcomeRecorded", 1, {**outcome, "event_id": "not-a-uuid"}) != []
    missing = {k: v for k, v in outcome.items() if k != "occurred_at"}
    assert errors("OutcomeRecorded", 1, missing) != []
    slate_entry = {"item_id": "x", "position": "first", "score": 0.0, "propensity": 1.0}
    v4 = to_payload(next(e for e in EVENTS if e.TYPE == "RecommendationServed"))
    assert errors("RecommendationServed", 4, {**v4, "slate": [slate_entry]}) != []


def test_a_version_without_a_payload_class_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = {k: v for k, v in payloads.PAYLOADS.items() if k != ("RecommendationServed", 3)}
    monkeypatch.setattr("gateway.store.schemas.PAYLOADS", trimmed)
    with pytest.raises(MissingPayloadSchema, match="RecommendationServed v3"):
        event_schemas()
    # Migrations still store what they can, rather than fail a deployment over documentation.
    lenient = {(s.event_type, s.schema_version) for s in event_schemas(strict=False)}
    assert lenient == set(trimmed)


def test_write_and_check(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    runner = CliRunner()
    result = runner.invoke(main, ["schemas", "check", str(folder)])
    assert result.exit_code == 1
    assert "out of date" in result.output
    result = runner.invoke(main, ["schemas", "write", str(folder)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(rendered())
    assert differences(folder) == []
    # A stale file is removed, an edited one rewritten, and `check` notices both first.
    (folder / "Gone.v1.json").write_text("{}")
    (folder / INDEX).write_text("{}")
    result = runner.invoke(main, ["schemas", "check", str(folder)])
    assert result.exit_code == 1
    assert "Gone.v1.json" in result.output
    assert INDEX in result.output
    assert sorted(write(folder)) == sorted(["Gone.v1.json", INDEX])
    assert differences(folder) == []
    assert runner.invoke(main, ["schemas", "check", str(folder)]).exit_code == 0
