"""/ and /docs as a person sees them: headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by selenium) against a real gateway on PostgreSQL. The landing page links
to /docs; Swagger UI renders every operation of /openapi.json; the outcomes operation shows its
fields and the domain's outcome kinds; "Authorize" and "Try it out" record the example outcomes
through this same gateway; and the browser logs no error, so nothing was refused by the page's
Content-Security-Policy or fetched from elsewhere.

The screenshot of the outcomes operation is saved in the test's folder, and to
`$SEGUE_SCREENSHOT_DIR/docs.png` when that is set (how docs/screenshots/docs.png is made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.command import Command
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

import gateway
from domain.events import OutcomeKind, OutcomeRecorded
from gateway.http.routes import ENDPOINTS
from tests.api.conftest import count_events

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
WAIT_SECONDS = 30


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a profile of its own and nothing that calls out."""
    if CHROMIUM is None or DRIVER is None:
        message = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with tempfile.TemporaryDirectory(prefix="segue-chromium-") as profile:
        options = Options()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1280,1700",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # The driver named outright: selenium then never looks for (or downloads) one.
        driver = webdriver.Chrome(options=options, service=Service(DRIVER))
        try:
            yield driver
        finally:
            driver.quit()


@dataclass
class Seen:
    landing_links: list[str] = field(default_factory=list)
    version: str = ""
    operations: set[tuple[str, str]] = field(default_factory=set)
    schema_text: str = ""
    example_text: str = ""
    status: str = ""
    answer: str = ""
    errors: list[str] = field(default_factory=list)


def wait_for(driver: WebDriver, css: str, within: WebElement | None = None) -> WebElement:
    scope = within or driver
    found: list[WebElement] = WebDriverWait(driver, WAIT_SECONDS).until(
        lambda _: scope.find_elements(By.CSS_SELECTOR, css)
    )
    return found[0]


def browser_log(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console's entries since the last call (what `get_log`, which has no types, sends)."""
    entries: list[dict[str, Any]] = driver.execute(Command.GET_LOG, {"type": "browser"})["value"]
    return entries


def browse(base_url: str, key: str, screenshot: Path) -> Seen:
    """Everything the browser does, in a thread: the gateway answers on the test's loop."""
    seen = Seen()
    with chromium() as driver:
        driver.get(base_url + "/")
        seen.version = driver.find_element(By.ID, "version").text
        seen.landing_links = [
            a.get_attribute("href") or "" for a in driver.find_elements(By.CSS_SELECTOR, "a")
        ]
        driver.find_element(By.CSS_SELECTOR, 'a[href="/docs"]').click()
        wait_for(driver, ".opblock")
        assert driver.current_url == base_url + "/docs"
        for block in driver.find_elements(By.CSS_SELECTOR, ".opblock"):
            method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text
            path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path")
            seen.operations.add((method, path.get_attribute("data-path") or ""))

        # Authorize: the key is kept by the page and sent as a Bearer header.
        driver.find_element(By.CSS_SELECTOR, "button.authorize").click()
        modal = wait_for(driver, ".modal-ux")
        modal.find_element(By.CSS_SELECTOR, "input").send_keys(key)
        modal.find_element(By.CSS_SELECTOR, "button.authorize").click()
        wait_for(driver, "button.btn-done", modal).click()

        # The outcomes operation, expanded: its body's fields and kinds.
        op = driver.find_element(By.ID, "operations-outcomes-record_outcomes")
        op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        body = wait_for(driver, ".opblock-section-request-body", op)
        seen.example_text = wait_for(driver, ".body-param__example, .highlight-code", body).text
        body.find_element(By.CSS_SELECTOR, "button.tablinks[data-name=model]").click()
        seen.schema_text = wait_for(driver, ".json-schema-2020-12", body).text
        driver.execute_script("arguments[0].scrollIntoView()", op)
        driver.save_screenshot(str(screenshot))

        # Try it out with the example body, against this same gateway.
        body.find_element(By.CSS_SELECTOR, "button.tablinks[data-name=example]").click()
        op.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
        execute = wait_for(driver, "button.execute", op)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", execute)
        execute.click()
        status = wait_for(driver, ".live-responses-table tbody .response-col_status", op)
        seen.status = status.text.strip()
        seen.answer = op.find_element(By.CSS_SELECTOR, ".live-responses-table tbody").text
        seen.errors = [
            f"{entry['level']}: {entry['message']}"
            for entry in browser_log(driver)
            if entry["level"] in ("SEVERE", "WARNING")
        ]
    return seen


async def test_the_landing_page_leads_to_docs_that_render_and_call_the_gateway(
    base_url: str, all_scopes_key: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    screenshot = tmp_path / "docs.png"
    seen = await asyncio.to_thread(browse, base_url, all_scopes_key, screenshot)

    assert seen.version == gateway.__version__
    for page in ("/docs", "/openapi.json", "/healthz", "/readyz", "/metrics", "/admin"):
        assert base_url + page in seen.landing_links, page
    assert seen.operations == {(ep.method, ep.path) for ep in ENDPOINTS}
    for name in ("event_id", "user_id", "item_id", "kind", "recommendation_id", "value"):
        assert name in seen.schema_text, name
    for kind in OutcomeKind:
        assert f'"{kind.value}"' in seen.schema_text, kind
    assert '"stream_30s"' in seen.example_text
    assert seen.status == "200", seen.answer
    assert '"accepted": 2' in seen.answer, seen.answer
    assert await count_events(db, OutcomeRecorded.TYPE) == 2
    assert not seen.errors, seen.errors
    assert screenshot.stat().st_size > 10_000
    if folder := os.environ.get("SEGUE_SCREENSHOT_DIR"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, Path(folder) / "docs.png")
