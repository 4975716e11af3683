"""The listeners projection as a pure fold: the implicit-feedback matrix and what each listener
has already heard. Every aggregate here is additive (or a min/max), so no state is needed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from domain.events import DomainEvent, OutcomeKind, OutcomeRecorded
from domain.rewards import RewardDefinition

ZERO = Decimal(0)


@dataclass
class ListenerChanges:
    # (listener, item) -> [weight, outcomes]: the affinity matrix's entry and its support.
    affinity: dict[tuple[str, str], list[Decimal]] = field(default_factory=dict)
    # (listener, item) -> (first heard, last heard, plays)
    history: dict[tuple[str, str], tuple[datetime, datetime, int]] = field(default_factory=dict)


def heard_kinds(definition: RewardDefinition) -> frozenset[OutcomeKind]:
    """What counts as having heard an item: any stream, however short."""
    return definition.stream_kinds | {OutcomeKind.STREAM_START}


def fold_listeners(
    changes: ListenerChanges, events: Iterable[DomainEvent], definition: RewardDefinition
) -> None:
    heard = heard_kinds(definition)
    for e in events:
        if not isinstance(e, OutcomeRecorded):
            continue
        key = (e.user, e.item_id)
        entry = changes.affinity.setdefault(key, [ZERO, ZERO])
        entry[0] += definition.weight(e.kind, e.value)
        entry[1] += 1
        if e.kind in heard:
            before = changes.history.get(key)
            if before is None:
                changes.history[key] = (e.occurred_at, e.occurred_at, 1)
            else:
                changes.history[key] = (
                    min(before[0], e.occurred_at),
                    max(before[1], e.occurred_at),
                    before[2] + 1,
                )
