"""The vectorised policy serves exactly what the per-candidate policy it replaced served.

`ref_*` below is that earlier implementation, kept verbatim as the specification: one Python
object per candidate, a sort of all of them, and list scans. On random pools (duplicates, equal
scores, equal tie-breaks, groups) the serving path must give the same slates, scores and
propensities, float for float, from the same generator state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.events import SlateEntry
from domain.ranking import (
    Candidate,
    PolicyParams,
    blend_greedy,
    draw_blend,
    draw_slate,
    greedy,
    score,
)


def ref_dedupe(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.item_id, c)
    return list(seen.values())


def ref_greedy(
    candidates: Sequence[Candidate], n: int, p: PolicyParams
) -> list[tuple[Candidate, float]]:
    """The best `n` by score, at most `max_per_group` per artist or show; when the limit leaves
    the slate short, the best of the rest fill it (a short slate helps nobody)."""
    ranked = sorted(
        ((c, score(c, p)) for c in candidates),
        key=lambda cs: (-cs[1], cs[0].tiebreak, cs[0].item_id),
    )
    chosen: list[tuple[Candidate, float]] = []
    per_group: dict[str, int] = {}
    held_back: list[tuple[Candidate, float]] = []
    for c, s in ranked:
        if len(chosen) == n:
            break
        if c.group is not None and per_group.get(c.group, 0) >= p.max_per_group:
            held_back.append((c, s))
            continue
        chosen.append((c, s))
        if c.group is not None:
            per_group[c.group] = per_group.get(c.group, 0) + 1
    chosen.extend(held_back[: n - len(chosen)])
    return chosen


def ref_draw_slate(
    candidates: Iterable[Candidate], n: int, p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """Serve `min(n, N)` of the N eligible candidates, with exact per-position propensities."""
    if n < 1:
        raise ValueError("n must be at least 1")
    pool = ref_dedupe(candidates)
    if not pool:
        return ()
    return ref_explore([c for c, _ in ref_greedy(pool, n, p)], pool, p, rng)


def ref_explore(
    top: Sequence[Candidate], pool: Sequence[Candidate], p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """Serve the greedy slate `top`, or one of the two explored variants of it (see the module
    docstring), drawn from the `pool`; log each position's exact propensity."""
    scores = {c.item_id: score(c, p) for c in pool}
    size = len(pool)
    greedy_ids = [c.item_id for c in top]
    m = len(greedy_ids)
    head = max(0, m - p.tail)
    kept = set(greedy_ids[:head])
    # Draw the branch first, always, so the generator's use does not depend on the branch taken.
    u = rng.random()
    if u < p.epsilon:
        order = [c.item_id for c in rng.sample(list(pool), m)]
    elif u < p.epsilon + p.tail_epsilon:
        rest = [c.item_id for c in pool if c.item_id not in kept]
        order = greedy_ids[:head] + rng.sample(rest, m - head)
    else:
        order = greedy_ids
    return tuple(
        SlateEntry(
            item_id=item,
            position=k,
            score=scores[item],
            propensity=ref_propensity(item, k, greedy_ids, size, p),
        )
        for k, item in enumerate(order)
    )


def ref_propensity(
    item: str, k: int, greedy_ids: Sequence[str], size: int, p: PolicyParams
) -> float:
    """P(item at position k) under `explore`, for greedy slate `greedy_ids` of a pool of `size`."""
    head = max(0, len(greedy_ids) - p.tail)
    greedy_here = float(greedy_ids[k] == item)
    # Above the tail the explored slate keeps the greedy items; in it, it draws from the rest.
    in_tail = float(item not in greedy_ids[:head]) / (size - head)
    tail_part = greedy_here if k < head else in_tail
    exploit = 1.0 - p.epsilon - p.tail_epsilon
    return p.epsilon / size + p.tail_epsilon * tail_part + exploit * greedy_here


def ref_draw_blend(
    members: Sequence[Sequence[Candidate]], n: int, p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """One slate for a group, explored like any other (the pool is every member's candidates;
    a candidate's score is that of the first member who has it)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    pool = ref_dedupe(c for m in members for c in m)
    if not pool:
        return ()
    return ref_explore([c for c, _ in ref_blend_greedy(members, n, p)], pool, p, rng)


def ref_blend_greedy(
    members: Sequence[Sequence[Candidate]], n: int, p: PolicyParams
) -> list[tuple[Candidate, float]]:
    """One slate for several listeners: members take turns picking their best remaining item
    (by their own scores), so everyone gets items predicted for them, not only the average."""
    ranked = [
        sorted(
            ((c, score(c, p)) for c in ref_dedupe(m)),
            key=lambda cs: (-cs[1], cs[0].tiebreak, cs[0].item_id),
        )
        for m in members
    ]
    chosen: list[tuple[Candidate, float]] = []
    taken: set[str] = set()
    cursors = [0] * len(ranked)
    while len(chosen) < n and any(cursors[j] < len(r) for j, r in enumerate(ranked)):
        for j, r in enumerate(ranked):
            while cursors[j] < len(r) and r[cursors[j]][0].item_id in taken:
                cursors[j] += 1
            if cursors[j] < len(r) and len(chosen) < n:
                c, s = r[cursors[j]]
                chosen.append((c, s))
                taken.add(c.item_id)
                cursors[j] += 1
    return chosen


_values = st.sampled_from([0.0, 0.25, 0.5, 1.0, -0.5]) | st.floats(-2, 2, allow_nan=False)
_candidates = st.lists(
    st.builds(
        Candidate,
        item_id=st.sampled_from([f"i{k}" for k in range(30)]),
        group=st.none() | st.sampled_from(["a", "b", "c", "d"]),
        affinity=_values,
        reward_mean=_values,
        reward_sd=st.sampled_from([0.0, 0.1]) | st.floats(0, 1),
        long_term=_values,
        tiebreak=st.sampled_from([0.0, 0.5]) | st.floats(0, 1),
    ),
    max_size=40,
)
_params = st.builds(
    PolicyParams,
    epsilon=st.sampled_from([0.0, 0.03, 0.3]),
    tail_epsilon=st.sampled_from([0.0, 0.07, 0.5]),
    tail=st.integers(1, 4),
    optimism=st.sampled_from([0.0, 2.0]),
    max_per_group=st.integers(1, 3),
)


@settings(max_examples=300, deadline=None)
@given(_candidates, st.integers(1, 12), _params, st.integers(0, 2**32))
def test_slates_are_the_reference_slates(
    candidates: list[Candidate], n: int, p: PolicyParams, seed: int
) -> None:
    # `greedy` is called on distinct candidates (`draw_slate` dedupes first).
    unique = ref_dedupe(candidates)
    assert greedy(unique, n, p) == ref_greedy(unique, n, p)
    got = draw_slate(candidates, n, p, random.Random(seed))
    assert got == ref_draw_slate(candidates, n, p, random.Random(seed))


@settings(max_examples=200, deadline=None)
@given(st.lists(_candidates, min_size=1, max_size=4), st.integers(1, 12), _params, st.integers())
def test_blends_are_the_reference_blends(
    members: list[list[Candidate]], n: int, p: PolicyParams, seed: int
) -> None:
    assert blend_greedy(members, n, p) == ref_blend_greedy(members, n, p)
    got = draw_blend(members, n, p, random.Random(seed))
    assert got == ref_draw_blend(members, n, p, random.Random(seed))
