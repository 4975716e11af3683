"""A longer soak of the fault scenarios the test suite runs briefly (tests/faults/): clients post
outcomes and recommendations through a real `segue serve` against a PostgreSQL cluster of its
own while, every few seconds, the gateway is SIGKILLed and restarted or PostgreSQL is stopped
(fast or immediate), kept down and started again. At the end every request answered 2xx must be
in the log exactly once and the projections must equal versions rebuilt from zero; prints one
line with the faults injected and survived and the acknowledged events checked.

    python bench/fault_soak.py [--minutes 5] [--every 6] [--down 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.store.database import migrate
from tests.faults.helpers import (
    Gateway,
    Load,
    assert_acknowledged_stored_once,
    make_key,
    private_cluster,
    seed_catalogue,
    wait_until,
)
from tests.faults.projections import assert_equal_to_rebuilds, caught_up


async def soak(minutes: float, every: float, down: float, seed: int) -> None:
    rng = random.Random(seed)
    faults: Counter[str] = Counter()
    with private_cluster() as cluster, tempfile.TemporaryDirectory() as data:
        admin = await asyncpg.connect(cluster.url())
        await admin.execute("CREATE DATABASE segue")
        await admin.close()
        db_url = cluster.url("segue")
        await migrate(db_url)
        key = await make_key(db_url)
        gateway = Gateway(db_url, Path(data), SEGUE_KEY_CACHE_SECONDS="3600")
        async with gateway:
            await seed_catalogue(gateway.base_url, key, 200)
            load = Load(gateway.base_url, key, items=200, users=500)
            end = time.monotonic() + minutes * 60
            async with load.running(outcome_clients=4, recommendation_clients=2):
                while time.monotonic() < end:
                    await asyncio.sleep(rng.uniform(every / 2, every * 1.5))
                    fault = rng.choice(["gateway SIGKILL", "postgres fast", "postgres immediate"])
                    if fault == "gateway SIGKILL":
                        gateway.kill()
                        await asyncio.sleep(rng.uniform(0.1, 1.0))
                        await gateway.start()
                    else:
                        await asyncio.to_thread(cluster.stop, fault.split()[1])
                        await asyncio.sleep(down)
                        await asyncio.to_thread(cluster.start)
                    faults[fault] += 1
                    print(
                        f"{fault} ({sum(faults.values())}), {len(load.acked_events)} events "
                        f"acknowledged",
                        file=sys.stderr,
                    )
            assert set(load.statuses) <= {200, 503}, load.statuses
            conn = await asyncpg.connect(db_url)
            try:
                checked = await assert_acknowledged_stored_once(conn, load)
                await wait_until(lambda: caught_up(conn), "the projections to catch up", 300)
                events = await assert_equal_to_rebuilds(db_url, conn)
            finally:
                await conn.close()
    injected = sum(faults.values())
    print(
        f"faults injected {injected} ({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}), "
        f"survived {injected}; acknowledged events checked {checked} (in the log {events}); "
        f"answers {dict(load.statuses)}; requests without an answer "
        f"{sum(load.failures.values())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=6.0, help="seconds between faults, about")
    parser.add_argument("--down", type=float, default=3.0, help="seconds PostgreSQL stays down")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(soak(args.minutes, args.every, args.down, args.seed))


if __name__ == "__main__":
    main()
