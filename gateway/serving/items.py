"""Every item the policy may serve, as rows of arrays: what a request reads, not the catalogue.

A request must cost the same at a thousand items and at a million, so nothing on its path walks,
sorts or copies the catalogue or the score table. What it needs per item is kept here, one row
per catalogue item, in numpy arrays that requests index with the few hundred rows they consider:

- the catalogue: live or retired, kind, artist-or-show group, and a hash of the id (tie-breaks);
- the index: each row's row in the current Annoy index (-1 when it was built before the item);
- the scores: impressions, reward posterior mean and sd, and the long-term estimate;
- the exploration pools, as arrays of rows: items the index does not know yet, items whose reward
  is still uncertain, and the best by expected reward (all a listener with no history has).

Changes arrive in the background (a catalogue change feed, a scores refresh, an index swap) and
are applied in O(changed rows); the pools, which do look at every row, are recomputed there too,
never per request. Rows are never removed: a retired item is a row whose `live` flag is off.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from gateway.serving.requests import ItemKind

# Kind codes: 0 is a kind this code does not know (never served on a kind-restricted surface).
KIND_CODES: dict[str, int] = {k.value: i + 1 for i, k in enumerate(ItemKind)}
EXPLORE_NEW = 100  # items added since the index was built, at most, per request
EXPLORE_UNCERTAIN = 50
COLD_START = 100
UNCERTAIN_BELOW = 50  # impressions
PENDING_MAX = 1000  # rows gone live since the pools were computed, sampled beside them

_T = TypeVar("_T", bound=np.generic)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def string_hash(text: str) -> int:
    """A stable 64-bit hash of an id (Python's `hash` differs between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def tiebreaks(item_hashes: NDArray[np.uint64], listener: int) -> NDArray[np.float64]:
    """A fixed pseudo-random order of equal scores, different for every listener: the
    splitmix64 finaliser of (item hash XOR listener hash), as a float in [0, 1)."""
    z = item_hashes ^ np.uint64(listener)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    out: NDArray[np.float64] = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def tiebreak(user: str, item: str) -> float:
    """`tiebreaks` for one item."""
    return float(tiebreaks(np.array([string_hash(item)], np.uint64), string_hash(user))[0])


@dataclass(frozen=True, slots=True)
class ItemScore:
    served: int
    reward_mean: float
    reward_sd: float
    long_term: float


@dataclass(slots=True)
class ScoreArrays:
    """Every row's scores, built aside by `ItemTable.score_arrays`."""

    scores: Mapping[str, ItemScore]
    unseen: ItemScore
    served: NDArray[np.int64]
    reward_mean: NDArray[np.float64]
    reward_sd: NDArray[np.float64]
    long_term: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One item as the catalogue change feed gives it."""

    item_id: str
    kind: str
    group: str | None  # artist or show: what the diversity limit counts
    retired: bool


class _Index(Protocol):
    """What the table needs of a loaded index (gateway.index.build.LoadedIndex has it)."""

    @property
    def items(self) -> list[str]: ...

    @property
    def item_row(self) -> dict[str, int]: ...


class ItemTable:
    """The rows; mutated only by the event loop's thread, between a request's awaits."""

    def __init__(self, w_long_term: float, unseen: ItemScore, capacity: int = 1024) -> None:
        self.w_long_term = w_long_term
        self.ids: list[str] = []
        self.row: dict[str, int] = {}
        self._group_codes: dict[str, int] = {}
        self.live = np.zeros(capacity, dtype=bool)
        self.kind = np.zeros(capacity, dtype=np.int8)
        self.group = np.zeros(capacity, dtype=np.int64)
        self.hash = np.zeros(capacity, dtype=np.uint64)
        self.index_row = np.full(capacity, -1, dtype=np.int64)
        self.served = np.zeros(capacity, dtype=np.int64)
        self.reward_mean = np.full(capacity, unseen.reward_mean)
        self.reward_sd = np.full(capacity, unseen.reward_sd)
        self.long_term = np.full(capacity, unseen.long_term)
        self.unseen = unseen
        self._scores: Mapping[str, ItemScore] = {}
        self.index: _Index | None = None
        # Index row -> table row (-1: an item the catalogue does not have).
        self.from_index = np.zeros(0, dtype=np.int64)
        self.new = np.zeros(0, dtype=np.int64)
        self.uncertain = np.zeros(0, dtype=np.int64)
        self.best = np.zeros(0, dtype=np.int64)
        self.live_count = 0
        self.dirty = False  # rows changed since the pools were computed
        # Rows that became live since then: explored at once, before the pools are recomputed
        # (an item is recommendable the moment its upsert is acknowledged).
        self._pending: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    # --- changes -------------------------------------------------------------------------------

    def _grow(self, size: int) -> None:
        capacity = len(self.live)
        if size <= capacity:
            return
        while capacity < size:
            capacity *= 2

        def grown(a: NDArray[_T], fill: object) -> NDArray[_T]:
            b: NDArray[_T] = np.full(capacity, fill, dtype=a.dtype)
            b[: len(a)] = a
            return b

        self.live = grown(self.live, False)
        self.kind = grown(self.kind, 0)
        self.group = grown(self.group, 0)
        self.hash = grown(self.hash, 0)
        self.index_row = grown(self.index_row, -1)
        self.served = grown(self.served, 0)
        self.reward_mean = grown(self.reward_mean, self.unseen.reward_mean)
        self.reward_sd = grown(self.reward_sd, self.unseen.reward_sd)
        self.long_term = grown(self.long_term, self.unseen.long_term)

    def apply(self, rows: Iterable[CatalogRow]) -> int:
        """Upsert catalogue rows; returns how many there were. O(rows): Python work per row
        is one dict look-up (and, for a new row, a hash); the arrays are written in bulk."""
        at: list[int] = []
        live: list[bool] = []
        kinds: list[int] = []
        groups: list[int] = []
        added: list[int] = []
        codes = self._group_codes
        for r in rows:
            row = self.row.get(r.item_id)
            if row is None:
                row = len(self.ids)
                self.ids.append(r.item_id)
                self.row[r.item_id] = row
                added.append(row)
            at.append(row)
            live.append(not r.retired)
            kinds.append(KIND_CODES.get(r.kind, 0))
            groups.append(0 if r.group is None else codes.setdefault(r.group, len(codes) + 1))
        if not at:
            return 0
        self.dirty = True
        self._grow(len(self.ids))
        if added:
            new = np.array(added, dtype=np.int64)
            self.hash[new] = [string_hash(self.ids[a]) for a in added]
            if self.index is not None:
                get = self.index.item_row.get
                in_index = np.array([get(self.ids[a], -1) for a in added], dtype=np.int64)
                self.index_row[new] = in_index
                mapped = in_index >= 0
                self.from_index[in_index[mapped]] = new[mapped]
            for a in added:
                s = self._scores.get(self.ids[a])
                if s is not None:
                    self._score(a, s)
        rows_at = np.array(at, dtype=np.int64)
        now_live = np.array(live, dtype=bool)
        was_live = self.live[rows_at]
        self._pending.extend(rows_at[now_live & ~was_live].tolist())
        self.live_count += int(now_live.sum()) - int(was_live.sum())
        self.live[rows_at] = now_live
        self.kind[rows_at] = kinds
        self.group[rows_at] = groups
        if len(self._pending) > PENDING_MAX:
            self.refresh_pools()  # a bulk load: recompute once rather than sample a long list
        return len(at)

    def _score(self, row: int, s: ItemScore) -> None:
        self.served[row] = s.served
        self.reward_mean[row] = s.reward_mean
        self.reward_sd[row] = s.reward_sd
        self.long_term[row] = s.long_term

    def set_index(self, index: _Index | None) -> None:
        """Map every row to its row in `index` (O(rows); once per index version)."""
        self.index = index
        n = len(self.ids)
        if index is None:
            self.index_row[:] = -1
            self.from_index = np.zeros(0, dtype=np.int64)
            return
        get = index.item_row.get
        self.index_row[:n] = np.fromiter((get(i, -1) for i in self.ids), np.int64, count=n)
        self.index_row[n:] = -1
        from_index = np.full(len(index.items), -1, dtype=np.int64)
        mapped = np.flatnonzero(self.index_row[:n] >= 0)
        from_index[self.index_row[mapped]] = mapped
        self.from_index = from_index

    def set_scores(self, scores: Mapping[str, ItemScore], unseen: ItemScore) -> None:
        """Every row's scores from a refresh (O(rows) array work, O(scored) lookups)."""
        self.install_scores(self.score_arrays(scores, unseen))

    def score_arrays(self, scores: Mapping[str, ItemScore], unseen: ItemScore) -> ScoreArrays:
        """New score arrays for every row, built aside (in a worker thread: at a hundred
        thousand scored items this is ~0.1 s that requests must not wait behind)."""
        capacity = len(self.live)
        served = np.zeros(capacity, dtype=np.int64)
        mean = np.full(capacity, unseen.reward_mean)
        sd = np.full(capacity, unseen.reward_sd)
        long_term = np.full(capacity, unseen.long_term)
        get = self.row.get
        rows, values = [], []
        for item, sc in scores.items():
            row = get(item)
            if row is not None and row < capacity:
                rows.append(row)
                values.append((sc.served, sc.reward_mean, sc.reward_sd, sc.long_term))
        if rows:
            at = np.array(rows, dtype=np.int64)
            columns = np.array(values, dtype=np.float64)
            served[at] = columns[:, 0].astype(np.int64)
            mean[at] = columns[:, 1]
            sd[at] = columns[:, 2]
            long_term[at] = columns[:, 3]
        return ScoreArrays(scores, unseen, served, mean, sd, long_term)

    def install_scores(self, new: ScoreArrays) -> None:
        """Swap in arrays from `score_arrays` (rows added meanwhile keep what they had)."""
        capacity = len(self.live)
        built = len(new.served)
        if built < capacity:  # the table grew while they were built
            for name, fill in (
                ("served", 0),
                ("reward_mean", new.unseen.reward_mean),
                ("reward_sd", new.unseen.reward_sd),
                ("long_term", new.unseen.long_term),
            ):
                grown = np.full(capacity, fill, dtype=getattr(new, name).dtype)
                grown[:built] = getattr(new, name)
                grown[built:] = getattr(self, name)[built:]
                setattr(new, name, grown)
        self.unseen = new.unseen
        self._scores = new.scores
        self.served, self.reward_mean = new.served, new.reward_mean
        self.reward_sd, self.long_term = new.reward_sd, new.long_term

    def refresh_pools(self) -> None:
        """The exploration pools, from the rows as they are now (O(rows) array work). Safe in
        a worker thread: the pools are replaced whole, and rows that go live meanwhile stay
        pending, sampled beside them, until the next recomputation."""
        n = len(self.ids)
        self.dirty = False
        taken = len(self._pending)
        live = self.live[:n]
        self.new = np.flatnonzero(live & (self.index_row[:n] < 0))
        self.uncertain = np.flatnonzero(live & (self.served[:n] < UNCERTAIN_BELOW))
        scored = np.flatnonzero(live & (self.served[:n] > 0))
        value = self.reward_mean[scored] + self.w_long_term * self.long_term[scored]
        if len(scored) > COLD_START:
            # Every row at least as good as the COLD_START-th, so equal values at the boundary
            # are decided by id below, not by where the partition happened to put them.
            kth = np.partition(value, len(value) - COLD_START)[len(value) - COLD_START]
            keep = value >= kth
            scored, value = scored[keep], value[keep]
        ranked = sorted(
            zip(scored.tolist(), value.tolist(), strict=True),
            key=lambda rv: (-rv[1], self.ids[rv[0]]),
        )
        self.best = np.array([r for r, _ in ranked[:COLD_START]], dtype=np.int64)
        self._pending = self._pending[taken:]

    # --- reads ---------------------------------------------------------------------------------

    def rows_of(self, items: Iterable[str]) -> NDArray[np.int64]:
        """The rows of `items`, -1 for an id the catalogue has never had."""
        get = self.row.get
        return np.array([get(i, -1) for i in items], dtype=np.int64)

    def explore(self, rng: random.Random) -> NDArray[np.int64]:
        """A request's exploration rows: a sample of the new and of the uncertain, and the
        best. O(sample): `rng.sample` of a range draws positions without building it."""
        pending = np.array(self._pending, dtype=np.int64)
        pending = pending[self.live[pending]]
        new = _sample(self.new, pending[self.index_row[pending] < 0], EXPLORE_NEW, rng)
        uncertain = _sample(
            self.uncertain, pending[self.served[pending] < UNCERTAIN_BELOW], EXPLORE_UNCERTAIN, rng
        )
        return np.concatenate([new, uncertain, self.best])


def _sample(
    pool: NDArray[np.int64], extra: NDArray[np.int64], k: int, rng: random.Random
) -> NDArray[np.int64]:
    """`k` rows drawn without replacement from `pool` followed by `extra`, in O(k)."""
    total = len(pool) + len(extra)
    picks = rng.sample(range(total), min(k, total))
    base = len(pool)
    return np.array([pool[i] if i < base else extra[i - base] for i in picks], dtype=np.int64)
