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

from domain.events import SlateEntry


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
    """The policy's parameters. The defaults are what was measured (docs/decisions.md 19, 23);
    `version` names them, so changing a default must change it too (a test pins the pair)."""

    name: str = "segue-eps-greedy"
    version: str = "2"
    epsilon: float = 0.03  # uniform random slates
    tail_epsilon: float = 0.07  # slates whose last `tail` positions are drawn at random
    tail: int = 3
    w_affinity: float = 1.0
    w_reward: float = 1.0
    w_long_term: float = 0.2
    optimism: float = 2.0  # score bonus per posterior standard deviation
    max_per_group: int = 2

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


def draw_slate(
    candidates: Iterable[Candidate], n: int, p: PolicyParams, rng: random.Random
) -> tuple[SlateEntry, ...]:
    """Serve `min(n, N)` of the N eligible candidates, with exact per-position propensities."""
    if n < 1:
        raise ValueError("n must be at least 1")
    pool = _dedupe(candidates)
    if not pool:
        return ()
    return explore([c for c, _ in greedy(pool, n, p)], pool, p, rng)


def explore(
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
            propensity=propensity(item, k, greedy_ids, size, p),
        )
        for k, item in enumerate(order)
    )


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
    if n < 1:
        raise ValueError("n must be at least 1")
    pool = _dedupe(c for m in members for c in m)
    if not pool:
        return ()
    return explore([c for c, _ in blend_greedy(members, n, p)], pool, p, rng)


def blend_greedy(
    members: Sequence[Sequence[Candidate]], n: int, p: PolicyParams
) -> list[tuple[Candidate, float]]:
    """One slate for several listeners: members take turns picking their best remaining item
    (by their own scores), so everyone gets items predicted for them, not only the average."""
    ranked = [
        sorted(
            ((c, score(c, p)) for c in _dedupe(m)),
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
