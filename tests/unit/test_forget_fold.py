"""Forgetting a listener in the pure folds: their own rows go, nothing of theirs is folded
afterwards, item aggregates keep what they counted, and any split into batches (each starting
from only the stored state a runner would load) ends the same as one batch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.events import (
    DomainEvent,
    ListenerForgotten,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
)
from domain.listener_fold import ListenerChanges, fold_listeners
from domain.reward_fold import RewardChanges, RewardState, fold
from domain.rewards import DEFAULT

K = OutcomeKind
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
AT = datetime(2026, 6, 1, tzinfo=UTC)
REC = uuid.UUID(int=1)


def outcome(user: str, item: str, kind: OutcomeKind, days: int = 0) -> OutcomeRecorded:
    return OutcomeRecorded(uuid.uuid4(), user, item, kind, T0 + timedelta(days=days), REC)


SLATE = RecommendationServed(
    recommendation_id=REC,
    user="p",
    surface="home",
    context={},
    slate=(SlateEntry("a", 0, 1.0, 0.5), SlateEntry("b", 1, 0.5, 0.5)),
    policy_name="test",
    policy_version="1",
    index_version="none",
    requested_at=T0,
    members=("p", "q"),
)
EVENTS: list[DomainEvent] = [
    SLATE,
    outcome("p", "a", K.STREAM_30S),
    outcome("q", "b", K.STREAM_30S),
    outcome("p", "a", K.COMPLETE, days=2),
    ListenerForgotten("p"),
    outcome("p", "b", K.STREAM_30S, days=3),  # from a gateway that had not yet heard
    outcome("q", "b", K.COMPLETE, days=3),
]


Affinity = dict[tuple[str, str], tuple[Decimal, Decimal]]


def listeners(batches: list[list[DomainEvent]]) -> tuple[Affinity, set[str]]:
    """The stored tables after applying `batches` as the runner does: deletes first, then adds."""
    affinity: Affinity = {}
    forgotten: set[str] = set()
    for batch in batches:
        changes = ListenerChanges()
        known = set(forgotten)
        fold_listeners(changes, batch, DEFAULT, known)
        for gone in changes.forgotten:
            affinity = {k: v for k, v in affinity.items() if k[0] != gone}
        for key, (weight, n) in changes.affinity.items():
            before = affinity.get(key, (Decimal(0), Decimal(0)))
            affinity[key] = (before[0] + weight, before[1] + n)
        forgotten |= changes.forgotten
    return affinity, forgotten


@pytest.mark.parametrize("cut", range(len(EVENTS) + 1))
def test_listeners_fold_drops_the_forgotten_in_any_batching(cut: int) -> None:
    whole, gone = listeners([EVENTS])
    assert gone == {"p"}
    assert {k[0] for k in whole} == {"q"}
    assert listeners([EVENTS[:cut], EVENTS[cut:]]) == (whole, gone)
    assert listeners([[e] for e in EVENTS]) == (whole, gone)


def test_without_forgetting_the_listener_keeps_rows() -> None:
    kept, _ = listeners([[e for e in EVENTS if not isinstance(e, ListenerForgotten)]])
    assert {k[0] for k in kept} == {"p", "q"}


def rewards(events: list[DomainEvent]) -> RewardChanges:
    changes = RewardChanges()
    fold(RewardState(), changes, [(AT, e) for e in events], DEFAULT)
    return changes


def test_rewards_fold_forgets_days_but_keeps_item_aggregates() -> None:
    before = rewards(EVENTS[:4])
    after = rewards(EVENTS[:5])
    assert {d[0] for d in before.user_days} == {"p", "q"}
    assert {d[0] for d in after.user_days} == {"q"}
    assert after.forgotten == {"p"}
    # What was counted stays counted: slates, impressions, traces, activity, aggregates.
    for name in ("served", "impressions", "traces", "activity", "item_rewards", "lt_active"):
        assert getattr(after, name) == getattr(before, name), name
    # A late stream of theirs still counts for the item, but records no day of theirs.
    late = rewards(EVENTS[:6])
    assert {d[0] for d in late.user_days} == {"q"}
    assert sum(n for k, n in late.outcomes.items() if k[0] == "b") == 2


def test_rewards_fold_remembers_the_forgotten_across_batches() -> None:
    state = RewardState()
    first = RewardChanges()
    fold(state, first, [(AT, e) for e in EVENTS[:5]], DEFAULT)
    # The next batch starts from what the runner loads: who of its listeners is forgotten.
    second = RewardChanges()
    fold(RewardState(forgotten={"p"}), second, [(AT, e) for e in EVENTS[5:]], DEFAULT)
    whole = rewards(EVENTS)
    assert first.user_days | second.user_days == whole.user_days
