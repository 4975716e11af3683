"""How fast `segue export` and `segue import` move the log, and that their memory stays bounded:
the CLI run as an admin runs it, on logs of two sizes.

    python bench/event_io.py [--url URL] [--events N]

The URL names a server (default: $SEGUE_BENCH_DATABASE_URL, else the local one); the benchmark
creates its databases there and drops them at the end. The log is outcomes of 5,000 listeners
(the bulk of any real log), written with COPY. For N/4 and N events it prints events per second
of each command and the peak resident memory of its process: if memory is bounded, the peak does
not grow with the log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

from domain.events import OutcomeKind, OutcomeRecorded, to_payload

from _common import EVENT_COLUMNS, ROOT, add_url_argument, throwaway_database

LISTENERS = 5000


async def seed(url: str, n: int) -> None:
    """`n` outcomes; streams, event ids and versions kept as the store keeps them."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conn = await asyncpg.connect(url)
    try:
        versions: dict[str, int] = {}
        rows = []
        for i in range(n):
            user = f"p-{i % LISTENERS}"
            e = OutcomeRecorded(
                uuid.uuid4(),
                user,
                f"it-{i % 997}",
                OutcomeKind.STREAM_30S,
                start + timedelta(seconds=i),
                None,
                31_000.0,
            )
            stream = e.stream_id()
            versions[stream] = versions.get(stream, 0) + 1
            rows.append(
                (
                    stream,
                    versions[stream],
                    e.event_id,
                    e.TYPE,
                    e.SCHEMA_VERSION,
                    orjson.dumps(to_payload(e)).decode(),
                    "{}",
                )
            )
        await conn.copy_records_to_table(
            "events",
            records=rows,
            columns=EVENT_COLUMNS,
        )
        await conn.execute(
            "INSERT INTO event_ids SELECT event_id, global_position, stream_id, stream_version "
            "FROM events"
        )
        await conn.execute(
            "INSERT INTO streams SELECT stream_id, max(stream_version) FROM events "
            "GROUP BY stream_id"
        )
    finally:
        await conn.close()


def segue(args: list[str], url: str) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one CLI run."""
    env = {**os.environ, "SEGUE_DATABASE_URL": url}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # VmHWM belongs to the process's own address space, made new at exec: unlike ru_maxrss, it
    # does not start from this (large) parent's resident set. It only grows; read it until exit.
    peak_kib = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.wait() != 0:
        raise RuntimeError(f"segue {' '.join(args)} failed")
    return seconds, peak_kib / 1024


def file_mib(path: str) -> float:
    return Path(path).stat().st_size / 2**20


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_url_argument(parser)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    for n in (args.events // 4, args.events):
        async with (
            throwaway_database(args.url) as source,
            throwaway_database(args.url) as target,
        ):
            await seed(source, n)
            with tempfile.TemporaryDirectory() as folder:
                for fmt in ("jsonl", "parquet"):
                    path = str(Path(folder) / f"log.{fmt}")
                    s, mib = segue(["export", "-o", path], source)
                    size = file_mib(path)
                    print(
                        f"{n:>8} events  export {fmt:<7} {n / s:>9,.0f} events/s  "
                        f"peak {mib:6.0f} MiB  file {size:6.1f} MiB"
                    )
                for fmt in ("jsonl", "parquet"):
                    path = str(Path(folder) / f"log.{fmt}")
                    # The second format re-imports the same events: all duplicates.
                    s, mib = segue(["import", path], target)
                    what = "import" if fmt == "jsonl" else "re-import"
                    print(
                        f"{n:>8} events  {what:<9} {fmt:<7} {n / s:>7,.0f} events/s  "
                        f"peak {mib:6.0f} MiB"
                    )


if __name__ == "__main__":
    asyncio.run(main())
