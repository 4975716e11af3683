"""What the benchmarks share: the server they run on, a throw-away database there, a key, a real
`segue serve` to talk to, and the synthetic log two of them load.

The scripts are run by path (`python bench/x.py`), which puts this folder first on sys.path, so
they `import _common`; not a benchmark itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from domain.events import OutcomeKind
from gateway.client import SegueClient
from gateway.http.auth import Scope, create_key
from gateway.store.database import migrate

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"  # plots; git ignores it
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# The columns of `events` that a benchmark's COPY fills, metadata last (the rest have defaults).
EVENT_COLUMNS = (
    "stream_id",
    "stream_version",
    "event_id",
    "event_type",
    "schema_version",
    "payload",
    "metadata",
)


def add_url_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--url`: the PostgreSQL server to run on, $SEGUE_BENCH_DATABASE_URL or the local one."""
    parser.add_argument(
        "--url", default=os.environ.get("SEGUE_BENCH_DATABASE_URL", DEFAULT_URL), help=help
    )


def with_db(url: str, name: str) -> str:
    """`url` with its database replaced by `name`."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def throwaway_database(
    server_url: str, *, migrated: bool = True, keep: bool = False
) -> AsyncIterator[str]:
    """A new database `segue_bench_<random>` on the server, migrated unless told otherwise; its
    URL. Dropped when the block ends, however it ends, unless `keep` (then its name is printed)."""
    name = f"segue_bench_{secrets.token_hex(4)}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        url = with_db(server_url, name)
        if migrated:
            await migrate(url)
        yield url
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def bench_key(url: str) -> str:
    """A new API key named `bench` with every scope, in the database at `url`."""
    conn = await asyncpg.connect(url)
    try:
        _, key = await create_key(conn, "bench", frozenset(Scope))
    finally:
        await conn.close()
    return key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(
    db_url: str,
    key: str,
    *,
    timeout: float,  # noqa: ASYNC109 - the client's per-request timeout, not this block's
    settings: Mapping[str, str] | None = None,
    stop_timeout: float = 60.0,
) -> AsyncIterator[SegueClient]:
    """A real `segue serve` on a free port over `db_url`, in a process of its own that inherits
    this environment (so `SEGUE_POLICY_*` there reach it) plus `settings`; a client with `key`,
    once the gateway says it is ready. The process is terminated when the block ends."""
    env = {
        **os.environ,
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_LOG_LEVEL": "WARNING",
        **(settings or {}),
    }
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        async with SegueClient(f"http://127.0.0.1:{port}", key, timeout=timeout) as client:
            deadline = time.monotonic() + 60
            while not await client.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not start")
                await asyncio.sleep(0.2)
            yield client
    finally:
        server.terminate()
        server.wait(timeout=stop_timeout)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- a synthetic log ---------------------------------------------------------------------------

KINDS = [k for k in OutcomeKind if k is not OutcomeKind.ACTIVE_DAY]


def synthetic_log(
    n: int,
    time_of: Callable[[int], datetime],
    attributed_at: Callable[[random.Random, datetime, datetime], datetime],
    served_extra: Mapping[str, Any] | None = None,
    seed: int = 1,
) -> Iterator[tuple[int, datetime, str, str, dict[str, Any]]]:
    """`n` events (index, recorded at, stream id, event type, payload): one slate of 10 in 11
    (uniform policy, 20,000 items, 50,000 listeners), the rest outcomes of every kind but
    active days, 60% of them naming one of the last 500 slates, occurred `attributed_at(rng,
    recorded at, slate served at)`. Event `i` is recorded at `time_of(i)`; served payloads get
    `served_extra` added."""
    rng = random.Random(seed)
    items = [f"it{i}" for i in range(20_000)]
    users = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(50_000)]
    recent: list[tuple[uuid.UUID, str, list[str], datetime]] = []
    for i in range(n):
        t = time_of(i)
        if i % 11 == 0 or not recent:
            rid = uuid.UUID(int=rng.getrandbits(128))
            user = rng.choice(users)
            slate = rng.sample(items, 10)
            recent.append((rid, user, slate, t))
            if len(recent) > 500:
                recent.pop(0)
            payload = {
                "recommendation_id": str(rid),
                "user": user,
                "surface": rng.choice(["home", "search", "podcasts"]),
                "context": {},
                "slate": [
                    {"item_id": it, "position": p, "score": 0.0, "propensity": 0.1}
                    for p, it in enumerate(slate)
                ],
                "policy": {"name": "uniform", "version": "1"},
                "index_version": "none",
                "requested_at": t.isoformat(),
                "request": {"n": 10, "candidates": None, "exclude": [], "kinds": []},
                **(served_extra or {}),
            }
            yield i, t, f"recommendation-{rid}", "RecommendationServed", payload
            continue
        kind = rng.choice(KINDS)
        if rng.random() < 0.6:
            rid, user, slate, served_at = rng.choice(recent)
            item = rng.choice(slate)
            rec: str | None = str(rid)
            occurred = attributed_at(rng, t, served_at)
        else:
            user, item, rec, occurred = rng.choice(users), rng.choice(items), None, t
        outcome = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "user": user,
            "item_id": item,
            "kind": kind.value,
            "occurred_at": occurred.isoformat(),
            "recommendation_id": rec,
            "value": float(rng.randint(0, 60_000)),
        }
        yield i, t, f"listener-{user}", "OutcomeRecorded", outcome
