"""The rewards projection as a pure fold: served slates and outcomes in, reward aggregates out.

`fold(state, changes, events, definition)` walks events in log order. `state` holds what the fold
must remember between events (served slates, per-impression rewards, long-term traces); the
runner loads just the rows a batch needs, so it can be a slice of the whole. `changes` collects
what to write: new keyed rows, and additive deltas keyed by the event's `recorded_at` (so the
aggregates "as of T" are the deltas recorded up to T).

Rules:
- A slate counts once per item as served, per surface, and once per position.
- An outcome naming a recommendation is that recommendation's reward when its item was in the
  slate and it happened within the kind's attribution window after the slate was served (a
  minute of clock skew is tolerated). An attributed outcome counts under the slate's surface,
  any other under `ORGANIC`; an item's outcome counts are the sum over both.
- An impression's reward is the weighted sum of its attributed outcomes; item aggregates keep
  the sum and the sum of squares of impression rewards over served impressions (unrewarded
  impressions are zeros), which is what a Gaussian posterior of the mean needs.
- A long-term trace exists for each (recommendation, item) that led to an attributed outcome of a
  stream kind. Day 0 is the UTC day the slate was served (not the day of whichever stream arrived
  first, which would make the trace depend on arrival order). Day d (1..horizon) is active when
  the listener streamed the item, or any item of the same show, on day start + d. Streams reported
  before the trace existed count too: the result does not depend on the order outcomes arrive in.
- A forgotten listener's days of activity are deleted, and none are recorded for them afterwards
  (their pseudonym can only reappear from a gateway that had not yet heard). Everything keyed by
  recommendation or item (slates, impressions, traces, the aggregates) stays: it is what the
  log still says, and no longer leads to a person.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from domain.events import (
    DomainEvent,
    ItemRetired,
    ItemUpserted,
    ListenerForgotten,
    OutcomeRecorded,
    RecommendationServed,
)
from domain.rewards import RewardDefinition

# Outcomes not attributed to a slate are stored under this surface; totals over every surface
# are summed when read rather than stored twice.
ORGANIC = ""
CLOCK_SKEW = timedelta(minutes=1)
ZERO = Decimal(0)


def day_number(at: datetime) -> int:
    """Days since 0001-01-01 in UTC: the calendar day a listener was active on."""
    return at.astimezone(UTC).date().toordinal()


@dataclass(frozen=True, slots=True)
class Served:
    user: str
    surface: str
    requested_at: datetime
    positions: dict[str, int]


@dataclass(frozen=True, slots=True)
class Trace:
    user: str
    item_id: str
    target: str  # "item:<id>" or "show:<name>": what coming back means for this trace
    start_day: int


TraceKey = tuple[UUID, str]  # (recommendation, item)


@dataclass
class RewardState:
    served: dict[UUID, Served] = field(default_factory=dict)
    impressions: dict[TraceKey, Decimal] = field(default_factory=dict)
    shows: dict[str, str | None] = field(default_factory=dict)
    traces: dict[TraceKey, Trace] = field(default_factory=dict)
    traces_by_target: dict[tuple[str, str], set[TraceKey]] = field(
        default_factory=lambda: defaultdict(set)
    )
    user_days: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    activity: set[tuple[UUID, str, int]] = field(default_factory=set)
    # Listeners forgotten so far, among those the batch names.
    forgotten: set[str] = field(default_factory=set)

    def add_trace(self, key: TraceKey, trace: Trace) -> None:
        self.traces[key] = trace
        self.traces_by_target[(trace.user, trace.target)].add(key)


@dataclass
class RewardChanges:
    # New or replaced keyed rows.
    served: dict[UUID, Served] = field(default_factory=dict)
    impressions: dict[TraceKey, Decimal] = field(default_factory=dict)
    shows: dict[str, str | None] = field(default_factory=dict)
    traces: dict[TraceKey, Trace] = field(default_factory=dict)
    user_days: set[tuple[str, str, int]] = field(default_factory=set)
    activity: set[tuple[UUID, str, int]] = field(default_factory=set)
    # Listeners forgotten in this batch: their stored days are deleted before the above are
    # written, and they are remembered as forgotten.
    forgotten: set[str] = field(default_factory=set)
    # Additive deltas; the last key element is the event's recorded_at.
    # (item, surface, at) -> [served, reward_sum, reward_sq]
    item_rewards: dict[tuple[str, str, datetime], list[Decimal]] = field(
        default_factory=lambda: defaultdict(lambda: [ZERO, ZERO, ZERO])
    )
    # (item, position, at) -> times served there
    positions: dict[tuple[str, int, datetime], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    outcomes: dict[tuple[str, str, str, datetime], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    lt_starts: dict[tuple[str, int, datetime], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    lt_active: dict[tuple[str, int, int, datetime], int] = field(
        default_factory=lambda: defaultdict(int)
    )


def targets_of(item_id: str, show: str | None) -> tuple[str, ...]:
    return (f"item:{item_id}", f"show:{show}") if show else (f"item:{item_id}",)


def trace_target(item_id: str, show: str | None) -> str:
    return f"show:{show}" if show else f"item:{item_id}"


def fold(
    state: RewardState,
    changes: RewardChanges,
    events: Iterable[tuple[datetime, DomainEvent]],
    definition: RewardDefinition,
) -> None:
    """Apply `events` (each with its recorded_at), in order, to `state`, recording `changes`."""
    horizon = definition.horizon_days
    for at, event in events:
        match event:
            case RecommendationServed():
                served = Served(
                    event.user,
                    event.surface,
                    event.requested_at,
                    {s.item_id: s.position for s in event.slate},
                )
                state.served[event.recommendation_id] = served
                changes.served[event.recommendation_id] = served
                for s in event.slate:
                    changes.item_rewards[(s.item_id, event.surface, at)][0] += 1
                    changes.positions[(s.item_id, s.position, at)] += 1
            case ItemUpserted():
                show = event.attributes.get("show")
                value = show if isinstance(show, str) and show else None
                if state.shows.get(event.item_id) != value or event.item_id not in state.shows:
                    state.shows[event.item_id] = value
                    changes.shows[event.item_id] = value
            case ItemRetired():
                pass  # retired items keep their history
            case OutcomeRecorded():
                _outcome(state, changes, at, event, definition, horizon)
            case ListenerForgotten():
                _forget(state, changes, event.user)


def _forget(state: RewardState, changes: RewardChanges, user: str) -> None:
    state.forgotten.add(user)
    changes.forgotten.add(user)
    for key in [k for k in state.user_days if k[0] == user]:
        del state.user_days[key]
    changes.user_days = {d for d in changes.user_days if d[0] != user}


def _outcome(
    state: RewardState,
    changes: RewardChanges,
    at: datetime,
    o: OutcomeRecorded,
    definition: RewardDefinition,
    horizon: int,
) -> None:
    kind = o.kind.value
    attributed: Served | None = None
    if o.recommendation_id is not None:
        served = state.served.get(o.recommendation_id)
        if (
            served is not None
            and o.item_id in served.positions
            and served.requested_at - CLOCK_SKEW
            <= o.occurred_at
            <= served.requested_at + definition.window(o.kind)
        ):
            attributed = served
    day = day_number(o.occurred_at)
    is_stream = o.kind in definition.stream_kinds
    show = state.shows.get(o.item_id)

    changes.outcomes[
        (o.item_id, ORGANIC if attributed is None else attributed.surface, kind, at)
    ] += 1
    if attributed is not None:
        assert o.recommendation_id is not None
        key = (o.recommendation_id, o.item_id)
        w = definition.weight(o.kind, o.value)
        if w:
            before = state.impressions.get(key, ZERO)
            after = before + w
            state.impressions[key] = after
            changes.impressions[key] = after
            agg = changes.item_rewards[(o.item_id, attributed.surface, at)]
            agg[1] += w
            agg[2] += after * after - before * before
        if is_stream and key not in state.traces:
            # The listener who streamed, not the slate's (a blend serves several listeners).
            start = day_number(attributed.requested_at)
            trace = Trace(o.user, o.item_id, trace_target(o.item_id, show), start)
            state.add_trace(key, trace)
            changes.traces[key] = trace
            changes.lt_starts[(o.item_id, start, at)] += 1
            # Streams reported before the trace existed still count as coming back.
            for d in state.user_days.get((trace.user, trace.target), ()):
                _mark(state, changes, key, trace, d, at, horizon)

    if is_stream and o.user not in state.forgotten:
        for target in targets_of(o.item_id, show):
            days = state.user_days[(o.user, target)]
            if day in days:
                continue
            days.add(day)
            changes.user_days.add((o.user, target, day))
            for key in state.traces_by_target.get((o.user, target), ()):
                _mark(state, changes, key, state.traces[key], day, at, horizon)


def _mark(
    state: RewardState,
    changes: RewardChanges,
    key: TraceKey,
    trace: Trace,
    day: int,
    at: datetime,
    horizon: int,
) -> None:
    offset = day - trace.start_day
    if not 1 <= offset <= horizon:
        return
    mark = (key[0], key[1], offset)
    if mark in state.activity:
        return
    state.activity.add(mark)
    changes.activity.add(mark)
    changes.lt_active[(trace.item_id, trace.start_day, offset, at)] += 1


@dataclass(frozen=True, slots=True)
class Needs:
    """The keyed rows a batch can touch: what the runner must load before folding it."""

    recommendations: frozenset[UUID]
    impressions: frozenset[TraceKey]
    items: frozenset[str]
    listeners: frozenset[str] = frozenset()  # whose being forgotten matters to the batch


def needs(events: Iterable[DomainEvent]) -> Needs:
    recs: set[UUID] = set()
    impressions: set[TraceKey] = set()
    items: set[str] = set()
    listeners: set[str] = set()
    for e in events:
        if isinstance(e, OutcomeRecorded):
            items.add(e.item_id)
            listeners.add(e.user)
            if e.recommendation_id is not None:
                recs.add(e.recommendation_id)
                impressions.add((e.recommendation_id, e.item_id))
        elif isinstance(e, ItemUpserted):
            items.add(e.item_id)
    return Needs(frozenset(recs), frozenset(impressions), frozenset(items), frozenset(listeners))


def listener_targets(
    events: Iterable[DomainEvent], shows: dict[str, str | None], definition: RewardDefinition
) -> set[tuple[str, str]]:
    """(listener, target) pairs whose traces and active days a batch can touch, given the shows
    known before it; shows set inside the batch are included too."""
    events = list(events)
    batch_shows: dict[str, set[str | None]] = defaultdict(set)
    for e in events:
        if isinstance(e, ItemUpserted):
            show = e.attributes.get("show")
            batch_shows[e.item_id].add(show if isinstance(show, str) and show else None)
    pairs: set[tuple[str, str]] = set()
    for e in events:
        if isinstance(e, OutcomeRecorded) and e.kind in definition.stream_kinds:
            for show in {shows.get(e.item_id), *batch_shows.get(e.item_id, ())}:
                pairs.update((e.user, t) for t in targets_of(e.item_id, show))
    return pairs
