"""The searches from turned listener vectors are remembered by the vector, never stale."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from gateway.serving import recommendations
from gateway.serving.recommendations import Recommender


class CountingIndex:
    def __init__(self, version: str) -> None:
        self.version = version
        self.searches = 0

    def nearest_rows(
        self, vector: NDArray[np.float64], n: int, *, search_k: int | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        self.searches += 1
        return np.arange(3, dtype=np.int64), vector[:3].copy()


def recommender() -> Recommender:
    nothing = cast(Any, None)
    return Recommender(nothing, nothing, nothing, nothing, nothing, nothing, nothing)


def test_the_same_vector_searches_once_and_another_vector_or_index_again(
    monkeypatch: Any,
) -> None:
    r = recommender()
    index = CountingIndex("v1")
    v = np.array([1.0, 2.0, 3.0])
    first = r._nearest(cast(Any, index), v)
    again = r._nearest(cast(Any, index), v.copy())
    assert index.searches == 1
    assert again is first
    assert not first[0].flags.writeable  # shared: nobody may change it in place
    # A new outcome moves the vector: a new search.
    r._nearest(cast(Any, index), v + 1e-9)
    assert index.searches == 2
    # A new index version: a new search, even for the same vector.
    other = CountingIndex("v2")
    r._nearest(cast(Any, other), v)
    assert other.searches == 1
    # Bounded: the oldest entry goes first.
    monkeypatch.setattr(recommendations, "SEARCHES_KEPT", 2)
    r._nearest(cast(Any, index), v + 2.0)
    r._nearest(cast(Any, index), v)
    assert index.searches == 4
