"""`segue serve` as an operator runs it, for the tests that need the real command: a process of
its own on a fresh database, ready, stopped with SIGTERM (and checked) at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def segue_env(db_url: str, data_dir: Path) -> dict[str, str]:
    """This environment without any SEGUE_* setting of the caller's, plus the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    env |= {
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_DATA_DIR": str(data_dir),
        "SEGUE_HOST": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    }
    return env


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def run(*args: str, env: dict[str, str], cwd: Path, limit_s: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(limit_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass(frozen=True, slots=True)
class Gateway:
    url: str
    env: dict[str, str]
    cwd: Path


@pytest.fixture
def served_env() -> dict[str, str]:
    """More environment for `served`'s gateway (a module overrides it, e.g. with settings)."""
    return {}


@pytest.fixture
async def served(db_url: str, tmp_path: Path, served_env: dict[str, str]) -> AsyncIterator[Gateway]:
    """`segue serve` in a subprocess, ready; stopped with SIGTERM (and checked) at the end."""
    env = {**segue_env(db_url, tmp_path / "data"), **served_env}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
            env=env, cwd=tmp_path, stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        await wait_ready(url, proc, log)
        yield Gateway(url, env, tmp_path)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                pytest.fail(f"segue serve ignored SIGTERM:\n{tail(log)}")
    assert proc.returncode == 0, f"segue serve exited {proc.returncode}:\n{tail(log)}"


async def wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Poll /readyz until it answers 200, the process dies, or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_DEADLINE_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if proc.returncode is not None:
                pytest.fail(f"segue serve exited {proc.returncode}:\n{tail(log)}")
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if loop.time() > deadline:
                pytest.fail(f"not ready in {START_DEADLINE_S}s:\n{tail(log)}")
            await asyncio.sleep(0.1)
