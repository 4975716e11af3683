"""The ranking policy: score candidates, build a diverse greedy slate, explore with exact
propensities.

Exploration mixes three slates, each with a closed form, so the probability that item i lands at
position k is exact. With probability `epsilon` a uniformly random slate of the N eligible
candidates (every item can be seen anywhere: any other policy can be evaluated from the log);
with probability `tail_epsilon` the greedy slate with its last `tail` positions replaced by a
uniform draw from the items not kept above them (cheap exploration where it costs least); else
the greedy slate. With h = m - tail the kept head of an m-item slate and g the greedy slate:

    P(i at k) = epsilon / N
              + tail_epsilon * ([g[k] == i] if k < h else [i not in g[:h]] / (N - h))
              + (1 - epsilon - tail_epsilon) * [g[k] == i]

(Thompson sampling or Plackett-Luce sampling would explore more smoothly, but their
per-position marginals have no closed form, and a logged propensity that is only approximately
right biases every offline estimate built on it.)
Uncertain items are favoured deterministically instead, through an optimism bonus on the
posterior standard deviation of their reward.

Everything is a function of its arguments: the same candidates and the same generator state give
the same slate.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Literal, overload

import numpy as np
from numpy.typing import NDArray

from domain.events import SlateEntry
from domain.recency import RecencyParams


@dataclass(frozen=True, slots=True)
class Candidate:
    item_id: str
    group: str | None = None  # artist or show: what the diversity limit counts
    affinity: float = 0.0  # predicted preference of this listener (embedding dot product)
    reward_mean: float = 0.0  # posterior mean of the short-term reward of one impression
    reward_sd: float = 0.0  # its posterior standard deviation
    long_term: float = 0.0  # expected active days after a stream (progressive estimate)
    # Orders equal scores. A fixed function of (listener, item), never a draw: the greedy slate
    # must be a function of the request for its logged propensities to be exact.
    tiebreak: float = 0.0


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """The policy's parameters. The defaults are what was measured (docs/decisions.md 19, 23,
    and "Listener state with order" for the recency terms); `version` names them, so changing a
    default must change it too (a test pins the pair)."""

    name: str = "segue-eps-greedy"
    version: str = "3"
    epsilon: float = 0.03  # uniform random slates
    tail_epsilon: float = 0.07  # slates whose last `tail` positions are drawn at random
    tail: int = 3
    w_affinity: float = 1.0
    w_reward: float = 1.0
    w_long_term: float = 0.2
    optimism: float = 2.0  # score bonus per posterior standard deviation
    max_per_group: int = 2
    # The listener vector turned towards what they played last (`domain.recency`).
    recency_blend: float = 0.6
    recency_decay: float = 3.0
    recency_floor: float = 0.0
    recency_items: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        if not 0.0 <= self.tail_epsilon <= 1.0 - self.epsilon:
            raise ValueError("tail_epsilon must be in [0, 1 - epsilon]")
        if self.tail < 1:
            raise ValueError("tail must be at least 1")
        if self.max_per_group < 1:
            raise ValueError("max_per_group must be at least 1")
        if self.optimism < 0.0 or self.w_long_term < 0.0:
            raise ValueError("optimism and w_long_term must not be negative")
        _ = self.recency  # RecencyParams checks its own terms

    @property
    def recency(self) -> RecencyParams:
        """The recency terms as `domain.recency` takes them."""
        return RecencyParams(
            blend=self.recency_blend,
            decay=self.recency_decay,
            floor=self.recency_floor,
            items=self.recency_items,
        )

    @property
    def logged_version(self) -> str:
        """The version to log with every slate: `version` for the defaults, else `version` plus a
        digest of every tunable, so slates served under other settings are never mistaken for
        the defaults' in an offline evaluation."""
        tuned = tuple(
            (f.name, getattr(self, f.name)) for f in fields(self) if f.name not in _NAMING
        )
        if tuned == _DEFAULT_TUNABLES:
            return self.version
        digest = hashlib.blake2b(repr(tuned).encode(), digest_size=4).hexdigest()
        return f"{self.version}+{digest}"


_NAMING = frozenset({"name", "version"})
_DEFAULT_TUNABLES = tuple(
    (f.name, f.default) for f in fields(PolicyParams) if f.name not in _NAMING
)


def score(c: Candidate, p: PolicyParams) -> float:
    return (
        p.w_affinity * c.affinity
        + p.w_reward * c.reward_mean
        + p.w_long_term * c.long_term
        + p.optimism * c.reward_sd
    )


class RowIds(Sequence[str]):
    """The ids of some rows of a larger id list, looked up only when asked for.

    A pool of a few hundred candidates drawn from a million-item catalogue needs the ids of the
    ten it serves; reading all of them touches a few hundred strings scattered over a large
    heap (a cache miss each), which is what made a request cost more at a million items."""

    __slots__ = ("_ids", "_rows")

    def __init__(self, ids: Sequence[str], rows: Sequence[int] | NDArray[np.int64]) -> None:
        self._ids = ids
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, k: int) -> str: ...

    @overload
    def __getitem__(self, k: slice) -> Sequence[str]: ...

    def __getitem__(self, k: int | slice) -> str | Sequence[str]:
        if isinstance(k, slice):
            return [self._ids[int(r)] for r in self._rows[k]]
        return self._ids[int(self._rows[k])]


@dataclass(frozen=True, slots=True)
class Pool:
    """N distinct eligible candidates as parallel arrays: what the serving path hands the policy.

    `groups` holds a code per candidate (0: no artist or show); equal codes are one group.
    Scoring, ordering and exploration are vectorised over these arrays, so a request costs
    O(N log N) array work on the pool and O(n) Python work on the slate, never O(N) objects."""

    item_ids: Sequence[str]
    groups: NDArray[np.int64]
    affinity: NDArray[np.float64]
    reward_mean: NDArray[np.float64]
    reward_sd: NDArray[np.float64]
    long_term: NDArray[np.float64]
    tiebreak: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.item_ids)

    def scores(self, p: PolicyParams) -> NDArray[np.float64]:
        # The same operations in the same order as `score`, so each is the same float.
        s: NDArray[np.float64] = (
            p.w_affinity * self.affinity
            + p.w_reward * self.reward_mean
            + p.w_long_term * self.long_term
            + p.optimism * self.reward_sd
        )
        return s

    def take(self, rows: NDArray[np.intp]) -> Pool:
        return Pool(
            RowIds(self.item_ids, rows.tolist()),
            self.groups[rows],
            self.affinity[rows],
            self.reward_mean[rows],
            self.reward_sd[rows],
            self.long_term[rows],
            self.tiebreak[rows],
        )

    def candidates(self) -> list[Candidate]:
        """The pool as `Candidate`s (offline evaluation wants them; serving does not)."""
        return [
            Candidate(
                item_id=item,
                group=None if g == 0 else f"g{g}",
                affinity=a,
                reward_mean=m,
                reward_sd=sd,
                long_term=lt,
                tiebreak=t,
            )
            for item, g, a, m, sd, lt, t in zip(
                self.item_ids,
                self.groups.tolist(),
                self.affinity.tolist(),
                self.reward_mean.tolist(),
                self.reward_sd.tolist(),
                self.long_term.tolist(),
                self.tiebreak.tolist(),
                strict=True,
            )
        ]


EMPTY = Pool(
    [],
    np.zeros(0, np.int64),
    *(np.zeros(0, np.float64) for _ in range(5)),
)


def pool_of(candidates: Iterable[Candidate]) -> Pool:
    """The distinct candidates (the first of each id wins), in order, as a `Pool`."""
    unique = _dedupe(candidates)
    codes: dict[str, int] = {}
    return Pool(
        [c.item_id for c in unique],
        np.array(
            [0 if c.group is None else codes.setdefault(c.group, len(codes) + 1) for c in unique],
            dtype=np.int64,
        ),
        np.array([c.affinity for c in unique], dtype=np.float64),
        np.array([c.reward_mean for c in unique], dtype=np.float64),
        np.array([c.reward_sd for c in unique], dtype=np.float64),
        np.array([c.long_term for c in unique], dtype=np.float64),
        np.array([c.tiebreak for c in unique], dtype=np.float64),
    )


def union(pools: Sequence[Pool]) -> Pool:
    """The distinct candidates of several pools, in order (the first pool to have an id wins)."""
    if len(pools) == 1:
        return pools[0]
    first: dict[str, int] = {}
    offset = 0
    for pool in pools:
        for k, item in enumerate(pool.item_ids):
            first.setdefault(item, offset + k)
        offset += len(pool)
    rows = np.fromiter(first.values(), dtype=np.intp, count=len(first))
    return Pool(
        [item for pool in pools for item in pool.item_ids],
        np.concatenate([pool.groups for pool in pools]),
        np.concatenate([pool.affinity for pool in pools]),
        np.concatenate([pool.reward_mean for pool in pools]),
        np.concatenate([pool.reward_sd for pool in pools]),
        np.concatenate([pool.long_term for pool in pools]),
        np.concatenate([pool.tiebreak for pool in pools]),
    ).take(rows)


def ranked(pool: Pool, scores: NDArray[np.float64]) -> list[int]:
    """Rows of `pool` by score (highest first), then tie-break, then item id."""
    order = np.lexsort((pool.tiebreak, -scores))
    s, t = scores[order], pool.tiebreak[order]
    if len(order) > 1 and bool(np.any((s[1:] == s[:-1]) & (t[1:] == t[:-1]))):
        # Equal score and tie-break (callers that give no tie-breaks): the id decides.
        ids = pool.item_ids
        return sorted(range(len(pool)), key=lambda i: (-scores[i], pool.tiebreak[i], ids[i]))
    rows: list[int] = order.tolist()
    return rows


def greedy_rows(pool: Pool, n: int, p: PolicyParams) -> list[int]:
    """`greedy` on a pool: the rows of the best `n`, at most `max_per_group` per group."""
    scores = pool.scores(p)
    groups = pool.groups
    chosen: list[int] = []
    per_group: dict[int, int] = {}
    held_back: list[int] = []
    for row in ranked(pool, scores):
        if len(chosen) == n:
            break
        g = int(groups[row])
        if g != 0 and per_group.get(g, 0) >= p.max_per_group:
            held_back.append(row)
            continue
        chosen.append(row)
        if g != 0:
            per_group[g] = per_group.get(g, 0) + 1
    chosen.extend(held_back[: n - len(chosen)])
    return chosen


def _dedupe(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.item_id, c)
    return list(seen.values())


def greedy(
    candidates: Sequence[Candidate], n: int, p: PolicyParams
) -> list[tuple[Candidate, float]]:
    """The best `n` by score, at most `max_per_group` per artist or show; when the limit leaves
    the slate short, the best of the rest fill it (a short slate helps nobody)."""
    unique = _dedupe(candidates)
    return [(unique[row], score(unique[row], p)) for row in greedy_rows(pool_of(unique), n, p)]


def draw_slate(
    candidates: Iterable[Candidate], n: int, p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """Serve `min(n, N)` of the N eligible candidates, with exact per-position propensities."""
    return draw(pool_of(candidates), n, p, rng)


# Which variant `explore` served: the greedy slate, a uniformly drawn one (epsilon), or the
# greedy head with a drawn tail (tail_epsilon). Counted per surface in the metrics.
Branch = Literal["greedy", "uniform", "tail"]


def draw(pool: Pool, n: int, p: PolicyParams, rng: random.Random) -> tuple[SlateEntry, ...]:
    """`draw_slate` on a pool of distinct candidates."""
    return draw_with_branch(pool, n, p, rng)[0]


def draw_with_branch(
    pool: Pool, n: int, p: PolicyParams, rng: random.Random
) -> tuple[tuple[SlateEntry, ...], Branch]:
    """`draw`, and which variant of the slate it served."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if not len(pool):
        return (), "greedy"
    return explore_rows_with_branch(greedy_rows(pool, n, p), pool, p, rng)


def explore(
    top: Sequence[Candidate], pool: Sequence[Candidate], p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """Serve the greedy slate `top`, or one of the two explored variants of it (see the module
    docstring), drawn from the `pool`; log each position's exact propensity."""
    arrays = pool_of(pool)
    row = {item: k for k, item in enumerate(arrays.item_ids)}
    return explore_rows([row[c.item_id] for c in top], arrays, p, rng)


def explore_rows(
    top: Sequence[int], pool: Pool, p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """`explore` with the greedy slate given as rows of `pool`."""
    return explore_rows_with_branch(top, pool, p, rng)[0]


def explore_rows_with_branch(
    top: Sequence[int], pool: Pool, p: PolicyParams, rng: random.Random
) -> tuple[tuple[SlateEntry, ...], Branch]:
    """`explore_rows`, and which variant it served."""
    scores = pool.scores(p)
    size = len(pool)
    m = len(top)
    head = max(0, m - p.tail)
    # Draw the branch first, always, so the generator's use does not depend on the branch taken.
    # `rng.sample` picks by position only, so sampling rows picks what sampling items would.
    u = rng.random()
    branch: Branch
    if u < p.epsilon:
        branch = "uniform"
        order = rng.sample(range(size), m)
    elif u < p.epsilon + p.tail_epsilon:
        branch = "tail"
        kept = np.zeros(size, dtype=bool)
        kept[list(top[:head])] = True
        rest = np.flatnonzero(~kept)
        order = list(top[:head]) + rest[rng.sample(range(len(rest)), m - head)].tolist()
    else:
        branch = "greedy"
        order = list(top)
    greedy_at = list(top)
    in_head = set(top[:head])
    exploit = 1.0 - p.epsilon - p.tail_epsilon
    entries = []
    for k, row in enumerate(order):
        # The arithmetic of `propensity`, on rows instead of ids.
        greedy_here = float(greedy_at[k] == row)
        in_tail = float(row not in in_head) / (size - head)
        tail_part = greedy_here if k < head else in_tail
        entries.append(
            SlateEntry(
                item_id=pool.item_ids[row],
                position=k,
                score=float(scores[row]),
                propensity=p.epsilon / size + p.tail_epsilon * tail_part + exploit * greedy_here,
            )
        )
    return tuple(entries), branch


def propensity(item: str, k: int, greedy_ids: Sequence[str], size: int, p: PolicyParams) -> float:
    """P(item at position k) under `explore`, for greedy slate `greedy_ids` of a pool of `size`."""
    head = max(0, len(greedy_ids) - p.tail)
    greedy_here = float(greedy_ids[k] == item)
    # Above the tail the explored slate keeps the greedy items; in it, it draws from the rest.
    in_tail = float(item not in greedy_ids[:head]) / (size - head)
    tail_part = greedy_here if k < head else in_tail
    exploit = 1.0 - p.epsilon - p.tail_epsilon
    return p.epsilon / size + p.tail_epsilon * tail_part + exploit * greedy_here


def draw_blend(
    members: Sequence[Sequence[Candidate]], n: int, p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """One slate for a group, explored like any other (the pool is every member's candidates;
    a candidate's score is that of the first member who has it)."""
    return draw_blend_pools([pool_of(m) for m in members], n, p, rng)


def draw_blend_pools(
    members: Sequence[Pool], n: int, p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """`draw_blend` on one pool of distinct candidates per member."""
    return draw_blend_with_branch(members, n, p, rng)[0]


def draw_blend_with_branch(
    members: Sequence[Pool], n: int, p: PolicyParams, rng: random.Random
) -> tuple[tuple[SlateEntry, ...], Branch]:
    """`draw_blend_pools`, and which variant of the slate it served."""
    if n < 1:
        raise ValueError("n must be at least 1")
    pool = union(members)
    if not len(pool):
        return (), "greedy"
    row = {item: k for k, item in enumerate(pool.item_ids)}
    chosen = blend_rows(members, n, p)
    top = [row[members[j].item_ids[r]] for j, r in chosen]
    return explore_rows_with_branch(top, pool, p, rng)


def blend_rows(members: Sequence[Pool], n: int, p: PolicyParams) -> list[tuple[int, int]]:
    """`blend_greedy` on pools: (member, row) pairs of the slate, in order."""
    ranks = [ranked(m, m.scores(p)) for m in members]
    chosen: list[tuple[int, int]] = []
    taken: set[str] = set()
    cursors = [0] * len(ranks)
    while len(chosen) < n and any(cursors[j] < len(r) for j, r in enumerate(ranks)):
        for j, r in enumerate(ranks):
            ids = members[j].item_ids
            while cursors[j] < len(r) and ids[r[cursors[j]]] in taken:
                cursors[j] += 1
            if cursors[j] < len(r) and len(chosen) < n:
                chosen.append((j, r[cursors[j]]))
                taken.add(ids[r[cursors[j]]])
                cursors[j] += 1
    return chosen


def blend_greedy(
    members: Sequence[Sequence[Candidate]], n: int, p: PolicyParams
) -> list[tuple[Candidate, float]]:
    """One slate for several listeners: members take turns picking their best remaining item
    (by their own scores), so everyone gets items predicted for them, not only the average."""
    unique = [_dedupe(m) for m in members]
    return [
        (unique[j][r], score(unique[j][r], p))
        for j, r in blend_rows([pool_of(m) for m in unique], n, p)
    ]
