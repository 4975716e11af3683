"""Scenario 4: the files of the index a gateway serves are truncated, overwritten with garbage
or deleted (with the id map) while it runs, and a fresh gateway starts on a damaged index.

A running gateway keeps serving the copy it loaded (it maps a private copy, so a truncated
published file cannot kill it with SIGBUS); a fresh one comes up and serves the popularity
fallback. Both say so in /readyz (200, status "degraded", the reason in checks.index) and in
/metrics (`segue_index_degraded` 1), never answer 500, and the next build repairs it: the
manifest points at a good version again, which every gateway loads, and the flag clears.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import (
    Gateway,
    get_json,
    make_key,
    metric,
    seed_catalogue,
    segue,
    summary,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def truncate(folder: Path) -> None:
    path = folder / "items.ann"
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 3)


def garbage(folder: Path) -> None:
    path = folder / "items.ann"
    size = path.stat().st_size
    with path.open("r+b") as f:  # in place: the same inode a mapping of it would see
        f.write(random.Random(5).randbytes(size))


def delete_with_id_map(folder: Path) -> None:
    (folder / "items.ann").unlink()
    (folder / "ids.json").unlink()


def garbage_id_map(folder: Path) -> None:
    (folder / "ids.json").write_text('{"items": ["nonsense"')


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncate": truncate,
    "garbage": garbage,
    "delete+idmap": delete_with_id_map,
}


class Probe:
    """Requests that use the index, all of which must be answered 200."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url
        self.key = key
        self.answered = 0

    async def serve(self, expect_version: str) -> None:
        for user in range(4):
            status, body = await get_json(
                self.base_url,
                "/v1/recommendations",
                self.key,
                "POST",
                {"user_id": f"user-{user}", "surface": "home", "n": 5},
            )
            assert status == 200, body
            assert body["index_version"] == expect_version, body
            assert body["items"], "a slate, from the index or from the fallback"
            status, body = await get_json(self.base_url, "/v1/items/it-3/similar?n=5", self.key)
            assert status == 200, body
            assert body["index_version"] == expect_version
            assert bool(body["items"]) == (expect_version != "none")
            self.answered += 2


async def published(root: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    return manifest


async def serves(gateway: Gateway, key: str, version: str) -> bool:
    _, body = await get_json(gateway.base_url, "/v1/admin/status", key)
    return bool(body["index"]["version"] == version)


async def degraded(gateway: Gateway) -> bool:
    status, body = await get_json(gateway.base_url, "/readyz")
    flag = await metric(gateway.base_url, "segue_index_degraded")
    return status == 200 and body["status"] == "degraded" and flag == 1.0


async def healthy(gateway: Gateway, version: str) -> bool:
    status, body = await get_json(gateway.base_url, "/readyz")
    flag = await metric(gateway.base_url, "segue_index_degraded")
    return (
        status == 200
        and body["status"] == "ready"
        and body["checks"]["index"] == f"ok (version {version})"
        and flag == 0.0
    )


async def test_damaged_index_files_are_survived_reported_and_repaired(
    db_url: str, tmp_path: Path
) -> None:
    key = await make_key(db_url)
    root = tmp_path / "index"
    a = Gateway(db_url, tmp_path, SEGUE_RUN_INDEX_BUILDER="false")
    injected = 0
    async with a:
        await seed_catalogue(a.base_url, key, 40)
        rng = random.Random(3)
        outcomes = [
            {
                "event_id": str(uuid.uuid4()),
                "user_id": f"user-{u}",
                "item_id": f"it-{rng.randrange(20) + (20 if u % 2 else 0)}",
                "kind": "stream_30s",
            }
            for u in range(30)
            for _ in range(6)
        ]
        status, _ = await get_json(a.base_url, "/v1/outcomes", key, "POST", {"outcomes": outcomes})
        assert status == 200
        await wait_until(lambda: _lag_zero(a, key), "the projections to apply the outcomes", 30)
        segue(db_url, tmp_path, "index", "build")
        version = (await published(root))["version"]
        await wait_until(lambda: serves(a, key, version), "gateway A to load the index")
        probe = Probe(a.base_url, key)
        await probe.serve(version)

        # 1. A running gateway: the files of the version it serves are damaged under it.
        for what, damage in DAMAGE.items():
            damage(root / (await published(root))["folder"])
            injected += 1
            await wait_until(lambda: degraded(a), f"gateway A to report the {what} index")
            _, ready = await get_json(a.base_url, "/readyz")
            assert f"serving version {version} as loaded before" in ready["checks"]["index"]
            await probe.serve(version)  # the copy it loaded, unharmed
            status, body = await get_json(a.base_url, "/v1/admin/index/rebuild", key, "POST")
            assert status == 202, body
            await wait_until(
                partial(_newer, root, version), f"a new index after the {what} one", 60
            )
            version = (await published(root))["version"]
            await wait_until(partial(healthy, a, version), "gateway A to recover", 30)
            await probe.serve(version)

        # 2. A fresh gateway starting on a damaged index: it comes up on the fallback.
        folder = root / (await published(root))["folder"]
        truncate(folder)
        garbage_id_map(folder)
        injected += 1
        b = Gateway(db_url, tmp_path, SEGUE_RUN_INDEX_BUILDER="false")
        async with b:
            assert await degraded(b)
            _, ready = await get_json(b.base_url, "/readyz")
            assert "popularity fallback" in ready["checks"]["index"], ready
            assert await metric(b.base_url, "segue_index_loaded") == 0.0
            fallback = Probe(b.base_url, key)
            await fallback.serve("none")
            # The next build repairs it, for every gateway.
            segue(db_url, tmp_path, "index", "build")
            version = (await published(root))["version"]
            await wait_until(lambda: healthy(b, version), "gateway B to load the repaired index")
            await wait_until(lambda: healthy(a, version), "gateway A to load it too")
            await fallback.serve(version)

        # 3. A gateway that builds indexes repairs a damaged one by itself.
        truncate(root / (await published(root))["folder"])
        injected += 1
        c = Gateway(db_url, tmp_path)
        async with c:
            await wait_until(
                partial(_newer, root, version), "gateway C to rebuild the damaged index", 60
            )
            version = (await published(root))["version"]
            await wait_until(lambda: healthy(c, version), "gateway C to serve its repair", 30)
            await Probe(c.base_url, key).serve(version)
        assert a.alive()
    logs = a.all_logs()
    assert "unhandled error" not in logs
    assert "Traceback" not in logs.replace("published index unusable", "")
    summary(
        "index damaged",
        faults_injected=injected,
        survived=injected,
        requests_answered_200=probe.answered + fallback.answered,
        repairs=injected,
    )


async def _lag_zero(gateway: Gateway, key: str) -> bool:
    _, body = await get_json(gateway.base_url, "/v1/admin/status", key)
    projections = body["projections"]
    return len(projections) == 2 and all(p["lag_events"] == 0 for p in projections)


async def _newer(root: Path, version: str) -> bool:
    await asyncio.sleep(0)
    return bool((await published(root))["version"] != version)
