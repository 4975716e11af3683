"""The exact numpy ALS beside the `implicit` library's, on the same model: quality and fit time.

    python bench/als_libraries.py [--wheel recbole-1.2.1.whl]

Issue #4 asks for the factorisation to be a well-kept library made for it, or numpy, chosen by
measurement; this is the measurement (docs/decisions.md 58). The index builder now uses the
library's conjugate gradient in float32 on one thread (`AlsParams.solver`), and the numpy solve
stays as the reference it is tested against.

Both fit Hu, Koren & Volinsky's implicit-feedback ALS with Segue's parameters (`IndexParams().als`:
64 factors, 15 iterations, regularisation 10, confidence 1 + 2 log1p(w)). `implicit` takes the
confidence itself as the matrix value (its `alpha` scales it; 1 here), so both minimise the same
loss; they differ in the initial factors (each seeds its own generator), in precision (`implicit`
defaults to float32) and in the solver (`implicit` defaults to conjugate gradient, a few steps per
row, instead of an exact solve).

1. MovieLens-100K, leave-last-out as in `bench/movielens.py`: HR@10 and NDCG@10 of exact
   top-10 ranking with seen items excluded, and the fitting time (median of --repeats).
2. A synthetic implicit-feedback matrix the size of a service's affinity projection
   (--users x --items, --nnz interactions, low-rank tastes): the fitting time only.

`implicit` runs with one thread and with every core (`num_threads=0`); numpy's solves are one
64 x 64 system per row, single-threaded (BLAS threads make no difference at that size).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns otherwise; see the docstring

import numpy as np
from movielens import WHEEL, evaluate, leave_last_out, read_wheel, top_k, training_matrix
from numpy.typing import NDArray
from scipy.sparse import csr_matrix

from domain.embeddings import AlsParams, confidence, fit_als
from gateway.analysis.wheels import fetch_wheel
from gateway.index.build import IndexParams

Fit = Callable[
    [NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], int, int], NDArray[np.float64]
]


def numpy_fit(params: AlsParams) -> Fit:
    def fit(
        rows: NDArray[np.int64], cols: NDArray[np.int64], w: NDArray[np.float64], nu: int, ni: int
    ) -> NDArray[np.float64]:
        f = fit_als(rows, cols, w, nu, ni, params)
        scores: NDArray[np.float64] = f.users @ f.items.T
        return scores

    return fit


def implicit_fit(params: AlsParams, *, threads: int, cg: bool, dtype: type) -> Fit:
    from implicit.cpu.als import AlternatingLeastSquares

    def fit(
        rows: NDArray[np.int64], cols: NDArray[np.int64], w: NDArray[np.float64], nu: int, ni: int
    ) -> NDArray[np.float64]:
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            dtype=dtype,
            use_cg=cg,
            iterations=params.iterations,
            num_threads=threads,
            random_state=params.seed,
        )
        matrix = csr_matrix((confidence(w, params.alpha), (rows, cols)), shape=(nu, ni))
        model.fit(matrix, show_progress=False)
        scores: NDArray[np.float64] = (
            np.asarray(model.user_factors, dtype=np.float64)
            @ np.asarray(model.item_factors, dtype=np.float64).T
        )
        return scores

    return fit


def synthetic(
    users: int, items: int, nnz: int, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Low-rank tastes, popularity skew, weights like summed outcome weights (1-6)."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(users, 16))
    trait = rng.normal(size=(items, 16))
    popularity = rng.zipf(1.3, size=items).astype(np.float64)
    per_user = max(1, nnz // users)
    rows, cols = [], []
    for u in range(users):
        candidates = rng.choice(
            items, size=per_user * 4, replace=False, p=popularity / popularity.sum()
        )
        affinity = trait[candidates] @ taste[u]
        chosen = candidates[np.argsort(-affinity)[:per_user]]
        rows.append(np.full(per_user, u))
        cols.append(chosen)
    r = np.concatenate(rows).astype(np.int64)
    c = np.concatenate(cols).astype(np.int64)
    w = rng.integers(1, 7, size=r.size).astype(np.float64)
    return r, c, w


def timed(
    fit: Fit,
    data: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], int, int],
    repeats: int,
) -> tuple[float, NDArray[np.float64]]:
    seconds = []
    scores: NDArray[np.float64] | None = None
    for _ in range(repeats):
        started = time.perf_counter()
        scores = fit(*data)
        seconds.append(time.perf_counter() - started)
    assert scores is not None
    return statistics.median(seconds), scores


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--wheel", type=Path, help="a downloaded recbole-1.2.1 wheel (else fetched)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--nnz", type=int, default=400_000)
    args = ap.parse_args()
    params = IndexParams().als
    cores = os.cpu_count() or 1
    contenders: list[tuple[str, Fit]] = [
        ("numpy, exact solve, float64 (reference)", numpy_fit(replace(params, solver="numpy"))),
        (
            "implicit, exact solve, float64, 1 thread",
            implicit_fit(params, threads=1, cg=False, dtype=np.float64),
        ),
        (
            "implicit, CG, float32, 1 thread",
            implicit_fit(params, threads=1, cg=True, dtype=np.float32),
        ),
        (
            f"implicit, CG, float32, {cores} threads",
            implicit_fit(params, threads=0, cg=True, dtype=np.float32),
        ),
    ]

    with tempfile.TemporaryDirectory(prefix="segue-als-") as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp), WHEEL)
        ratings, items = read_wheel(wheel)
    split = leave_last_out(ratings, items)
    m = training_matrix(split)
    data = (m.rows, m.cols, m.weights, len(m.users), len(m.items))
    print(
        f"MovieLens-100K leave-last-out: {len(m.users)} users, {len(m.items)} items, "
        f"{len(m.weights):,} interactions; {params}"
    )
    print(f"{'':48} {'HR@10':>7} {'NDCG@10':>8} {'fit s':>7}")
    base = None
    for label, fit in contenders:
        seconds, scores = timed(fit, data, args.repeats)
        s = evaluate(top_k(scores, m, split), split.test)
        base = base or seconds
        print(
            f"{label:48} {s.hr:7.4f} {s.ndcg:8.4f} {seconds:7.2f}"
            f"   ({base / seconds:.1f} x numpy's speed)"
        )

    rows, cols, w = synthetic(args.users, args.items, args.nnz, seed=7)
    data = (rows, cols, w, args.users, args.items)
    print(
        f"\nsynthetic: {args.users:,} listeners x {args.items:,} items, {len(w):,} interactions"
        f" (fit only, median of {args.repeats})"
    )
    base = None
    for label, fit in contenders:
        seconds, _ = timed(fit, data, args.repeats)
        base = base or seconds
        print(f"{label:48} fit {seconds:7.2f} s   ({base / seconds:.1f} x numpy's speed)")


if __name__ == "__main__":
    main()
