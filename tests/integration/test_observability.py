"""What an operator watches, from a real `segue serve --workers 2`: one scrape covers every worker
(Prometheus multiprocess mode), /metrics can live on a port of its own, and each log line is a
JSON object carrying the request id the answer and the appended events carry."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.api.test_request_ids import sample
from tests.integration.test_cli import ROOT, SEGUE, free_port, run
from tests.integration.test_index_swap_processes import all_ready, until

REQUESTS = 60


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreading")
@pytest.mark.timeout(120)
async def test_one_scrape_sees_every_worker_and_logs_are_json(db_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_DATA_DIR": str(tmp_path),
        "SEGUE_RUN_INDEX_BUILDER": "false",
        "SEGUE_LOG_FORMAT": "json",
        "SEGUE_METRICS_PORT": str(free_port()),
    }
    key = (
        await asyncio.to_thread(run, ["keys", "create", "--name", "o", "--scopes", "ingest"], env)
    ).stdout.strip()
    port, metrics_port = free_port(), int(env["SEGUE_METRICS_PORT"])
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
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
            stderr=err,
        )
        try:
            # A new connection per request, so that the kernel spreads them over the workers.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=10)
            ) as http:
                await until(lambda: all_ready(http, [url]), "the workers to be ready", 60)

                async def both_up() -> bool:
                    # Each worker publishes its pool's size once started: two pools, two workers.
                    async with http.get(metrics_url) as r:
                        text = await r.text()
                    return sample(text, "segue_pool_connections", state="max") == 20

                await until(both_up, "both workers to be up", 60)
                for _ in range(REQUESTS):
                    async with http.get(url + "/healthz") as r:
                        assert r.status == 200
                sent = {
                    "event_id": str(uuid.uuid4()),
                    "user_id": "u-1",
                    "item_id": "it-1",
                    "kind": "complete",
                }
                async with http.post(
                    url + "/v1/outcomes",
                    json={"outcomes": [sent]},
                    headers={"Authorization": f"Bearer {key}", "X-Request-Id": "trace-42"},
                ) as r:
                    assert r.status == 200, await r.text()
                    assert r.headers["X-Request-Id"] == "trace-42"
                # Every scrape, whichever worker answers it, counts every worker's requests.
                for _ in range(6):
                    async with http.get(metrics_url) as r:
                        assert r.status == 200
                        text = await r.text()
                    assert (
                        sample(
                            text,
                            "segue_http_requests_total",
                            method="GET",
                            route="/healthz",
                            status="200",
                        )
                        == REQUESTS
                    )
                    assert sample(text, "segue_outcomes_total", kind="complete") == 1
                    # Two live workers' pools, summed.
                    assert sample(text, "segue_pool_connections", state="max") == 20
                # With a port of its own, /metrics is not on the API port.
                async with http.get(url + "/metrics") as r:
                    assert r.status == 404
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 60) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines, log.read_text()[-2000:]
    access = [x for x in lines if x.get("route") == "/v1/outcomes"]
    assert len(access) == 1, access
    assert access[0]["request_id"] == "trace-42"
    assert access[0]["status"] == 200
    assert access[0]["method"] == "POST"
    assert {"time", "level", "logger", "message"} <= access[0].keys()
    # Both workers answered (one pid each in the access lines).
    pids = {x["process"] for x in lines if x.get("route") == "/healthz"}
    assert len(pids) == 2, pids
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval(
            "SELECT metadata->>'request_id' FROM events WHERE event_id = $1",
            uuid.UUID(sent["event_id"]),
        )
    finally:
        await conn.close()
    assert stored == "trace-42"
