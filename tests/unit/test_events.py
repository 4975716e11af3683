"""Domain events round-trip through their payloads, and old payloads upcast to the current shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from domain.events import (
    EVENT_TYPES,
    DomainEvent,
    ExperimentAssigned,
    ExperimentShipped,
    ExperimentStarted,
    ExperimentStopped,
    ItemRetired,
    ItemUpserted,
    ListenerForgotten,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationDeferred,
    RecommendationServed,
    SlateEntry,
    UnknownEventType,
    from_current_payload,
    to_payload,
)
from domain.upcasting import UnsupportedSchemaVersion, decode, upcast

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REC = uuid.UUID("0d9c1b0e-7d4a-4d6f-9a55-5a7a3f1c2b10")

EXAMPLES = [
    ItemUpserted("tr-1", "track", {"artist": "a", "tags": ["x", "y"]}, (0.5, -1.0)),
    ItemUpserted("ep-1", "episode", {}, None),
    ItemRetired("tr-1"),
    RecommendationServed(
        recommendation_id=REC,
        user="p-1",
        surface="home",
        context={"device": "phone"},
        slate=(SlateEntry("tr-1", 0, 0.9, 0.25), SlateEntry("tr-2", 1, 0.1, 0.25)),
        policy_name="uniform",
        policy_version="1",
        index_version="none",
        requested_at=NOW,
        candidates=("tr-1", "tr-2"),
        exclude=("tr-3",),
        kinds=("track",),
        n=2,
    ),
    OutcomeRecorded(uuid.uuid4(), "p-1", "tr-1", OutcomeKind.STREAM_30S, NOW, REC, 31000.0),
    OutcomeRecorded(uuid.uuid4(), "p-1", "tr-1", OutcomeKind.SKIP, NOW),
    OutcomeRecorded(uuid.uuid4(), "p-1", "art-1", OutcomeKind.REWARD, NOW, REC, -0.5),
    ListenerForgotten("p-1"),
    RecommendationDeferred(
        RecommendationServed(
            recommendation_id=REC,
            user="p-1",
            surface="personalizer",
            context={"contextFeatures": [{"time": "morning"}]},
            slate=(SlateEntry("art-1", 0, 0.5, 0.95),),
            policy_name="segue-eps-greedy",
            policy_version="2",
            index_version="none",
            requested_at=NOW,
            candidates=("art-1",),
            kinds=("action",),
            n=1,
        )
    ),
    RecommendationServed(
        recommendation_id=REC,
        user="p-1",
        surface="home",
        context={},
        slate=(SlateEntry("tr-1", 0, 0.9, 0.97),),
        policy_name="segue-eps-greedy",
        policy_version="2+abcd1234",
        index_version="none",
        requested_at=NOW,
        n=1,
        experiment="eps-test",
        arm="treatment",
    ),
    ExperimentStarted("eps-test", {"name": "eps-test", "arms": []}, NOW),
    ExperimentStopped("eps-test", "guardrail breached", NOW),
    ExperimentShipped("eps-test", "treatment", NOW),
    ExperimentAssigned("eps-test", "p-1", "treatment", NOW),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_payload_round_trip(event: object) -> None:
    assert isinstance(event, DomainEvent)
    payload = to_payload(event)
    assert from_current_payload(event.TYPE, payload) == event
    assert decode(event.TYPE, event.SCHEMA_VERSION, payload) == event


def test_every_type_is_registered_with_a_version() -> None:
    assert set(EVENT_TYPES) == {
        "ItemUpserted",
        "ItemRetired",
        "RecommendationServed",
        "RecommendationDeferred",
        "OutcomeRecorded",
        "ListenerForgotten",
        "ExperimentStarted",
        "ExperimentStopped",
        "ExperimentShipped",
        "ExperimentAssigned",
    }
    assert all(cls.SCHEMA_VERSION >= 1 for cls in EVENT_TYPES.values())


def test_recommendation_served_v1_payload_upcasts() -> None:
    v1 = {
        "recommendation_id": str(REC),
        "user": "p-1",
        "surface": "home",
        "context": {},
        "slate": [
            {"item_id": "tr-1", "position": 0, "score": 0.0, "propensity": 0.5},
            {"item_id": "tr-2", "position": 1, "score": 0.0, "propensity": 0.5},
        ],
        "policy_name": "uniform",
        "policy_version": "1",
        "index_version": "none",
        "requested_at": NOW.isoformat(),
    }
    event = decode("RecommendationServed", 1, v1)
    assert isinstance(event, RecommendationServed)
    assert (event.policy_name, event.policy_version) == ("uniform", "1")
    assert (event.n, event.candidates, event.exclude) == (2, None, ())
    assert [s.item_id for s in event.slate] == ["tr-1", "tr-2"]
    # The upcast payload is exactly what the current version writes for the same event.
    assert upcast("RecommendationServed", 1, v1) == to_payload(event)


def test_newer_schema_than_code_is_refused() -> None:
    with pytest.raises(UnsupportedSchemaVersion):
        upcast("ItemRetired", 2, {"item_id": "x"})


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(UnknownEventType):
        from_current_payload("Teleported", {})


def test_events_are_immutable() -> None:
    event = ItemRetired("x")
    with pytest.raises(AttributeError):
        event.item_id = "y"  # type: ignore[misc]


def test_outcome_stream_is_per_listener() -> None:
    a = OutcomeRecorded(uuid.uuid4(), "p-1", "tr-1", OutcomeKind.SAVE, NOW)
    b = OutcomeRecorded(uuid.uuid4(), "p-1", "tr-9", OutcomeKind.SKIP, NOW)
    assert a.stream_id() == b.stream_id() == "listener-p-1"


def test_recommendation_served_v2_payload_upcasts_to_no_members() -> None:
    event = EXAMPLES[3]
    assert isinstance(event, RecommendationServed)
    v2 = {k: v for k, v in to_payload(event).items() if k != "members"}
    assert decode("RecommendationServed", 2, v2) == event
    assert upcast("RecommendationServed", 2, v2)["members"] == []


def test_recommendation_served_v3_payload_upcasts_to_no_experiment() -> None:
    event = EXAMPLES[3]
    assert isinstance(event, RecommendationServed)
    v3 = {k: v for k, v in to_payload(event).items() if k != "experiment"}
    assert decode("RecommendationServed", 3, v3) == event
    assert upcast("RecommendationServed", 3, v3)["experiment"] is None


def test_experiment_lifecycle_shares_one_stream_and_assignments_follow_the_listener() -> None:
    started = ExperimentStarted("a", {}, NOW)
    assert started.stream_id() == ExperimentStopped("b", "", NOW).stream_id() == "experiments"
    assert ExperimentShipped("a", "x", NOW).stream_id() == "experiments"
    assert (
        ExperimentAssigned("a", "p-1", "x", NOW).stream_id() == ListenerForgotten("p-1").stream_id()
    )


def test_listener_forgotten_carries_the_pseudonym_only() -> None:
    event = ListenerForgotten("6f1c0b7e-58a2-4f0e-9d1a-2b3c4d5e6f70")
    assert to_payload(event) == {"user": "6f1c0b7e-58a2-4f0e-9d1a-2b3c4d5e6f70"}
    # Same stream as the listener's outcomes, so it follows them in stream order.
    assert (
        event.stream_id()
        == OutcomeRecorded(uuid.uuid4(), event.user, "tr-1", OutcomeKind.SAVE, NOW).stream_id()
    )
    assert decode("ListenerForgotten", 1, {"user": event.user}) == event
    with pytest.raises(UnsupportedSchemaVersion):
        upcast("ListenerForgotten", 2, {"user": event.user})
