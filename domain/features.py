"""Personalizer's features as content vectors: the hashing trick over flattened JSON.

Personalizer takes an action's features as a list of free-form JSON objects (`{"genre": "jazz",
"length": {"minutes": 3.5}}`). Segue's items carry an optional fixed-length content vector, which
the index build blends into the learned embeddings (`domain.embeddings.blend_content`), so
features become one: every leaf is a (path, value) pair; a number is its value at the path's
slot, a string or boolean is 1 at the slot of "path=value"; slots and signs come from a stable
hash, so the same features give the same vector in every process and after every restart.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

DIMS = 64


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """(name, weight) of each leaf: numbers keep their value; strings and booleans are named
    with their value and weigh 1 (a category, not a quantity); nulls are absent."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaves(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        # Lists are bags: each element is a feature of the same name.
        for child in value:
            yield from leaves(child, path)
    elif isinstance(value, bool):
        yield f"{path}={str(value).lower()}", 1.0
    elif isinstance(value, int | float):
        if math.isfinite(value):
            yield path, float(value)
    elif isinstance(value, str):
        yield f"{path}={value}", 1.0


def hashed_vector(features: Sequence[Any], dims: int = DIMS) -> tuple[float, ...] | None:
    """`features` as a unit vector of `dims` numbers, or None when they have no leaf (an
    action without features has no content to compare)."""
    vector = [0.0] * dims
    any_leaf = False
    for name, weight in leaves(list(features)):
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "big") % dims
        sign = 1.0 if digest[4] & 1 else -1.0
        vector[slot] += sign * weight
        any_leaf = True
    norm = math.sqrt(sum(v * v for v in vector))
    if not any_leaf or norm == 0.0:
        return None
    return tuple(v / norm for v in vector)
