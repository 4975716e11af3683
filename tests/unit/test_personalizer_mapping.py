"""The pure parts of the Personalizer mapping: features as content vectors, a `reward` outcome's
worth, and which action each slot of a multi-slot rank was given."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from domain.events import OutcomeKind, RecommendationServed, SlateEntry
from domain.features import hashed_vector, leaves
from domain.rewards import DEFAULT
from gateway.serving.personalizer import SINGLE, recommendation_id, slot_actions


def test_features_flatten_to_named_leaves() -> None:
    got = sorted(leaves([{"genre": "jazz", "len": {"min": 3.5}, "live": True, "tags": ["a", "b"]}]))
    assert got == [
        ("genre=jazz", 1.0),
        ("len.min", 3.5),
        ("live=true", 1.0),
        ("tags=a", 1.0),
        ("tags=b", 1.0),
    ]
    assert list(leaves([{"gone": None, "inf": math.inf}])) == []


def test_hashed_vectors_are_stable_unit_vectors() -> None:
    a = hashed_vector([{"topic": "food", "length": 450}])
    assert a is not None
    assert len(a) == 64
    assert math.isclose(sum(v * v for v in a), 1.0)
    assert hashed_vector([{"length": 450, "topic": "food"}]) == a  # key order does not matter
    b = hashed_vector([{"topic": "sports", "length": 450}])
    assert b is not None
    assert b != a
    assert hashed_vector([]) is None
    assert hashed_vector([{}]) is None


def test_a_reward_is_worth_its_value() -> None:
    assert DEFAULT.weight(OutcomeKind.REWARD, 0.5) == Decimal("0.5")
    assert DEFAULT.weight(OutcomeKind.REWARD, -1.0) == Decimal(-1)
    assert DEFAULT.weight(OutcomeKind.REWARD, 0.1) == Decimal("0.1")  # exact, not the float's
    assert DEFAULT.weight(OutcomeKind.REWARD, None) == 0
    assert DEFAULT.window(OutcomeKind.REWARD).days == 2
    assert DEFAULT.version == "music-podcasts-2"


def served(context: dict[str, object], items: list[str]) -> RecommendationServed:
    return RecommendationServed(
        recommendation_id=recommendation_id("e"),
        user="p",
        surface="personalizer",
        context=context,
        slate=tuple(SlateEntry(i, n, 0.0, 0.5) for n, i in enumerate(items)),
        policy_name="x",
        policy_version="1",
        index_version="none",
        requested_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_slots_take_the_best_action_they_allow_in_order() -> None:
    assert slot_actions(served({}, ["b", "a"])) == {SINGLE: "b"}
    slots = [
        {"id": "hero", "baselineAction": "a"},
        {"id": "side", "baselineAction": "b", "excludedActions": ["c"]},
        {"id": "none", "baselineAction": "a", "excludedActions": ["a", "b", "d"]},
    ]
    assert slot_actions(served({"slots": slots}, ["c", "d", "b", "a"])) == {
        "hero": "c",
        "side": "d",
        "none": None,
    }


def test_event_ids_name_the_same_recommendation_for_every_key() -> None:
    assert recommendation_id("ev-1") == recommendation_id("ev-1")
    assert recommendation_id("ev-1") != recommendation_id("ev-2")
    assert isinstance(recommendation_id("ev-1"), uuid.UUID)
