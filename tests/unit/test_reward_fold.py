"""The pure folds behind the rewards and listeners projections, and reward definitions as data.

The rules tested are the ones in `domain.reward_fold`'s docstring. The incremental tests fold a
sequence in batches the way the projector runner does: each batch starts from a fresh state
holding only the stored rows that `needs` and `listener_targets` say it can touch, and what the
batches write must add up to what one batch over the whole sequence writes.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.events import (
    DomainEvent,
    ItemRetired,
    ItemUpserted,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
)
from domain.listener_fold import ListenerChanges, fold_listeners, heard_kinds
from domain.reward_fold import (
    ORGANIC,
    RewardChanges,
    RewardState,
    day_number,
    fold,
    listener_targets,
    needs,
)
from domain.rewards import DEFAULT, RewardDefinition

K = OutcomeKind
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # noon: a few hours either way is the same day
DAY0 = day_number(T0)
RECORDED = datetime(2026, 6, 1, tzinfo=UTC)
_ids = itertools.count()


def rid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def served(
    rec: uuid.UUID,
    items: Sequence[str],
    *,
    surface: str = "home",
    user: str = "u1",
    at: datetime = T0,
) -> RecommendationServed:
    slate = tuple(SlateEntry(item, p, 1.0, 1.0 / len(items)) for p, item in enumerate(items))
    return RecommendationServed(rec, user, surface, {}, slate, "test", "1", "v0", at)


def outcome(
    kind: OutcomeKind,
    item: str,
    at: datetime,
    rec: uuid.UUID | None = None,
    *,
    user: str = "u1",
    value: float | None = None,
) -> OutcomeRecorded:
    return OutcomeRecorded(uuid.UUID(int=1 << 100 | next(_ids)), user, item, kind, at, rec, value)


def show(item: str, name: str | None) -> ItemUpserted:
    return ItemUpserted(item, "episode", {"show": name} if name else {})


def recorded(events: Iterable[DomainEvent], start: int = 0) -> list[tuple[datetime, DomainEvent]]:
    """Events as the log hands them over: each with its own, increasing recorded_at."""
    return [(RECORDED + timedelta(seconds=start + i), e) for i, e in enumerate(events)]


def run(
    events: Iterable[DomainEvent], definition: RewardDefinition = DEFAULT
) -> tuple[RewardState, RewardChanges]:
    state, changes = RewardState(), RewardChanges()
    fold(state, changes, recorded(events), definition)
    return state, changes


# What the projection answers "as of now": the deltas summed over recorded_at.
def rewards(c: RewardChanges) -> dict[tuple[str, str], tuple[int, Decimal, Decimal]]:
    out: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 3)
    for (item, surface, _), delta in c.item_rewards.items():
        out[(item, surface)] = [a + b for a, b in zip(out[(item, surface)], delta, strict=True)]
    return {k: (int(v[0]), v[1], v[2]) for k, v in out.items()}


def totals(c: RewardChanges) -> dict[str, tuple[int, Decimal, Decimal]]:
    """Per item, summed over surfaces: what the reader reports as the item's total."""
    out: dict[str, tuple[int, Decimal, Decimal]] = {}
    for (item, _), (n, total, squares) in rewards(c).items():
        before = out.get(item, (0, Decimal(0), Decimal(0)))
        out[item] = (before[0] + n, before[1] + total, before[2] + squares)
    return out


def agg(served: int, total: float | str, squares: float | str) -> tuple[int, Decimal, Decimal]:
    return served, Decimal(str(total)), Decimal(str(squares))


def summed(deltas: dict[Any, int]) -> dict[Any, int]:
    out: dict[Any, int] = defaultdict(int)
    for key, n in deltas.items():
        out[key[:-1]] += n
    return {k: n for k, n in out.items() if n}


# --- served ----------------------------------------------------------------------------------


def test_a_slate_counts_each_item_per_surface_and_in_total_with_positions() -> None:
    _, c = run([served(rid(1), ["a", "b"], surface="home"), served(rid(2), ["b"], surface="music")])
    assert rewards(c) == {
        ("a", "home"): agg(1, 0, 0),
        ("b", "home"): agg(1, 0, 0),
        ("b", "music"): agg(1, 0, 0),
    }
    assert totals(c)["b"] == agg(2, 0, 0)
    assert summed(c.positions) == {("a", 0): 1, ("b", 1): 1, ("b", 0): 1}
    assert set(c.served) == {rid(1), rid(2)}
    assert c.served[rid(1)].positions == {"a": 0, "b": 1}


# --- attribution -----------------------------------------------------------------------------


def test_an_outcome_within_its_window_is_the_recommendations_reward() -> None:
    # stream_30s is attributed for 6 hours: the boundary itself still counts.
    _, c = run(
        [
            served(rid(1), ["a"]),
            outcome(K.STREAM_30S, "a", T0 + timedelta(hours=6), rid(1)),
        ]
    )
    assert summed(c.outcomes) == {("a", "home", "stream_30s"): 1}
    assert rewards(c)[("a", "home")] == agg(1, 1, 1)
    assert totals(c)["a"] == agg(1, 1, 1)
    assert c.impressions == {(rid(1), "a"): Decimal(1)}


@pytest.mark.parametrize(
    ("why", "event"),
    [
        (
            "after the window",
            outcome(K.STREAM_30S, "a", T0 + timedelta(hours=6, seconds=1), rid(1)),
        ),
        ("item not in the slate", outcome(K.STREAM_30S, "z", T0, rid(1))),
        ("unknown recommendation", outcome(K.STREAM_30S, "a", T0, rid(99))),
        ("no recommendation", outcome(K.STREAM_30S, "a", T0)),
        ("too early for the skew", outcome(K.STREAM_30S, "a", T0 - timedelta(seconds=61), rid(1))),
    ],
)
def test_an_unattributed_outcome_counts_only_as_organic(why: str, event: OutcomeRecorded) -> None:
    _state, c = run([served(rid(1), ["a"]), event])
    assert summed(c.outcomes) == {(event.item_id, ORGANIC, "stream_30s"): 1}, why
    assert all(r[1] == 0 and r[2] == 0 for r in rewards(c).values())
    assert not c.impressions
    assert not c.traces
    assert not c.lt_starts
    # It is still a stream: it counts as the listener coming back on that day.
    assert (event.user, f"item:{event.item_id}", day_number(event.occurred_at)) in c.user_days


def test_a_minute_of_clock_skew_is_tolerated() -> None:
    _, c = run(
        [
            served(rid(1), ["a"]),
            outcome(K.CLICK, "a", T0 - timedelta(seconds=60), rid(1)),
        ]
    )
    assert summed(c.outcomes)[("a", "home", "click")] == 1
    assert rewards(c)[("a", "home")] == agg(1, "0.1", "0.01")


def test_windows_are_per_kind() -> None:
    # Five hours later: too late for a click (1 h), in time for a stream (6 h) and a save (7 d).
    later = T0 + timedelta(hours=5)
    _, c = run(
        [
            served(rid(1), ["a"]),
            outcome(K.CLICK, "a", later, rid(1)),
            outcome(K.STREAM_30S, "a", later, rid(1)),
            outcome(K.SAVE, "a", T0 + timedelta(days=6), rid(1)),
        ]
    )
    attributed = {k[2] for k in summed(c.outcomes) if k[1] == "home"}
    assert attributed == {"stream_30s", "save"}
    assert rewards(c)[("a", "home")][1] == 3


# --- skips -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reward"),
    [(None, -0.5), (0, -0.5), (29_999, -0.5), (30_000, 0)],
)
def test_a_skip_counts_against_only_below_the_threshold(value: float | None, reward: float) -> None:
    _, c = run([served(rid(1), ["a"]), outcome(K.SKIP, "a", T0, rid(1), value=value)])
    assert summed(c.outcomes)[("a", "home", "skip")] == 1  # counted either way
    assert rewards(c)[("a", "home")] == agg(1, reward, reward * reward)


# --- reward sums -----------------------------------------------------------------------------


def test_sum_of_squares_is_over_impression_rewards() -> None:
    _, c = run(
        [
            served(rid(1), ["a", "b"]),
            served(rid(2), ["a"], surface="music"),
            # One impression with two outcomes: its reward is 1 + 2, squared once.
            outcome(K.STREAM_30S, "a", T0 + timedelta(minutes=1), rid(1)),
            outcome(K.SAVE, "a", T0 + timedelta(minutes=2), rid(1)),
            # Another impression of the same item on another surface.
            outcome(K.SKIP, "a", T0 + timedelta(minutes=3), rid(2), value=1000),
        ]
    )
    r = rewards(c)
    assert r[("a", "home")] == agg(1, 3, 9)
    assert r[("a", "music")] == agg(1, "-0.5", "0.25")
    assert totals(c)["a"] == agg(2, "2.5", "9.25")
    assert totals(c)["b"] == agg(1, 0, 0)  # unrewarded impressions are zeros
    assert c.impressions == {(rid(1), "a"): 3, (rid(2), "a"): Decimal("-0.5")}


def test_a_reward_that_cancels_out_leaves_no_square() -> None:
    # +1 then -0.5 then -0.5: the impression ends at zero, and so does its square.
    _, c = run(
        [
            served(rid(1), ["a"]),
            outcome(K.STREAM_30S, "a", T0, rid(1)),
            outcome(K.SKIP, "a", T0, rid(1)),
            outcome(K.SKIP, "a", T0, rid(1)),
        ]
    )
    assert totals(c)["a"] == agg(1, 0, 0)


# --- long-term traces ------------------------------------------------------------------------


def at_day(d: int, hour: int = 12) -> datetime:
    return T0 + timedelta(days=d, hours=hour - 12)


def test_an_attributed_stream_starts_one_trace() -> None:
    state, c = run(
        [
            served(rid(1), ["a", "b"]),
            outcome(K.CLICK, "a", T0, rid(1)),  # not a stream kind
            outcome(K.STREAM_START, "b", T0, rid(1)),  # nor is a start
            outcome(K.STREAM_30S, "a", T0, rid(1)),
            outcome(K.COMPLETE, "a", T0 + timedelta(minutes=30), rid(1)),  # the same trace
        ]
    )
    assert summed(c.lt_starts) == {("a", DAY0): 1}
    assert set(c.traces) == {(rid(1), "a")}
    trace = c.traces[(rid(1), "a")]
    assert (trace.user, trace.target, trace.start_day) == ("u1", "item:a", DAY0)
    assert state.traces == c.traces


def test_activity_counts_on_days_one_to_the_horizon_only() -> None:
    definition = RewardDefinition("short", DEFAULT.weights, DEFAULT.windows, horizon_days=5)
    _, c = run(
        [
            served(rid(1), ["a"]),
            outcome(K.STREAM_30S, "a", T0, rid(1)),
            *(outcome(K.STREAM_30S, "a", at_day(d)) for d in (0, 1, 3, 5, 6, -1)),
        ],
        definition,
    )
    assert summed(c.lt_active) == {("a", DAY0, 1): 1, ("a", DAY0, 3): 1, ("a", DAY0, 5): 1}
    assert c.activity == {(rid(1), "a", 1), (rid(1), "a", 3), (rid(1), "a", 5)}


def test_a_stream_of_the_same_show_counts_as_coming_back() -> None:
    _, c = run(
        [
            show("ep1", "S"),
            show("ep2", "S"),
            show("ep3", "other"),
            show("tr", None),
            served(rid(1), ["ep1"]),
            outcome(K.STREAM_30S, "ep1", T0, rid(1)),
            outcome(K.COMPLETE, "ep2", at_day(2)),  # same show
            outcome(K.STREAM_30S, "ep3", at_day(3)),  # another show
            outcome(K.STREAM_30S, "tr", at_day(4)),  # no show
            outcome(K.STREAM_START, "ep2", at_day(5)),  # not a stream kind
        ]
    )
    assert c.traces[(rid(1), "ep1")].target == "show:S"
    assert summed(c.lt_active) == {("ep1", DAY0, 2): 1}


def test_only_the_listener_who_streamed_comes_back() -> None:
    # A blend serves one slate to several listeners: the trace is the streaming listener's.
    _, c = run(
        [
            served(rid(1), ["a"], user="group"),
            outcome(K.STREAM_30S, "a", T0, rid(1), user="u2"),
            outcome(K.STREAM_30S, "a", at_day(1), user="u1"),
            outcome(K.STREAM_30S, "a", at_day(2), user="u2"),
        ]
    )
    assert c.traces[(rid(1), "a")].user == "u2"
    assert summed(c.lt_active) == {("a", DAY0, 2): 1}


def test_streams_reported_before_the_trace_count() -> None:
    # Day 3 is reported (say, synced from an offline device) before the stream that starts the
    # trace: the result must not depend on arrival order.
    early: list[DomainEvent] = [
        show("ep1", "S"),
        show("ep2", "S"),
        served(rid(1), ["ep1"]),
        outcome(K.STREAM_30S, "ep2", at_day(3)),
        outcome(K.STREAM_30S, "ep1", at_day(7)),
        outcome(K.STREAM_30S, "ep1", T0, rid(1)),
    ]
    _, c = run(early)
    assert summed(c.lt_active) == {("ep1", DAY0, 3): 1, ("ep1", DAY0, 7): 1}
    late = [early[0], early[1], early[2], early[5], early[3], early[4]]
    _, c2 = run(late)
    assert summed(c2.lt_active) == summed(c.lt_active)


def test_each_trace_day_counts_once() -> None:
    _, c = run(
        [
            show("ep1", "S"),
            show("ep2", "S"),
            served(rid(1), ["ep1"]),
            served(rid(2), ["ep1"]),
            outcome(K.STREAM_30S, "ep1", T0, rid(1)),
            outcome(K.STREAM_30S, "ep1", T0, rid(2)),  # a second trace, same listener
            outcome(K.STREAM_30S, "ep1", at_day(1, hour=8)),
            outcome(K.COMPLETE, "ep1", at_day(1, hour=9)),
            outcome(K.STREAM_30S, "ep2", at_day(1, hour=20)),
        ]
    )
    # Three streams on day 1, two traces: each trace is active on day 1 once.
    assert summed(c.lt_starts) == {("ep1", DAY0): 2}
    assert summed(c.lt_active) == {("ep1", DAY0, 1): 2}


def test_trace_start_does_not_depend_on_arrival_order() -> None:
    # A stream at 20:05 and its completion after midnight, both attributed to one slate.
    evening = T0.replace(hour=20)
    first = outcome(K.STREAM_30S, "a", evening + timedelta(minutes=5), rid(1))
    second = outcome(K.COMPLETE, "a", evening + timedelta(hours=5), rid(1))
    back = outcome(K.STREAM_30S, "a", evening + timedelta(days=2))
    _, in_order = run([served(rid(1), ["a"], at=evening), first, second, back])
    _, swapped = run([served(rid(1), ["a"], at=evening), second, first, back])
    assert summed(swapped.lt_starts) == summed(in_order.lt_starts)
    assert summed(swapped.lt_active) == summed(in_order.lt_active)


# --- batches ---------------------------------------------------------------------------------


def load(store: RewardChanges, events: list[DomainEvent], d: RewardDefinition) -> RewardState:
    """The rows of `store` a batch of `events` needs, chosen the way the runner chooses them."""
    need = needs(events)
    state = RewardState()
    state.served = {r: store.served[r] for r in need.recommendations if r in store.served}
    state.impressions = {
        k: store.impressions[k] for k in need.impressions if k in store.impressions
    }
    state.shows = {i: store.shows[i] for i in need.items if i in store.shows}
    pairs = listener_targets(events, state.shows, d)
    for key, trace in store.traces.items():
        if (trace.user, trace.target) in pairs or key in need.impressions:
            state.add_trace(key, trace)
    state.activity = {m for m in store.activity if (m[0], m[1]) in state.traces}
    for user, target, day in store.user_days:
        if (user, target) in pairs:
            state.user_days[(user, target)].add(day)
    return state


def merge(into: RewardChanges, c: RewardChanges) -> None:
    """Write one batch's changes: keyed rows are upserted, deltas added."""
    into.served.update(c.served)
    into.impressions.update(c.impressions)
    into.shows.update(c.shows)
    assert not set(c.traces) & set(into.traces), "a trace is written once"
    into.traces.update(c.traces)
    into.user_days |= c.user_days
    assert not c.activity & into.activity, "an active day is written once"
    into.activity |= c.activity
    for key, delta in c.item_rewards.items():
        into.item_rewards[key] = [a + b for a, b in zip(into.item_rewards[key], delta, strict=True)]
    add(into.positions, c.positions)
    add(into.outcomes, c.outcomes)
    add(into.lt_starts, c.lt_starts)
    add(into.lt_active, c.lt_active)


def add(mine: dict[Any, int], theirs: dict[Any, int]) -> None:
    for k, n in theirs.items():
        mine[k] = mine.get(k, 0) + n


def snapshot(c: RewardChanges) -> dict[str, object]:
    """Everything written, with Decimals as text: equal snapshots are equal bytes."""

    def text(d: dict[Any, Any]) -> dict[Any, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in d.items()}

    return {
        "served": c.served,
        "impressions": text(c.impressions),
        "shows": dict(c.shows),
        "traces": c.traces,
        "user_days": c.user_days,
        "activity": c.activity,
        "item_rewards": {k: tuple(map(str, v)) for k, v in c.item_rewards.items()},
        "positions": text(c.positions),
        "outcomes": text(c.outcomes),
        "lt_starts": text(c.lt_starts),
        "lt_active": text(c.lt_active),
    }


def in_batches(
    events: Sequence[tuple[datetime, DomainEvent]], cuts: Iterable[int], d: RewardDefinition
) -> RewardChanges:
    store = RewardChanges()
    bounds = sorted({0, len(events), *(c for c in cuts if 0 < c < len(events))})
    for lo, hi in itertools.pairwise(bounds):
        batch = list(events[lo:hi])
        changes = RewardChanges()
        fold(load(store, [e for _, e in batch], d), changes, batch, d)
        merge(store, changes)
    return store


ITEMS = ["a", "b", "c", "d"]
USERS = ["u1", "u2"]
RECS = [rid(n) for n in range(1, 4)]
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def sequences(
    draw: st.DrawFn, kinds: Sequence[OutcomeKind] = tuple(OutcomeKind)
) -> list[DomainEvent]:
    """Short logs over few items, listeners and slates, so that outcomes land on the same
    impressions, traces and days often: attributed and not, early and late, shows changing."""
    served_at = {r: EPOCH + timedelta(hours=draw(st.integers(0, 72))) for r in RECS}
    shows = st.sampled_from([None, "S", "T"])
    # Streams are what traces are made of: draw them about half the time.
    streams = [k for k in kinds if k in DEFAULT.stream_kinds]
    kind = st.sampled_from(kinds)
    if streams:
        kind = st.one_of(st.sampled_from(streams), kind)
    offset = st.one_of(
        st.integers(-3, 8 * 60).map(lambda m: timedelta(minutes=m)),  # around the windows
        st.integers(-2, 10).map(lambda d: timedelta(days=d, hours=3)),  # the next days
        st.integers(0, 65).map(lambda d: timedelta(days=d, hours=3)),  # to the horizon and past
    )

    def event(data: st.DrawFn) -> DomainEvent:
        choice = data(st.integers(0, 9))
        if choice == 0:
            return show(data(st.sampled_from(ITEMS)), data(shows))
        if choice == 1:
            return ItemRetired(data(st.sampled_from(ITEMS)))
        rec = data(st.sampled_from([None, *RECS]))
        return outcome(
            data(kind),
            data(st.sampled_from(ITEMS)),
            (served_at[rec] if rec is not None else EPOCH) + data(offset),
            rec,
            user=data(st.sampled_from(USERS)),
            value=data(st.one_of(st.none(), st.floats(0, 60_000))),
        )

    log = [event(draw) for _ in range(draw(st.integers(1, 40)))]
    # Each recommendation is served once, anywhere in the log (or never): an outcome naming a
    # slate not served yet is organic, as one naming a slate that does not exist.
    for r in RECS:
        if draw(st.booleans()) or draw(st.booleans()):
            slate = draw(st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3, unique=True))
            surface = draw(st.sampled_from(["home", "music"]))
            user = draw(st.sampled_from(USERS))
            where = draw(st.integers(0, len(log) // 3))
            log.insert(where, served(r, slate, surface=surface, user=user, at=served_at[r]))
    return log


SHORT = RewardDefinition("short-horizon", DEFAULT.weights, DEFAULT.windows, horizon_days=7)


@settings(max_examples=150, deadline=None, database=None)
@given(
    events=sequences(),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    definition=st.sampled_from([DEFAULT, SHORT]),
)
def test_any_split_into_batches_writes_the_same(
    events: list[DomainEvent], cuts: list[int], definition: RewardDefinition
) -> None:
    log = recorded(events)
    whole = RewardChanges()
    fold(RewardState(), whole, log, definition)
    assert snapshot(in_batches(log, cuts, definition)) == snapshot(whole)
    # And batch by batch, event by event: the most state the runner ever has to reload.
    assert snapshot(in_batches(log, range(len(log)), definition)) == snapshot(whole)


def test_incremental_equals_one_batch_with_traces_across_batches() -> None:
    # A trace started in one batch, a same-show stream in the next, and a stream reported
    # before the trace in the one before: all of it has to come back from stored rows.
    events: list[DomainEvent] = [
        show("ep1", "S"),
        show("ep2", "S"),
        outcome(K.STREAM_30S, "ep2", at_day(4)),
        served(rid(1), ["ep1", "b"]),
        outcome(K.STREAM_30S, "ep1", T0, rid(1)),
        outcome(K.SAVE, "ep1", T0 + timedelta(hours=1), rid(1)),
        outcome(K.COMPLETE, "ep2", at_day(1)),
        outcome(K.SKIP, "b", T0, rid(1), value=2000),
        outcome(K.STREAM_30S, "ep1", at_day(4)),
        outcome(K.STREAM_30S, "ep1", at_day(9)),
    ]
    log = recorded(events)
    whole = RewardChanges()
    fold(RewardState(), whole, log, DEFAULT)
    for cuts in ([3], [4, 6], [5, 7, 9], list(range(len(log)))):
        assert snapshot(in_batches(log, cuts, DEFAULT)) == snapshot(whole), cuts
    assert summed(whole.lt_active) == {
        ("ep1", DAY0, 1): 1,
        ("ep1", DAY0, 4): 1,
        ("ep1", DAY0, 9): 1,
    }


NOT_STREAMS = [k for k in OutcomeKind if k not in DEFAULT.stream_kinds]


@settings(max_examples=60, deadline=None, database=None)
@given(
    setup=sequences(kinds=NOT_STREAMS),
    batch=sequences(kinds=NOT_STREAMS),
    seed=st.randoms(use_true_random=False),
)
def test_outcomes_fold_in_any_order_within_a_batch(
    setup: list[DomainEvent], batch: list[DomainEvent], seed: random.Random
) -> None:
    outcomes = [e for e in batch if isinstance(e, OutcomeRecorded)]
    shuffled = list(outcomes)
    seed.shuffle(shuffled)
    snapshots = []
    for order in (outcomes, shuffled):
        state, changes = RewardState(), RewardChanges()
        fold(state, RewardChanges(), recorded(setup), DEFAULT)
        # One transaction's events share their recorded_at: the deltas are then identical.
        fold(state, changes, [(RECORDED, e) for e in order], DEFAULT)
        snapshots.append(snapshot(changes))
    assert snapshots[0] == snapshots[1]
    # With their own recorded_at, the split of a delta across instants may differ, but the
    # totals as of the end of the batch do not.
    totals = []
    for order in (outcomes, shuffled):
        state, changes = RewardState(), RewardChanges()
        fold(state, RewardChanges(), recorded(setup), DEFAULT)
        fold(state, changes, recorded(order, start=1000), DEFAULT)
        totals.append((rewards(changes), summed(changes.outcomes), state.impressions))
    assert totals[0] == totals[1]


# --- listeners -------------------------------------------------------------------------------


def test_listener_fold_builds_affinity_and_history() -> None:
    c = ListenerChanges()
    fold_listeners(
        c,
        [
            outcome(K.CLICK, "a", T0, user="u1"),
            outcome(K.STREAM_START, "a", T0 + timedelta(hours=1), user="u1"),
            outcome(K.STREAM_30S, "a", T0 + timedelta(hours=2), user="u1"),
            outcome(K.SKIP, "b", T0, user="u1", value=5000),
            outcome(K.SKIP, "b", T0, user="u1", value=45_000),
            outcome(K.COMPLETE, "a", T0 - timedelta(days=1), user="u2"),
            served(rid(1), ["a"]),  # not an outcome: ignored
        ],
        DEFAULT,
    )
    assert c.affinity == {
        ("u1", "a"): [Decimal("1.1"), 3],
        ("u1", "b"): [Decimal("-0.5"), 2],
        ("u2", "a"): [Decimal(1), 1],
    }
    assert c.history == {
        ("u1", "a"): (T0 + timedelta(hours=1), T0 + timedelta(hours=2), 2),
        ("u2", "a"): (T0 - timedelta(days=1), T0 - timedelta(days=1), 1),
    }


def test_heard_means_any_stream() -> None:
    assert heard_kinds(DEFAULT) == {K.STREAM_START, K.STREAM_30S, K.COMPLETE}


@settings(max_examples=60, deadline=None, database=None)
@given(events=sequences(), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_listener_fold_adds_up_over_batches(events: list[DomainEvent], cuts: list[int]) -> None:
    whole = ListenerChanges()
    fold_listeners(whole, events, DEFAULT)
    # The runner's upsert: weights and counts add, first/last are min/max, plays add.
    affinity: dict[tuple[str, str], list[Decimal]] = {}
    history: dict[tuple[str, str], tuple[datetime, datetime, int]] = {}
    bounds = sorted({0, len(events), *(c for c in cuts if 0 < c < len(events))})
    for lo, hi in itertools.pairwise(bounds):
        c = ListenerChanges()
        fold_listeners(c, events[lo:hi], DEFAULT)
        for k, (w, n) in c.affinity.items():
            old = affinity.get(k, [Decimal(0), Decimal(0)])
            affinity[k] = [old[0] + w, old[1] + n]
        for k, (first, last, plays) in c.history.items():
            h = history.get(k)
            history[k] = (
                (first, last, plays)
                if h is None
                else (min(h[0], first), max(h[1], last), h[2] + plays)
            )
    assert {k: tuple(map(str, v)) for k, v in affinity.items()} == {
        k: tuple(map(str, v)) for k, v in whole.affinity.items()
    }
    assert history == whole.history


# --- reward definitions ----------------------------------------------------------------------


def test_the_default_round_trips_through_json() -> None:
    data = DEFAULT.to_json()
    again = RewardDefinition.from_json(data)
    assert again == DEFAULT
    assert again.to_json() == data


def test_a_custom_definition_round_trips_and_omitted_fields_default() -> None:
    custom = RewardDefinition.from_json(
        {
            "version": "podcasts-2",
            "weights": {"complete": "2.5", "skip": -1},
            "windows_seconds": {"complete": 7200},
            "horizon_days": 30,
            "skip_threshold_ms": 10_000,
            "stream_kinds": ["complete"],
        }
    )
    assert custom.weight(K.COMPLETE, None) == Decimal("2.5")
    assert custom.weight(K.SAVE, None) == 0  # kinds without a weight are worth nothing
    assert custom.window(K.COMPLETE) == timedelta(hours=2)
    assert custom.window(K.SAVE) == timedelta(0)
    assert custom.stream_kinds == {K.COMPLETE}
    assert RewardDefinition.from_json(custom.to_json()) == custom
    minimal = RewardDefinition.from_json({"version": "v", "weights": {}})
    assert minimal.horizon_days == 60
    assert minimal.skip_threshold_ms == 30_000
    assert minimal.stream_kinds == DEFAULT.stream_kinds
    assert minimal.windows == {}


def base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"version": "v1", "weights": {"stream_30s": 1}}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not REMOVE}


REMOVE = object()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (base(version=REMOVE), "invalid reward definition"),
        (base(weights=REMOVE), "invalid reward definition"),
        (base(version=None), "version must be"),
        (base(version=7), "version must be"),
        (base(version=""), "version must be"),
        (base(version="x" * 65), "version must be"),
        (base(weights=5), "invalid reward definition"),
        (base(weights={"stream_30s": "lots"}), "invalid reward definition"),
        (base(weights={"listen": 1}), "'listen' is not a valid OutcomeKind"),
        (base(weights={"save": "NaN"}), "weights must be finite"),
        (base(weights={"save": math.inf}), "weights must be finite"),
        (base(weights={"save": 1001}), "weights must be finite"),
        (base(windows_seconds={"save": -1}), "windows must not be negative"),
        (base(windows_seconds={"save": math.inf}), "invalid reward definition"),
        (base(windows_seconds={"wait": 1}), "not a valid OutcomeKind"),
        (base(horizon_days=0), "horizon_days"),
        (base(horizon_days=366), "horizon_days"),
        (base(horizon_days=None), "invalid reward definition"),
        (base(skip_threshold_ms=math.nan), "skip_threshold_ms"),
        (base(skip_threshold_ms=math.inf), "skip_threshold_ms"),
        (base(skip_threshold_ms=-1), "skip_threshold_ms"),
        (base(stream_kinds=[]), "stream_kinds must not be empty"),
        (base(stream_kinds=None), "invalid reward definition"),
        (base(stream_kinds=["stream"]), "not a valid OutcomeKind"),
    ],
)
def test_invalid_definitions_are_rejected_with_a_reason(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RewardDefinition.from_json(data)


def test_weight_and_window_lookups() -> None:
    assert DEFAULT.weight(K.SKIP, 29_999.9) == Decimal("-0.5")
    assert DEFAULT.weight(K.SKIP, 30_000) == 0
    assert DEFAULT.weight(K.SAVE, 10**9) == 2  # the threshold is for skips only
    assert DEFAULT.window(K.SAVE) == timedelta(days=7)
