"""The serving table: rows follow catalogue changes, index swaps and score refreshes, and the
exploration pools are what the definitions say, sampled without walking them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gateway.serving.items import (
    COLD_START,
    EXPLORE_NEW,
    EXPLORE_UNCERTAIN,
    KIND_CODES,
    UNCERTAIN_BELOW,
    CatalogRow,
    ItemScore,
    ItemTable,
    string_hash,
    tiebreak,
    tiebreaks,
)

UNSEEN = ItemScore(0, 0.0, 0.2, 1.5)


class Index:
    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.item_row = {item: i for i, item in enumerate(items)}


def rows(n: int, retired: set[int] | None = None) -> list[CatalogRow]:
    return [
        CatalogRow(f"i{k:04d}", "track" if k % 3 else "episode", f"a{k % 7}", k in (retired or ()))
        for k in range(n)
    ]


def test_rows_follow_changes_and_grow() -> None:
    table = ItemTable(0.2, UNSEEN, capacity=4)
    assert table.apply(rows(10, retired={3})) == 10
    assert len(table) == 10
    assert table.live_count == 9
    assert table.live[:10].tolist() == [k != 3 for k in range(10)]
    assert table.kind[0] == KIND_CODES["episode"]
    assert table.kind[1] == KIND_CODES["track"]
    # One group code per artist.
    assert len({int(g) for g in table.group[:10]}) == 7
    assert table.group[0] == table.group[7]
    table.apply(
        [CatalogRow("i0003", "track", None, False), CatalogRow("i0000", "track", "x", True)]
    )
    assert table.live_count == 9
    assert table.live[3]
    assert not table.live[0]
    assert table.group[3] == 0  # no artist or show
    assert table.rows_of(["i0005", "nope"]).tolist() == [5, -1]
    assert table.reward_sd[9] == UNSEEN.reward_sd
    assert table.long_term[9] == UNSEEN.long_term


def test_index_mapping_both_ways_including_rows_added_after_the_swap() -> None:
    table = ItemTable(0.2, UNSEEN)
    table.apply(rows(5))
    index = Index(["i0004", "i0002", "i0009", "gone"])
    table.set_index(index)
    assert table.index_row[:5].tolist() == [-1, -1, 1, -1, 0]
    assert table.from_index.tolist() == [4, 2, -1, -1]
    table.apply(rows(10)[9:])  # i0009 arrives after the index was loaded
    assert table.index_row[5] == 2
    assert table.from_index[2] == 5
    table.refresh_pools()
    assert sorted(table.new.tolist()) == [0, 1, 3]  # live and not in the index


def test_pools_scores_and_the_best() -> None:
    table = ItemTable(0.5, UNSEEN)
    n = 300
    table.apply(rows(n, retired={7}))
    scores = {
        f"i{k:04d}": ItemScore(k, reward_mean=k / 1000, reward_sd=0.01, long_term=(k % 5) / 10)
        for k in range(1, n)
    }
    table.set_scores(scores, ItemScore(0, 0.0, 0.3, 0.9))
    table.refresh_pools()
    assert table.served[0] == 0
    assert table.reward_sd[0] == 0.3
    assert table.long_term[0] == 0.9
    assert table.served[42] == 42
    assert table.reward_mean[42] == 0.042
    assert sorted(table.uncertain.tolist()) == [k for k in range(UNCERTAIN_BELOW) if k != 7]
    value = {k: k / 1000 + 0.5 * (k % 5) / 10 for k in range(1, n) if k != 7}
    want = sorted(value, key=lambda k: (-value[k], f"i{k:04d}"))[:COLD_START]
    assert table.best.tolist() == want


def test_the_best_breaks_ties_at_the_boundary_by_id() -> None:
    table = ItemTable(0.0, UNSEEN)
    table.apply(rows(COLD_START + 50))
    table.set_scores({f"i{k:04d}": ItemScore(5, 0.1, 0.0, 0.0) for k in range(150)}, UNSEEN)
    table.refresh_pools()
    assert table.best.tolist() == list(range(COLD_START))


def test_explore_samples_without_replacement_and_sees_new_rows_at_once() -> None:
    table = ItemTable(0.2, UNSEEN)
    table.apply(rows(1000))
    table.set_index(Index([f"i{k:04d}" for k in range(500)]))
    table.refresh_pools()
    picked = table.explore(random.Random(1))
    assert len(picked) == EXPLORE_NEW + EXPLORE_UNCERTAIN  # nothing scored: no best yet
    new = picked[:EXPLORE_NEW]
    assert len(set(new.tolist())) == EXPLORE_NEW
    assert (new >= 500).all()
    # The same generator state, the same rows.
    assert (table.explore(random.Random(1)) == picked).all()
    # Rows that went live since the pools were computed are explored before the next refresh.
    table.apply([CatalogRow("fresh", "track", None, False)])
    seen = set()
    for seed in range(200):
        seen.update(table.explore(random.Random(seed)).tolist())
    assert table.row["fresh"] in seen
    # Retired rows may stay in a pool until it is recomputed; requests filter on `live`.
    table.apply([CatalogRow("fresh", "track", None, True)])
    table.refresh_pools()
    assert table.row["fresh"] not in table.new.tolist()


@pytest.mark.parametrize("user", ["u1", "listener-ß", ""])
def test_tiebreaks_are_fixed_per_listener_and_uniform(user: str) -> None:
    items = [f"i{k}" for k in range(2000)]
    hashes = np.array([string_hash(i) for i in items], dtype=np.uint64)
    t = tiebreaks(hashes, string_hash(user))
    assert t.tolist() == [tiebreak(user, i) for i in items]
    assert ((t >= 0) & (t < 1)).all()
    assert 0.45 < t.mean() < 0.55
    other = tiebreaks(hashes, string_hash(user + "x"))
    assert np.corrcoef(t, other)[0, 1] < 0.1


def test_scores_built_aside_are_installed_whole_even_if_the_table_grew_meanwhile() -> None:
    table = ItemTable(0.2, UNSEEN, capacity=4)
    table.apply(rows(4))
    built = table.score_arrays({"i0001": ItemScore(7, 0.5, 0.1, 2.0)}, UNSEEN)
    # Rows arrive while the arrays are built (in a worker thread, in the gateway).
    table.apply([CatalogRow(f"late{k}", "track", None, False) for k in range(6)])
    table.install_scores(built)
    assert len(table.served) == len(table.live)
    assert table.served[1] == 7
    assert table.reward_mean[1] == 0.5
    assert table.reward_sd[table.row["late5"]] == UNSEEN.reward_sd
    # Rows that went live while the pools were being recomputed stay pending, not lost.
    table.refresh_pools()
    assert table.row["late5"] in table.uncertain.tolist()
