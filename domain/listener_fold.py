"""The listeners projection as a pure fold: the implicit-feedback matrix, what each listener
has already heard, and what they did last, in order. Every aggregate here is additive (or a
min/max), so the only state needed is which listeners were forgotten: their rows go, and nothing
of theirs is folded afterwards.

`recent` is per (listener, item): when the listener last did something with it that says
anything (a stream of any length, or an outcome with a weight), which kinds of outcome they
recorded at that instant, and those outcomes' summed weight: its sign says whether what they
did last was for the item or against it (a quick skip after many plays is against). The store
keeps each listener's latest `RECENT_KEPT` of them, ordered by that time (ties by item id),
which is the order `domain.recency` weighs them in. Keeping only the latest instant (not every
kind since the item entered the list) makes the row a function of the listener's outcomes,
whatever batches they came in: an item pushed out and played again later gets the same row as
if it had never left."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from domain.events import DomainEvent, ListenerForgotten, OutcomeKind, OutcomeRecorded
from domain.rewards import RewardDefinition

ZERO = Decimal(0)
# How many recent items the store keeps per listener: the recency vector reads at most these.
RECENT_KEPT = 50


Recent = tuple[datetime, tuple[str, ...], Decimal]


@dataclass
class ListenerChanges:
    # (listener, item) -> [weight, outcomes]: the affinity matrix's entry and its support.
    affinity: dict[tuple[str, str], list[Decimal]] = field(default_factory=dict)
    # (listener, item) -> (first heard, last heard, plays)
    history: dict[tuple[str, str], tuple[datetime, datetime, int]] = field(default_factory=dict)
    # (listener, item) -> (last time, the kinds recorded at it (sorted), their summed weight)
    recent: dict[tuple[str, str], Recent] = field(default_factory=dict)
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
            for table in (changes.affinity, changes.history, changes.recent):
                for key in [k for k in table if k[0] == e.user]:
                    del table[key]
            continue
        if not isinstance(e, OutcomeRecorded) or e.user in gone:
            continue
        key = (e.user, e.item_id)
        entry = changes.affinity.setdefault(key, [ZERO, ZERO])
        weight = definition.weight(e.kind, e.value)
        entry[0] += weight
        entry[1] += 1
        if weight != ZERO or e.kind in heard:
            # An impression alone says nothing of taste; ten of them per slate would push what
            # was played out of the list.
            changes.recent[key] = latest(
                changes.recent.get(key), e.occurred_at, e.kind.value, weight
            )
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


def latest(before: Recent | None, at: datetime, kind: str, weight: Decimal) -> Recent:
    """A recent row after one more outcome: the later instant wins; at one instant the kinds
    join and the weights add (every outcome is folded once: the log has no duplicates)."""
    if before is None or at > before[0]:
        return (at, (kind,), weight)
    if at < before[0]:
        return before
    kinds = before[1] if kind in before[1] else tuple(sorted((*before[1], kind)))
    return (at, kinds, before[2] + weight)
