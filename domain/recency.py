"""What a listener played last, as a direction in the embedding space.

The last index build's listener vector is the long-term profile: every item the listener ever
touched, with no notion of order. Taste drifts, and what was played last predicts what is played
next better than what was played long ago (on MovieLens-100K, leave-last-out by time, the
gateway's ALS scores HR@10 0.150 as a profile and 0.21 blended with the recency vector below:
docs/decisions.md, "Listener state with order").

The recency vector is the recency-weighted sum of the recent items' vectors: item i, played
`age` items ago (0 is the last), weighs `floor + exp(-age / decay)`, with the sign of what the
listener did with it, so a skipped or disliked item pushes the vector away from itself. Its dot
product with a candidate is then a weighted sum of item-to-item similarities, the "because you
just played" signal. It is blended with the long-term vector at the long-term vector's length,
so affinity stays on the scale the policy's other terms were tuned against:

    v = (1 - blend) * x + blend * |x| * r / |r|

A listener the last fit does not know has only the fold-in of their history as `x`, or nothing:
then the recent direction alone stands in, at a length the caller gives (the gateway's: the
median length of the index's listener vectors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RecencyParams:
    """How the recent items shape the listener vector. `blend` 0 turns it off."""

    blend: float = 0.6
    decay: float = 3.0  # items: the weight of an item played `decay` items ago is 1/e of the last's
    floor: float = 0.0  # the weight every recent item keeps, however old
    items: int = 50  # how many of the latest items are read

    def __post_init__(self) -> None:
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError("recency blend must be in [0, 1]")
        if not self.decay > 0.0:
            raise ValueError("recency decay must be positive")
        if self.floor < 0.0:
            raise ValueError("recency floor must not be negative")
        if self.items < 1:
            raise ValueError("recency items must be at least 1")

    @property
    def enabled(self) -> bool:
        return self.blend > 0.0


def recency_weights(signs: Sequence[float] | NDArray[np.float64], p: RecencyParams) -> Vector:
    """The weight of each recent item, latest first: `floor + exp(-age / decay)` at age 0, 1,
    ..., times the item's sign (+1 liked or played, -1 skipped or disliked, 0 neither)."""
    s = np.sign(np.asarray(signs, dtype=np.float64))
    age = np.arange(len(s), dtype=np.float64)
    weights: Vector = (p.floor + np.exp(-age / p.decay)) * s
    return weights


def recency_vector(
    item_vectors: NDArray[np.float64],
    rows: NDArray[np.int64],
    signs: Sequence[float] | NDArray[np.float64],
    p: RecencyParams,
) -> Vector | None:
    """The recency-weighted sum of the vectors of `rows` (item rows, latest first), or None when
    nothing in it has a direction (no rows, or every weight or vector zero)."""
    if len(rows) == 0:
        return None
    rows = rows[: p.items]
    weights = recency_weights(np.asarray(signs, dtype=np.float64)[: p.items], p)
    vector: Vector = weights @ item_vectors[rows]
    if not np.any(vector):
        return None
    return vector


def blend(
    long_term: Vector | None, recent: Vector | None, p: RecencyParams, scale: float
) -> Vector | None:
    """The listener vector served: `long_term` turned towards `recent` by `p.blend`, at the
    long-term vector's length (see the module docstring). Without a long-term vector the recent
    direction alone, at length `scale` (the caller's typical vector length)."""
    if recent is None or not p.enabled:
        return long_term
    direction = recent / np.linalg.norm(recent)
    if long_term is None or not np.any(long_term):
        out: Vector = direction * scale
        return out
    mixed: Vector = (1.0 - p.blend) * long_term + p.blend * np.linalg.norm(long_term) * direction
    return mixed
