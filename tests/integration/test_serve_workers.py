"""`segue serve --workers N` as an operator runs it: a dead worker is replaced, SIGTERM stops them
all, and a SIGKILLed parent leaves no worker behind serving the port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_cli import ROOT, SEGUE, free_port
from tests.integration.test_index_swap_processes import all_ready, until


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def workers_of(parent: int) -> set[int]:
    """The parent's live children that are gateway workers (not multiprocessing's helpers)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except FileNotFoundError:
        return set()
    found = set()
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and _alive(child):
            found.add(child)
    return found


@asynccontextmanager
async def serve(
    db_url: str, tmp_path: Path, port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_DATA_DIR": str(tmp_path),
        "SEGUE_LOG_LEVEL": "WARNING",
        "SEGUE_RUN_INDEX_BUILDER": "false",
    }
    proc = await asyncio.create_subprocess_exec(
        *SEGUE,
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _wait(check: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """`until` for a check that reads /proc rather than awaiting anything."""

    async def poll() -> bool:
        return check()

    await until(poll, what, seconds)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
async def test_workers_are_replaced_and_stopped_with_the_parent(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with serve(db_url, tmp_path, port) as parent:
            await until(lambda: all_ready(http, [url]), "the workers to be ready", 60)
            await _wait(lambda: len(workers_of(parent.pid)) == 2, "two workers")
            first = workers_of(parent.pid)

            # A worker killed outright is replaced, and the port keeps answering.
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            await _wait(
                lambda: len(workers_of(parent.pid)) == 2 and victim not in workers_of(parent.pid),
                "a new worker in place of the killed one",
            )
            await until(lambda: all_ready(http, [url]), "readiness after the replacement", 60)

            # SIGTERM stops every worker, and the parent exits cleanly.
            workers = workers_of(parent.pid)
            parent.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(parent.wait(), timeout=60) == 0
            assert not any(_alive(w) for w in workers | first - {victim})

        # A parent killed outright takes its workers with it.
        async with serve(db_url, tmp_path, port) as parent:
            await until(lambda: all_ready(http, [url]), "the workers to be ready again", 60)
            await _wait(lambda: len(workers_of(parent.pid)) == 2, "two workers again")
            workers = workers_of(parent.pid)
            parent.kill()
            await parent.wait()
            # SIGTERM at once, then a drain bounded by the supervisor's STOP_SECONDS (30).
            await _wait(lambda: not any(_alive(w) for w in workers), "orphaned workers to exit", 60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal")
def test_a_worker_whose_parent_died_before_it_started_stops() -> None:
    """The parent-death signal covers only deaths after it is asked for: a worker whose parent
    was killed while it was still importing must find out by itself, not serve on as an orphan."""
    code = "from gateway.cli.supervisor import die_with_parent; die_with_parent({}); print('on')"
    gone = subprocess.run(
        [sys.executable, "-c", code.format(2**22 + 1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gone.returncode == 1, gone
    assert "on" not in gone.stdout
    assert "is gone; this worker stops" in gone.stderr
    alive = subprocess.run(
        [sys.executable, "-c", code.format(os.getpid())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alive.returncode == 0, alive
    assert alive.stdout.strip() == "on"
