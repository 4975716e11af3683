"""Order independence of the domain folds, stated exactly, and rebuild = incremental under it.

What commutes and what does not, by the folds' own contracts:

- Listener fold: every aggregate is a sum, a count, a min or a max, so ANY permutation of ANY log
  gives the same affinity and history.
- Reward fold: a served slate must come before the outcomes that name it (an outcome naming a
  slate not yet served is organic by design), and an item's show must be set before the streams
  whose coming-back it defines. Given those (slates and shows first), the outcomes commute: any
  order gives the same aggregates, traces, active days and impression rewards, provided each
  (recommendation, item)'s attributed streams come from one listener. A blend's trace belongs to
  whichever member streamed first (`test_a_blend_trace_belongs_to_the_first_to_stream`), the one
  thing the outcomes' order decides.
- With one recorded_at for the batch (one transaction) the changes are equal value for value;
  with per-event recorded_at only the split of deltas over instants moves, not their sums.

test_reward_fold.py already has: batches of any split == one batch (the given order), and
non-stream outcomes in any order within a batch. This module adds streams and long-term traces to
the permutations, permutes across batch boundaries, and permutes the listener fold's whole log.
The example counts come from the hypothesis profile (tests/unit/conftest.py).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from domain.events import DomainEvent, ItemUpserted, OutcomeKind, OutcomeRecorded
from domain.listener_fold import ListenerChanges, fold_listeners
from domain.reward_fold import RewardChanges, RewardState, fold
from domain.rewards import DEFAULT, RewardDefinition
from tests.unit.test_reward_fold import (
    EPOCH,
    ITEMS,
    RECORDED,
    RECS,
    SHORT,
    USERS,
    in_batches,
    outcome,
    recorded,
    rewards,
    sequences,
    served,
    show,
    snapshot,
    summed,
)

K = OutcomeKind
STREAMS = sorted(DEFAULT.stream_kinds)


@st.composite
def contract_logs(draw: st.DrawFn) -> tuple[list[DomainEvent], list[OutcomeRecorded]]:
    """(slates and shows, outcomes): a log the reward fold promises to be order-free in its
    outcomes. Few items, listeners and slates, so outcomes collide on impressions, traces and
    days; about half are streams, timed around the attribution windows and across the horizon."""
    prefix: list[DomainEvent] = [
        show(item, draw(st.sampled_from([None, "S", "T"]))) for item in ITEMS if draw(st.booleans())
    ]
    slate_user: dict[UUID | None, str] = {}
    served_at: dict[UUID | None, datetime] = {}
    for rec in RECS:
        if draw(st.booleans()):
            at = EPOCH + timedelta(hours=draw(st.integers(0, 72)))
            user = draw(st.sampled_from(USERS))
            items = draw(st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3, unique=True))
            surface = draw(st.sampled_from(["home", "music"]))
            prefix.append(served(rec, items, surface=surface, user=user, at=at))
            slate_user[rec], served_at[rec] = user, at
    draw(st.randoms(use_true_random=False)).shuffle(prefix)  # slates and shows commute
    kind = st.one_of(st.sampled_from(STREAMS), st.sampled_from(list(K)))
    offset = st.one_of(
        st.integers(-3, 8 * 60).map(lambda m: timedelta(minutes=m)),
        # Within a day's window, so one impression's streams can fall on two calendar days.
        st.integers(0, 24 * 60).map(lambda m: timedelta(minutes=m)),
        st.integers(-2, 12).map(lambda d: timedelta(days=d, hours=3)),
        st.integers(0, 65).map(lambda d: timedelta(days=d, hours=3)),
    )
    outcomes = []
    for _ in range(draw(st.integers(1, 40))):
        # Naming a slate never served is allowed (it is organic); naming one served ties the
        # outcome to that slate's listener.
        named: UUID | None = draw(st.sampled_from([None, *RECS]))
        user = slate_user.get(named) or draw(st.sampled_from(USERS))
        base = served_at.get(named, EPOCH)
        value = draw(st.one_of(st.none(), st.floats(0, 60_000)))
        item = draw(st.sampled_from(ITEMS))
        outcomes.append(
            outcome(draw(kind), item, base + draw(offset), named, user=user, value=value)
        )
    return prefix, outcomes


def aggregates(c: RewardChanges, state: RewardState) -> dict[str, object]:
    """What the projection answers once every delta is summed: order-free by the contract."""
    return {
        "rewards": rewards(c),
        "outcomes": summed(c.outcomes),
        "positions": summed(c.positions),
        "lt_starts": summed(c.lt_starts),
        "lt_active": summed(c.lt_active),
        "traces": c.traces,
        "activity": c.activity,
        "user_days": c.user_days,
        "impressions": {k: str(v) for k, v in state.impressions.items()},
    }


def fold_all(
    events: list[DomainEvent], definition: RewardDefinition, *, one_instant: bool = False
) -> tuple[RewardChanges, RewardState]:
    state, changes = RewardState(), RewardChanges()
    log = [(RECORDED, e) for e in events] if one_instant else recorded(events)
    fold(state, changes, log, definition)
    return changes, state


@given(
    log=contract_logs(),
    seed=st.randoms(use_true_random=False),
    definition=st.sampled_from([DEFAULT, SHORT]),
)
def test_outcomes_commute_streams_and_traces_included(
    log: tuple[list[DomainEvent], list[OutcomeRecorded]],
    seed: random.Random,
    definition: RewardDefinition,
) -> None:
    prefix, outcomes = log
    shuffled = list(outcomes)
    seed.shuffle(shuffled)
    a, a_state = fold_all([*prefix, *outcomes], definition)
    b, b_state = fold_all([*prefix, *shuffled], definition)
    assert aggregates(b, b_state) == aggregates(a, a_state)
    # In one transaction (one recorded_at) the very rows and deltas written are the same.
    one, _ = fold_all([*prefix, *outcomes], definition, one_instant=True)
    other, _ = fold_all([*prefix, *shuffled], definition, one_instant=True)
    assert snapshot(other) == snapshot(one)


@given(
    log=contract_logs(),
    seed=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    definition=st.sampled_from([DEFAULT, SHORT]),
)
def test_a_permuted_log_folded_in_batches_equals_the_original_rebuilt(
    log: tuple[list[DomainEvent], list[OutcomeRecorded]],
    seed: random.Random,
    cuts: list[int],
    definition: RewardDefinition,
) -> None:
    """Arrival order and batch boundaries both vary; a rebuild in log order agrees with every
    incremental run, including traces started in one batch and streams in another."""
    prefix, outcomes = log
    shuffled = list(outcomes)
    seed.shuffle(shuffled)
    whole, whole_state = fold_all([*prefix, *outcomes], definition)
    batched = in_batches(recorded([*prefix, *shuffled]), cuts, definition)
    # `in_batches` keeps no state between batches but what it stored: impressions are rows.
    assert aggregates(batched, RewardState(impressions=dict(batched.impressions))) == aggregates(
        whole, whole_state
    )


def test_a_blend_trace_belongs_to_the_first_to_stream() -> None:
    """The one thing the outcomes' order decides: two members of a blend stream the same item
    of the same slate; the (recommendation, item) trace is the first streamer's."""
    rec = RECS[0]
    slate = served(rec, ["a"], user="u1", at=EPOCH)
    first = outcome(K.STREAM_30S, "a", EPOCH + timedelta(minutes=5), rec, user="u1")
    second = outcome(K.STREAM_30S, "a", EPOCH + timedelta(minutes=6), rec, user="u2")
    one, _ = fold_all([slate, first, second], DEFAULT)
    other, _ = fold_all([slate, second, first], DEFAULT)
    assert one.traces[(rec, "a")].user == "u1"
    assert other.traces[(rec, "a")].user == "u2"
    # Everything else still agrees.
    assert rewards(one) == rewards(other)
    assert summed(one.outcomes) == summed(other.outcomes)


def test_an_outcome_before_its_slate_is_organic() -> None:
    """And what does not commute by design: the slate must come first to be attributed."""
    rec = RECS[0]
    slate = served(rec, ["a"], at=EPOCH)
    save = outcome(K.SAVE, "a", EPOCH + timedelta(minutes=1), rec)
    after, _ = fold_all([slate, save], DEFAULT)
    before, _ = fold_all([save, slate], DEFAULT)
    assert summed(after.outcomes) == {("a", "home", "save"): 1}
    assert summed(before.outcomes) == {("a", "", "save"): 1}


def listener_view(c: ListenerChanges) -> dict[str, object]:
    return {
        "affinity": {k: (str(w), str(n)) for k, (w, n) in c.affinity.items()},
        "history": c.history,
        "recent": c.recent,
    }


@given(events=sequences(), seed=st.randoms(use_true_random=False))
def test_the_listener_fold_is_free_of_order(events: list[DomainEvent], seed: random.Random) -> None:
    shuffled = list(events)
    seed.shuffle(shuffled)
    a, b = ListenerChanges(), ListenerChanges()
    fold_listeners(a, events, DEFAULT)
    fold_listeners(b, shuffled, DEFAULT)
    assert listener_view(b) == listener_view(a)
    # Every outcome counts once, wherever it sits.
    assert sum(n for _, n in b.affinity.values()) == sum(
        isinstance(e, OutcomeRecorded) for e in events
    )
    assert all(isinstance(w, Decimal) for w, _ in b.affinity.values())


def test_shows_decide_coming_back_so_they_go_first() -> None:
    """Why shows are in the prefix: a show set after a stream does not re-file that stream
    under the show (each stream is filed under the targets known when it arrives)."""
    rec = RECS[0]
    events: list[DomainEvent] = [
        served(rec, ["ep1"], at=EPOCH),
        outcome(K.STREAM_30S, "ep1", EPOCH + timedelta(minutes=1), rec),
        outcome(K.STREAM_30S, "ep2", EPOCH + timedelta(days=2, hours=3)),
    ]
    shows: list[DomainEvent] = [show("ep1", "S"), show("ep2", "S")]
    first, _ = fold_all(shows + events, DEFAULT)
    last, _ = fold_all(events + shows, DEFAULT)
    assert summed(first.lt_active) == {("ep1", summed_start(first), 2): 1}
    assert summed(last.lt_active) == {}
    assert isinstance(shows[0], ItemUpserted)


def summed_start(c: RewardChanges) -> int:
    [(_, start)] = {(item, start) for item, start, _ in c.lt_starts}
    return start
