"""The admin page in headless Chromium against a real gateway on PostgreSQL with the demo's data
(seeded by the demo's own code, at a small size): refused without a key and with a key lacking
the admin scope, then the charts drawn from the JSON (the points and bars in the SVG, with their
values and their geometry, not just that something was drawn), then a projection and the index
rebuilt through their buttons and confirmations until the page shows the new versions.

The browser is driven from a thread (selenium blocks) while the test's event loop serves it.
Skipped where Chromium or its driver is not installed, failed so under CI, which installs both
(.ci/run; tests/needs.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.cli.demo_data import (
    DemoClock,
    demo_history,
    demo_items,
    demo_tastes,
    listeners,
    seed_slates,
    slate_requests,
)
from gateway.http.app import create_app
from gateway.http.appkeys import CATALOG, OUTCOMES, RECOMMENDER, RUNNERS
from gateway.http.auth import Scope, create_key
from gateway.serving.requests import OutcomesIn
from gateway.settings import Settings
from tests.integration.projection_helpers import log_end
from tests.needs import require

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
]

ITEMS, USERS, DAYS, PER_DAY = 80, 12, 5, 4
WAIT = 30.0


async def seed_small_demo(app: Any, clock: DemoClock) -> int:
    """What `segue demo` seeds, smaller: a catalogue, organic listening, and `DAYS` days of
    `PER_DAY` slates a surface served by the policy with the listener model's outcomes."""
    now = datetime.now(UTC)
    catalogue = demo_items(ITEMS)
    await app[CATALOG].upsert(catalogue)
    await app[OUTCOMES].record(OutcomesIn(outcomes=demo_history(catalogue, USERS, now)))
    people = listeners(catalogue, demo_tastes(catalogue, USERS))
    requests = slate_requests(catalogue, people, now, days=DAYS, per_day=PER_DAY)
    served, _ = await seed_slates(app[RECOMMENDER], app[OUTCOMES], clock, catalogue, requests)
    return served


@contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require("chromium", "chromedriver", why="Debian's chromium and chromium-driver")
    assert CHROMIUM is not None
    assert DRIVER is not None
    with tempfile.TemporaryDirectory(prefix="segue-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def get_json(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def wait_for(driver: Any, script: str, what: str) -> Any:
    """Poll a JavaScript expression until it is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(
        lambda d: d.execute_script(f"return {script}"), message=f"waiting for {what}"
    )


def use_key(driver: Any, key: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "use-key").click()


def refusal(driver: Any, status: int) -> str:
    wait_for(
        driver,
        f"window.segueAdmin.refused && window.segueAdmin.refused.status === {status} && "
        "!document.getElementById('refusal').hidden",
        f"the {status} refusal",
    )
    assert driver.execute_script("return document.getElementById('board').hidden")
    text: str = driver.execute_script("return document.getElementById('refusal').innerText")
    return text


def scale(driver: Any, chart: str) -> tuple[float, float]:
    """(pixels at 0, pixels per unit) of a chart's value axis, read from its tick lines."""
    ticks = driver.execute_script(
        f"return [...document.querySelectorAll('#{chart} line[data-tick]')]"
        ".map(l => [Number(l.dataset.tick), Number(l.getAttribute('y1'))])"
    )
    (t0, y0), (t1, y1) = min(ticks), max(ticks)
    slope = (y1 - y0) / (t1 - t0)
    assert slope < 0, ticks  # up the page is more
    for t, y in ticks:
        assert y == pytest.approx(y0 + slope * (t - t0), abs=0.01), ticks
    return y0 - slope * t0, slope


def drive(base: str, admin: str, other: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(f"{base}/admin")
        # No key: the page shows the route's own refusal.
        assert "an API key is required" in refusal(driver, 401)
        use_key(driver, other)
        assert "lacks the 'admin' scope" in refusal(driver, 403)

        use_key(driver, admin)
        wait_for(driver, "window.segueAdmin.series && window.segueAdmin.dashboard", "the data")
        series = get_json(f"{base}/v1/admin/dashboard/series?days=14", admin)
        assert driver.execute_script("return window.segueAdmin.series") == series
        assert series["rewards"], "the demo served no slates"

        # One point per (day, surface) of the JSON, at its value, placed by its value.
        points = driver.execute_script(
            "return [...document.querySelectorAll('#rewards-chart g.series')].flatMap(g => "
            "[...g.querySelectorAll('circle.point')].map(c => [g.dataset.surface, "
            "c.dataset.day, Number(c.dataset.value), Number(c.getAttribute('cy'))]))"
        )
        assert sorted((s, d, v) for s, d, v, _ in points) == sorted(
            (r["surface"], r["day"], r["reward_per_slate"]) for r in series["rewards"]
        )
        zero, unit = scale(driver, "rewards-chart")
        for _, _, value, y in points:
            assert y == pytest.approx(zero + unit * value, abs=0.1)
        surfaces = driver.execute_script(
            "return [...document.querySelectorAll('#rewards-legend span')].map(s => s.dataset.name)"
        )
        assert surfaces == sorted({r["surface"] for r in series["rewards"]})

        # One bar segment per (day, kind), as tall as its count.
        bars = driver.execute_script(
            "return [...document.querySelectorAll('#outcomes-chart rect.bar-segment')].map(b => "
            "[b.dataset.day, b.dataset.kind, Number(b.dataset.value), "
            "Number(b.getAttribute('height'))])"
        )
        assert sorted((d, k, n) for d, k, n, _ in bars) == sorted(
            (o["day"], o["kind"], o["count"]) for o in series["outcomes"]
        )
        _, unit = scale(driver, "outcomes-chart")
        for _, _, count, height in bars:
            assert height == pytest.approx(-unit * count, abs=0.1)

        board = get_json(f"{base}/v1/admin/dashboard", admin)
        rows = driver.find_elements(By.CSS_SELECTOR, "#projections tbody tr[data-projection]")
        assert sorted(r.get_attribute("data-projection") for r in rows) == sorted(
            p["name"] for p in board["projections"]
        )
        assert {r.find_element(By.CLASS_NAME, "badge").text for r in rows} == {"ok"}
        assert driver.find_element(By.ID, "index-version").text == "none yet"

        # Rebuild a projection: confirm, then the page follows the job until the swap.
        driver.find_element(By.CSS_SELECTOR, "button[data-rebuild='rewards']").click()
        alert = WebDriverWait(driver, WAIT).until(expected_conditions.alert_is_present())
        assert "Rebuild the rewards projection" in alert.text
        alert.accept()
        wait_for(
            driver,
            "document.querySelector('#rebuilds li[data-job=rewards][data-state=done]')",
            "the rewards rebuild to be done",
        )
        wait_for(
            driver,
            "document.querySelector('#projections tr[data-projection=rewards]')"
            ".textContent.startsWith('rewards v2')",
            "rewards v2 in the table",
        )

        # Rebuild the index: confirm, then the page follows it until the version is published.
        driver.find_element(By.ID, "rebuild-index").click()
        alert = WebDriverWait(driver, WAIT).until(expected_conditions.alert_is_present())
        assert "new index" in alert.text
        alert.accept()
        published = wait_for(driver, "window.segueAdmin.published", "a new index version")
        assert driver.find_element(By.ID, "index-version").text == published
        assert f"New index version {published} published" in driver.find_element(By.ID, "note").text
        status = get_json(f"{base}/v1/admin/status", admin)

        # Forgetting the key goes back to the refusal.
        driver.find_element(By.ID, "forget-key").click()
        refusal(driver, 401)
        return {"published": published, "status": status}


async def test_the_admin_page_in_a_browser(db_url: str, tmp_path: Path) -> None:
    clock = DemoClock()
    settings = Settings(
        database_url=db_url, data_dir=tmp_path, key_cache_seconds=0, run_index_builder=False
    )
    app = create_app(settings, db_url, clock=clock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert await seed_small_demo(app, clock) > 0
        conn = await asyncpg.connect(db_url)
        try:
            end = await log_end(conn)
            for runner in app[RUNNERS]:
                await runner.wait_for(end, timeout=WAIT)
            _, admin = await create_key(conn, "admin-page", frozenset({Scope.ADMIN}))
            _, other = await create_key(conn, "not-admin", frozenset(Scope) - {Scope.ADMIN})
        finally:
            await conn.close()
        base = str(server.make_url("")).rstrip("/")
        seen = await asyncio.to_thread(drive, base, admin, other)
    finally:
        await server.close()
    assert seen["status"]["index"]["version"] == seen["published"]
