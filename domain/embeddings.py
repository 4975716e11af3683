"""Implicit-feedback matrix factorisation (Hu, Koren & Volinsky, ICDM 2008) in numpy.

The affinity projection gives, per (listener, item), a weight w (summed reward-definition weights
of every outcome). Preference p = 1 if w > 0 else 0; confidence c = 1 + alpha * log1p(max(w, 0)).
Alternating least squares solves, for each listener u,

    x_u = (Y^T Y + Y^T (C_u - I) Y + reg I)^-1 Y^T C_u p_u

using only the items u touched (the Y^T Y term is shared), then the same for items. Seeded, so a
build is reproducible. A new listener gets the confidence-weighted mean of the vectors of what
they touched, or nothing (then the policy falls back to reward-based candidates).

Two solvers fit that same model. `implicit` (the default) is the `implicit` library's conjugate
gradient ALS in float32 on one thread; `numpy` is the exact solve above, one row at a time, kept
as the reference the library is checked against. `bench/als_libraries.py` chose between them:
on MovieLens-100K both give the same HR@10, and the library fits 3-9 times faster (docs/
decisions.md 58).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

Matrix = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Factors:
    users: Matrix  # (n_users, k)
    items: Matrix  # (n_items, k)


@dataclass(frozen=True, slots=True)
class AlsParams:
    # Chosen on MovieLens-100K validation folds (each user's 2nd-4th last rating held out):
    # strong regularisation and mild confidence beat alpha 20 / reg 0.05 (bench/movielens.py).
    factors: int = 64
    iterations: int = 15
    regularization: float = 10.0
    alpha: float = 2.0
    seed: int = 42
    solver: Literal["implicit", "numpy"] = "implicit"


def confidence(weights: NDArray[np.float64], alpha: float) -> NDArray[np.float64]:
    return 1.0 + alpha * np.log1p(np.clip(weights, 0.0, None))


def _solve_side(
    fixed: Matrix,
    rows: Sequence[tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]],
    reg: float,
) -> Matrix:
    k = fixed.shape[1]
    gram = fixed.T @ fixed + reg * np.eye(k)
    out = np.zeros((len(rows), k))
    for r, (idx, conf, pref) in enumerate(rows):
        if idx.size == 0:
            continue
        y = fixed[idx]
        a = gram + (y.T * (conf - 1.0)) @ y
        b = (y.T * conf) @ pref
        out[r] = np.linalg.solve(a, b)
    return out


def _by_row(
    row: NDArray[np.int64],
    col: NDArray[np.int64],
    conf: NDArray[np.float64],
    pref: NDArray[np.float64],
    n_rows: int,
) -> list[tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]]:
    order = np.argsort(row, kind="stable")
    row, col, conf, pref = row[order], col[order], conf[order], pref[order]
    bounds = np.searchsorted(row, np.arange(n_rows + 1))
    return [
        (
            col[bounds[i] : bounds[i + 1]],
            conf[bounds[i] : bounds[i + 1]],
            pref[bounds[i] : bounds[i + 1]],
        )
        for i in range(n_rows)
    ]


def fit_als(
    user_idx: NDArray[np.int64],
    item_idx: NDArray[np.int64],
    weights: NDArray[np.float64],
    n_users: int,
    n_items: int,
    params: AlsParams = AlsParams(),
) -> Factors:
    """Factorise the sparse matrix given as (user, item, weight) triples of dense indices."""
    if params.solver == "implicit":
        return _fit_implicit(user_idx, item_idx, weights, n_users, n_items, params)
    return _fit_numpy(user_idx, item_idx, weights, n_users, n_items, params)


def _fit_numpy(
    user_idx: NDArray[np.int64],
    item_idx: NDArray[np.int64],
    weights: NDArray[np.float64],
    n_users: int,
    n_items: int,
    params: AlsParams,
) -> Factors:
    rng = np.random.default_rng(params.seed)
    conf = confidence(weights, params.alpha)
    pref = (weights > 0).astype(np.float64)
    users = _by_row(user_idx, item_idx, conf, pref, n_users)
    items = _by_row(item_idx, user_idx, conf, pref, n_items)
    k = params.factors
    x = rng.normal(scale=0.01, size=(n_users, k))
    y = rng.normal(scale=0.01, size=(n_items, k))
    for _ in range(params.iterations):
        x = _solve_side(y, users, params.regularization)
        y = _solve_side(x, items, params.regularization)
    return Factors(users=x, items=y)


def _fit_implicit(
    user_idx: NDArray[np.int64],
    item_idx: NDArray[np.int64],
    weights: NDArray[np.float64],
    n_users: int,
    n_items: int,
    params: AlsParams,
) -> Factors:
    # The library takes the confidence itself as the matrix value (alpha 1) and reads every
    # stored value as a preference of 1, so only positive weights are given: a weight <= 0 has
    # confidence 1 and preference 0 in the model, exactly what an absent entry has.
    liked = weights > 0
    matrix = csr_matrix(
        (confidence(weights[liked], params.alpha), (user_idx[liked], item_idx[liked])),
        shape=(n_users, n_items),
        dtype=np.float32,
    )
    # BLAS threads fight the library's own row threads (it warns when built, and fits ~10 x
    # slower), so both the model and its fit see one BLAS thread.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            dtype=np.float32,
            use_cg=True,
            iterations=params.iterations,
            # One thread: a build runs beside the requests of the same process, and one thread
            # is already ~8 x the numpy solve (two gave ~9 x on two cores).
            num_threads=1,
            random_state=params.seed,
        )
        model.fit(matrix, show_progress=False)
    x = np.asarray(model.user_factors, dtype=np.float64)
    y = np.asarray(model.item_factors, dtype=np.float64)
    # Conjugate gradient from random starting factors leaves a row with no data near zero but
    # not at it; the exact solve gives zero, which is what "knows nothing" must be.
    x[np.diff(matrix.indptr) == 0] = 0.0
    y[np.bincount(matrix.indices, minlength=n_items) == 0] = 0.0
    return Factors(users=x, items=y)


def fold_in(
    item_vectors: Matrix,
    idx: NDArray[np.int64],
    weights: NDArray[np.float64],
    params: AlsParams = AlsParams(),
) -> NDArray[np.float64]:
    """A vector for a listener the model was not fitted on, from the items they touched: one
    ALS half-step against the fixed item vectors."""
    conf = confidence(weights, params.alpha)
    pref = (weights > 0).astype(np.float64)
    vector: NDArray[np.float64] = _solve_side(
        item_vectors, [(idx, conf, pref)], params.regularization
    )[0]
    return vector


def blend_content(
    factors: Factors,
    content: Sequence[Sequence[float] | None],
    user_idx: NDArray[np.int64],
    item_idx: NDArray[np.int64],
    weights: NDArray[np.float64],
    weight: float,
    dims: int,
    seed: int,
) -> Factors:
    """Append content to the learned factors, so a dot product adds `weight` x content similarity.

    Items' content vectors (of the most common length; others count as missing) are reduced to
    `dims` by a seeded Gaussian random projection and normalised; an item without one gets zeros.
    A listener's content part is the normalised, preference-weighted mean of what they liked. New
    items with a content vector thereby reach listeners of similar items before anyone played them.
    """
    lengths = [len(c) for c in content if c]
    if not lengths or weight <= 0:
        return factors
    width = max(set(lengths), key=lengths.count)
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(width, min(dims, width))) / np.sqrt(min(dims, width))
    raw = np.zeros((len(content), width))
    has = np.zeros(len(content), dtype=bool)
    for i, c in enumerate(content):
        if c and len(c) == width:
            row = np.asarray(c, dtype=np.float64)
            # Only a vector's direction counts: scaling by its largest component first keeps
            # the projection and the norm finite for any finite input (1e300 would overflow).
            peak = np.max(np.abs(row))
            raw[i] = row / peak if peak > 0 else row
            has[i] = True
    projected = raw @ projection
    norms = np.linalg.norm(projected, axis=1, keepdims=True)
    items = np.where(norms > 0, projected / np.where(norms > 0, norms, 1.0), 0.0)
    liked = weights > 0
    users = np.zeros((factors.users.shape[0], items.shape[1]))
    np.add.at(users, user_idx[liked], items[item_idx[liked]] * weights[liked, None])
    unorm = np.linalg.norm(users, axis=1, keepdims=True)
    users = np.where(unorm > 0, users / np.where(unorm > 0, unorm, 1.0), 0.0)
    scale = np.sqrt(weight)
    return Factors(
        users=np.hstack([factors.users, users * scale]),
        items=np.hstack([factors.items, items * scale]),
    )
