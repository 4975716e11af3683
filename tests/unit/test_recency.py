"""The recency-weighted listener vector: weights by age and sign, and its blend with the profile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from domain.recency import RecencyParams, blend, recency_vector, recency_weights

ITEMS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])


def test_weights_decay_with_age_from_the_latest() -> None:
    p = RecencyParams(decay=5.0, floor=0.2)
    w = recency_weights([1, 1, 1], p)
    assert w.tolist() == pytest.approx([1.2, 0.2 + math.exp(-1 / 5), 0.2 + math.exp(-2 / 5)])
    assert np.all(np.diff(w) < 0)


def test_skips_and_dislikes_count_against_and_neutral_outcomes_not_at_all() -> None:
    # Signs come from the affinity weight: -0.5 (a quick skip), 0 (an impression), 3 (a follow).
    w = recency_weights([-0.5, 0.0, 3.0], RecencyParams(decay=1.0))
    assert w[0] == pytest.approx(-1.0)
    assert w[1] == 0.0
    assert w[2] == pytest.approx(math.exp(-2))


def test_the_vector_leans_towards_what_was_played_last() -> None:
    p = RecencyParams(decay=1.0)
    # Latest first: item 1 just now, item 0 two plays ago.
    v = recency_vector(ITEMS, np.array([1, 0]), [1, 1], p)
    assert v is not None
    assert v @ ITEMS[1] > v @ ITEMS[0]
    # A skipped item pushes the vector away from itself.
    skipped = recency_vector(ITEMS, np.array([0, 1]), [-1, 1], p)
    assert skipped is not None
    assert skipped @ ITEMS[0] < 0


def test_only_the_configured_number_of_items_is_read() -> None:
    p = RecencyParams(decay=1.0, items=1)
    v = recency_vector(ITEMS, np.array([1, 0]), [1, 1], p)
    assert v is not None
    assert v.tolist() == [0.0, 1.0]


def test_no_direction_is_none() -> None:
    p = RecencyParams()
    assert recency_vector(ITEMS, np.zeros(0, dtype=np.int64), [], p) is None
    assert recency_vector(ITEMS, np.array([3]), [1], p) is None  # a zero vector (never fitted)
    assert recency_vector(ITEMS, np.array([0]), [0], p) is None  # nothing done with it


def test_blend_keeps_the_profile_length_and_turns_by_the_share() -> None:
    x = np.array([3.0, 0.0])
    r = np.array([0.0, 10.0])
    half = blend(x, r, RecencyParams(blend=0.5), scale=1.0)
    assert half is not None
    assert half.tolist() == pytest.approx([1.5, 1.5])
    whole = blend(x, r, RecencyParams(blend=1.0), scale=1.0)
    assert whole is not None
    assert whole.tolist() == pytest.approx([0.0, 3.0])
    # Off, or nothing recent: the profile as it was.
    assert blend(x, r, RecencyParams(blend=0.0), scale=1.0) is x
    assert blend(x, None, RecencyParams(), scale=1.0) is x


def test_without_a_profile_the_recent_direction_at_the_given_length() -> None:
    v = blend(None, np.array([0.0, 10.0]), RecencyParams(), scale=2.0)
    assert v is not None
    assert v.tolist() == pytest.approx([0.0, 2.0])
    assert blend(None, None, RecencyParams(), scale=2.0) is None


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("blend", 1.5, "blend"),
        ("blend", -0.1, "blend"),
        ("decay", 0.0, "decay"),
        ("floor", -1.0, "floor"),
        ("items", 0, "items"),
    ],
)
def test_bad_terms_are_refused(field: str, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RecencyParams(**{field: value})  # type: ignore[arg-type]
