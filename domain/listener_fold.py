"""The listeners projection as a pure fold: the implicit-feedback matrix and what each listener
has already heard. Every aggregate here is additive (or a min/max), so the only state needed is
which listeners were forgotten: their rows go, and nothing of theirs is folded afterwards."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from domain.events import DomainEvent, ListenerForgotten, OutcomeKind, OutcomeRecorded
from domain.rewards import RewardDefinition

ZERO = Decimal(0)


@dataclass
class ListenerChanges:
    # (listener, item) -> [weight, outcomes]: the affinity matrix's entry and its support.
    affinity: dict[tuple[str, str], list[Decimal]] = field(default_factory=dict)
    # (listener, item) -> (first heard, last heard, plays)
    history: dict[tuple[str, str], tuple[datetime, datetime, int]] = field(default_factory=dict)
    # Listeners forgotten in this batch: every stored row of theirs is deleted before the above
    # are written, and they are remembered as forgotten.
    forgotten: set[str] = field(default_factory=set)


def heard_kinds(definition: RewardDefinition) -> frozenset[OutcomeKind]:
    """What counts as having heard an item: any stream, however short."""
    return definition.stream_kinds | {OutcomeKind.STREAM_START}


def fold_listeners(
    changes: ListenerChanges,
    events: Iterable[DomainEvent],
    definition: RewardDefinition,
    forgotten: set[str] | None = None,
) -> None:
    """Fold `events` into `changes`. `forgotten` holds the listeners forgotten before these
    events (it gains the ones forgotten among them): an outcome of theirs that arrives after
    their `ListenerForgotten` (from a gateway that had not yet heard of it) is not folded."""
    heard = heard_kinds(definition)
    gone = forgotten if forgotten is not None else set()
    for e in events:
        if isinstance(e, ListenerForgotten):
            gone.add(e.user)
            changes.forgotten.add(e.user)
            for table in (changes.affinity, changes.history):
                for key in [k for k in table if k[0] == e.user]:
                    del table[key]
            continue
        if not isinstance(e, OutcomeRecorded) or e.user in gone:
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
