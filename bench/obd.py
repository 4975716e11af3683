"""Off-policy evaluation on real logs: the Open Bandit Dataset sample through Segue.

    python bench/obd.py [--policy bts] [--campaign all] [--bootstrap 1000]
                        [--url postgresql://...] [--cache ~/.cache/segue]

Fetches the `obp==0.4.1` wheel into the cache folder (`pip download --no-deps`), reads the
chosen behaviour policy's sample straight from it, makes a fresh database, appends the sample
through the event store as served slates with their propensities and click outcomes (see
`gateway/obd.py` for the mapping), then runs `segue evaluate --json --reward click` (a real
process, the CLI's own code path) for three targets:

  uniform    a uniform slate of the 80 items;
  other      the other behaviour policy's action distribution per position (a CSV target),
             with --clip 40 --tau 3 --folds 3;
  best       a deterministic policy: the other log's best item per position (a CSV target).

and prints every estimator's estimate and interval beside an independent numpy computation of
obp's formulas on the CSV (`gateway.analysis.obd.reference_estimates`), with the largest absolute
difference over every estimate and bound: the one figure this benchmark exists for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from gateway.analysis.obd import (
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
from gateway.store.database import create_pool
from gateway.store.postgres import PostgresEventStore

from _common import ROOT, add_url_argument, throwaway_database


def evaluate(url: str, args: list[str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "evaluate", "--reward", "click", "--json", *args],
        cwd=ROOT,
        env={**os.environ, "SEGUE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    out: dict[str, object] = json.loads(result.stdout)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_url_argument(ap)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "segue")
    ap.add_argument("--policy", choices=["bts", "random"], default="bts")
    ap.add_argument("--campaign", choices=["all", "men", "women"], default="all")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()

    wheel = fetch_wheel(args.cache)
    log = read_obd(wheel, args.policy, args.campaign)
    other = read_obd(wheel, "random" if args.policy == "bts" else "bts", args.campaign)
    async with throwaway_database(args.url) as url:
        pool = await create_pool(url)
        store = PostgresEventStore(pool, inline=[CatalogProjection()])
        await store.start()
        try:
            appended = await import_obd(store, log)
        finally:
            await store.close()
            await pool.close()
        print(
            f"OBD {args.policy}/{args.campaign}: {log.n_rounds} impressions, "
            f"{int(log.reward.sum())} clicks, {appended} events appended"
        )
        b = str(args.bootstrap)
        with tempfile.TemporaryDirectory() as folder:
            other_csv = Path(folder) / "other.csv"
            best_csv = Path(folder) / "best.csv"
            other_dist = empirical_distribution(other)
            best = best_items(other)
            write_target_csv(other_csv, log, other_dist)
            write_target_csv(best_csv, log, best)
            uniform = np.full((log.n_actions, 3), 1.0 / log.n_actions)
            runs = [
                (
                    "uniform",
                    ["--target", "uniform", "--bootstrap", b],
                    reference_estimates(
                        log, dense(uniform, log.n_rounds), n_bootstrap=args.bootstrap
                    ),
                ),
                (
                    f"other ({other.policy})",
                    [
                        "--target",
                        str(other_csv),
                        "--bootstrap",
                        b,
                        "--clip",
                        "40",
                        "--tau",
                        "3",
                        "--folds",
                        "3",
                    ],
                    reference_estimates(
                        log,
                        dense(other_dist, log.n_rounds),
                        clip=40,
                        tau=3,
                        folds=3,
                        n_bootstrap=args.bootstrap,
                    ),
                ),
                (
                    "best",
                    ["--target", str(best_csv), "--bootstrap", b],
                    reference_estimates(log, dense(best, log.n_rounds), n_bootstrap=args.bootstrap),
                ),
            ]
            worst_all = 0.0
            for label, cli_args, want in runs:
                got = evaluate(url, cli_args)
                worst, problems = compare(got, want)
                worst_all = max(worst_all, worst)
                print(f"\ntarget {label}: logged click rate {log.reward.mean():.6f}")
                print(f"{'estimator':<10} {'segue':>12} {'numpy':>12} {'95% CI (segue)':>26}")
                for est, ref in want.items():
                    entry = got[est]
                    assert isinstance(entry, dict)
                    value = entry["estimate"]
                    ci = entry["ci"]
                    shown = "-" if value is None else f"{value:.6f}"
                    ref_shown = "-" if ref is None else f"{ref[0]:.6f}"
                    ci_shown = "-" if ci is None else f"[{ci[0]:.6f}, {ci[1]:.6f}]"
                    print(f"{est:<10} {shown:>12} {ref_shown:>12} {ci_shown:>26}")
                if problems:
                    print("DISAGREEMENTS:", problems)
                print(f"max |segue - numpy| over estimates and bounds: {worst:.3e}")
        print(f"\nmax |segue - numpy| over all targets: {worst_all:.3e}")


if __name__ == "__main__":
    asyncio.run(main())
