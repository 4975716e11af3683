"""Implicit ALS: reproducible, recovers planted structure, folds in new listeners; the library
solver the index builder uses agrees with the exact numpy reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from domain.embeddings import AlsParams, blend_content, fit_als, fold_in


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Two taste groups: listeners 0-29 play items 0-19, listeners 30-59 play items 20-39."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(60):
        pool = range(0, 20) if u < 30 else range(20, 40)
        for i in rng.choice(list(pool), size=8, replace=False):
            users.append(u)
            items.append(int(i))
    return np.array(users), np.array(items), np.ones(len(users)), 60, 40


BASE = AlsParams(factors=8, iterations=8, regularization=0.1, alpha=10.0, seed=3)


@pytest.fixture(params=["implicit", "numpy"])
def params(request: pytest.FixtureRequest) -> AlsParams:
    return replace(BASE, solver=request.param)


def test_same_seed_same_factors(params: AlsParams) -> None:
    u, i, w, nu, ni = planted()
    a = fit_als(u, i, w, nu, ni, params)
    b = fit_als(u, i, w, nu, ni, params)
    assert np.array_equal(a.users, b.users)
    assert np.array_equal(a.items, b.items)


def test_listeners_prefer_their_own_group(params: AlsParams) -> None:
    u, i, w, nu, ni = planted()
    f = fit_als(u, i, w, nu, ni, params)
    scores = f.users @ f.items.T
    first, second = scores[:30], scores[30:]
    assert (first[:, :20].mean(axis=1) > first[:, 20:].mean(axis=1)).all()
    assert (second[:, 20:].mean(axis=1) > second[:, :20].mean(axis=1)).all()


def test_fold_in_places_a_new_listener_with_their_group(params: AlsParams) -> None:
    u, i, w, nu, ni = planted()
    f = fit_als(u, i, w, nu, ni, params)
    vector = fold_in(f.items, np.array([21, 25, 33]), np.ones(3), params)
    scores = f.items @ vector
    assert scores[20:].mean() > scores[:20].mean()


def test_negative_weights_are_not_preferences(params: AlsParams) -> None:
    u, i, w, nu, ni = planted()
    w = w.copy()
    w[u == 0] = -1.0  # listener 0 only skipped things
    f = fit_als(u, i, w, nu, ni, params)
    # Only skips: the model knows nothing of listener 0, exactly as of one never seen.
    assert not f.users[0].any()
    assert np.linalg.norm(f.users[1:30], axis=1).min() > 0


def test_content_vectors_let_an_unplayed_item_reach_the_right_listeners(params: AlsParams) -> None:
    u, i, w, nu, ni = planted()
    f = fit_als(u, i, w, nu, ni + 1, params)  # item 40 exists but nobody played it
    rng = np.random.default_rng(9)
    first, second = rng.normal(size=16), rng.normal(size=16)
    content: list[list[float] | None] = [
        list(first + rng.normal(scale=0.1, size=16))
        if k < 20
        else list(second + rng.normal(scale=0.1, size=16))
        for k in range(40)
    ]
    content.append(list(first))  # the new item sounds like the first group's
    blended = blend_content(f, content, u, i, w, weight=1.0, dims=8, seed=1)
    assert blended.items.shape == (41, params.factors + 8)
    new = blended.items[40]
    assert (blended.users[:30] @ new).mean() > (blended.users[30:] @ new).mean()
    # Without content nothing changes.
    assert blend_content(f, [None] * 41, u, i, w, 1.0, 8, 1) is f


def test_content_vectors_count_by_direction_even_at_the_ends_of_float_range(
    params: AlsParams,
) -> None:
    """Found by schemathesis: a client's vector of 1e300s overflowed the norm and failed every
    index build. Only direction counts, so huge, tiny and ordinary vectors of one direction blend
    identically, and nothing overflows (warnings are errors here)."""
    u, i, w, nu, ni = planted()
    f = fit_als(u, i, w, nu, ni, params)
    rng = np.random.default_rng(5)
    base = [list(rng.normal(size=16)) for _ in range(ni)]
    scales = [1e300, 1e-300, 1.0, 1.0] * 10
    scaled = [list(np.array(v) * s) for v, s in zip(base, scales, strict=True)]
    scaled[3] = [5e-324] + [0.0] * 15  # the smallest subnormal: still a direction
    base[3] = [1.0] + [0.0] * 15
    a = blend_content(f, base, u, i, w, weight=1.0, dims=8, seed=1)
    b = blend_content(f, scaled, u, i, w, weight=1.0, dims=8, seed=1)
    assert np.isfinite(b.items).all()
    assert np.isfinite(b.users).all()
    np.testing.assert_allclose(b.items, a.items, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.users, a.users, rtol=1e-9, atol=1e-12)


def test_an_item_nobody_liked_has_a_zero_vector(params: AlsParams) -> None:
    u, i, w, nu, ni = planted()
    f = fit_als(u, i, w, nu, ni + 2, params)  # items 40 and 41: never played
    assert not f.items[40:].any()
    assert np.linalg.norm(f.items[:40], axis=1).min() > 0


def test_the_library_solver_agrees_with_the_exact_solve() -> None:
    """At the index builder's parameters, on low-rank tastes: the same scores up to the
    conjugate gradient's few steps, and mostly the same top 10 per listener."""
    rng = np.random.default_rng(1)
    n_users, n_items = 400, 300
    taste, trait = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    rows, cols = [], []
    for u in range(n_users):
        top = np.argsort(-(trait @ taste[u] + rng.gumbel(size=n_items)))[:25]
        rows += [u] * 25
        cols += list(top)
    r, c = np.array(rows), np.array(cols)
    w = rng.integers(1, 5, size=len(r)).astype(np.float64)
    exact = fit_als(r, c, w, n_users, n_items, AlsParams(solver="numpy"))
    library = fit_als(r, c, w, n_users, n_items, AlsParams(solver="implicit"))
    a, b = exact.users @ exact.items.T, library.users @ library.items.T
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
    a[r, c] = b[r, c] = -np.inf
    overlap = np.mean(
        [
            len(set(np.argsort(-a[u])[:10]) & set(np.argsort(-b[u])[:10])) / 10
            for u in range(n_users)
        ]
    )
    assert overlap > 0.8
