"""Validation on real logs: the Open Bandit Dataset sample imported as Segue slates and clicks,
evaluated by `segue evaluate --json`, equals obp's formulas computed on the CSV with numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from gateway.analysis.obd import (
    ObdLog,
    best_items,
    compare,
    dense,
    empirical_distribution,
    fetch_wheel,
    import_obd,
    read_obd,
    reference_estimates,
    write_target_csv,
)
from gateway.projections.catalog import CatalogProjection
from gateway.store.postgres import PostgresEventStore

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SEGUE_CACHE_DIR", Path.home() / ".cache" / "segue"))
BOOTSTRAP = 200


@pytest.fixture(scope="module")
def wheel() -> Path:
    try:
        return fetch_wheel(CACHE)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the obp==0.4.1 wheel (the Open Bandit Dataset) cannot be downloaded: {exc}")


def evaluate(db_url: str, tmp_path: Path, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "evaluate", "--reward", "click", "--json", *args],
        cwd=ROOT,
        env={**os.environ, "SEGUE_DATABASE_URL": db_url, "SEGUE_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def check(got: dict[str, object], want: dict[str, tuple[float, float, float] | None]) -> None:
    worst, problems = compare(got, want)
    assert not problems, problems
    assert worst <= 1e-9, f"largest difference {worst}"


@pytest.mark.timeout(180)
async def test_obd_estimates_equal_numpy(
    wheel: Path, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    bts: ObdLog = read_obd(wheel, "bts", "all")
    random_log = read_obd(wheel, "random", "all")
    assert bts.n_rounds == 10_000
    # The gateway's store, keeping the catalogue inline as the app does.
    store = PostgresEventStore(pool, inline=[CatalogProjection()])
    await store.start()
    try:
        appended = await import_obd(store, bts)
        assert appended == bts.n_actions + bts.n_rounds + int(bts.reward.sum())
        assert await import_obd(store, bts) == 0  # idempotent
    finally:
        await store.close()

    uniform = np.full((bts.n_actions, 3), 1.0 / bts.n_actions)
    got = evaluate(db_url, tmp_path, "--target", "uniform", "--bootstrap", str(BOOTSTRAP))
    assert got["rounds"] == bts.n_rounds
    assert got["replay"]["estimate"] is None  # type: ignore[index]  # uniform is never certain
    check(got, reference_estimates(bts, dense(uniform, bts.n_rounds), n_bootstrap=BOOTSTRAP))

    # The other behaviour policy's action distribution, with clipping, switch and cross-fitting.
    other = empirical_distribution(random_log)
    path = tmp_path / "random.csv"
    write_target_csv(path, bts, other)
    options = ["--clip", "40", "--tau", "3", "--folds", "3", "--seed", "7"]
    got = evaluate(db_url, tmp_path, "--target", str(path), "--bootstrap", str(BOOTSTRAP), *options)
    want = reference_estimates(
        bts, dense(other, bts.n_rounds), clip=40, tau=3, folds=3, seed=7, n_bootstrap=BOOTSTRAP
    )
    check(got, want)

    # A deterministic policy: the replay method is defined.
    best = best_items(random_log)
    path = tmp_path / "best.csv"
    write_target_csv(path, bts, best)
    got = evaluate(db_url, tmp_path, "--target", str(path), "--bootstrap", str(BOOTSTRAP))
    want = reference_estimates(bts, dense(best, bts.n_rounds), n_bootstrap=BOOTSTRAP)
    assert want["replay"] is not None
    check(got, want)
    # The logging policy's own value is the click rate of the sample.
    assert got["logged"]["estimate"] == pytest.approx(bts.reward.mean(), abs=1e-12)  # type: ignore[index]
