"""`segue report` over a real log: the figures it prints are the ones the pure folds give, and the
page is one self-contained HTML document with its plots inline."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from domain.events import OutcomeRecorded, RecommendationServed
from domain.ope import OpeConfig
from domain.ranking import PolicyParams
from domain.reward_fold import day_number
from gateway.analysis.evaluation import Request, evaluate_log
from gateway.analysis.evaluation_log import Filters
from gateway.analysis.report import EstimateRow, gather, render
from gateway.cli.main import main
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.runner import Runner
from tests.integration.projection_helpers import (
    Written,
    alive,
    catalogue,
    committed_events,
    day_start,
    days_ago,
    expected_rewards_tables,
    log_end,
    make_world,
    running,
    timed,
    traffic,
    write_concurrently,
)

pytestmark = pytest.mark.timeout(90)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("alt") or "")
            assert (values.get("src") or "").startswith("data:image/png;base64,")
        for name in ("src", "href"):
            link = values.get(name)
            if tag != "img" and link and not link.startswith("#"):
                self.external.append(link)
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


async def logged_traffic(
    db_url: str,
    conn: asyncpg.Connection,
    seed: int,
    *,
    start: int,
    days: int,
    recommendations: int,
    organic: int,
) -> None:
    """Seeded slates and outcomes over `days` days from `start` days ago, appended through the
    event store, with the live rewards projection caught up with them."""
    world = make_world(seed, days_ago(start))
    sequences = traffic(
        world, recommendations=recommendations, organic_outcomes=organic, changes=0, days=days
    )
    runner = Runner(db_url, PROJECTIONS["rewards"], poll_seconds=0.01)
    async with running(runner) as tasks:
        written = Written()
        await write_concurrently(db_url, [[catalogue(world)]], seed, written, raw_writers=0)
        await write_concurrently(db_url, sequences, seed, written, store_writers=2, raw_writers=0)
        await runner.wait_for(await log_end(conn), timeout=40)
        alive(tasks)


async def test_report_figures_match_the_folds_and_the_page_is_self_contained(
    db_url: str, conn: asyncpg.Connection
) -> None:
    await logged_traffic(db_url, conn, 7, start=12, days=6, recommendations=90, organic=40)
    data = await gather(conn)

    events = timed(await committed_events(conn))
    impressions = expected_rewards_tables(events)["impressions"]
    want_slates: dict[tuple[int, str], int] = defaultdict(int)
    want_reward: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    kinds: dict[str, int] = defaultdict(int)
    for _, e in events:
        if isinstance(e, RecommendationServed):
            key = (day_number(e.requested_at), e.surface)
            want_slates[key] += 1
            for (rec, _item), reward in impressions.items():
                if rec == e.recommendation_id:
                    want_reward[key] += Decimal(str(reward))
        elif isinstance(e, OutcomeRecorded):
            kinds[e.kind.value] += 1

    got = {(day_number(r.day), r.surface): r for r in data.rewards}
    assert set(got) == set(want_slates)
    for key, row in got.items():
        assert row.policy == "test 1"
        assert row.day == day_start(key[0])
        assert row.slates == want_slates[key]
        assert row.reward == pytest.approx(float(want_reward[key]), abs=1e-9)
    assert any(r.reward != 0 for r in data.rewards)

    mix: dict[str, int] = defaultdict(int)
    for o in data.outcomes:
        mix[o.kind] += o.count
    assert mix == kinds
    assert data.event_counts["RecommendationServed"] == 90
    assert data.reward_definition is not None
    assert [s.name for s in data.lag] == ["rewards"]
    assert data.lag[0].lag_events == 0

    data.estimates = [
        EstimateRow("uniform", "ipw", 0.12, 0.10, 0.14),
        EstimateRow("uniform", "dr", 0.11, 0.105, 0.118),
    ]
    page = render(data)
    parser = _Page()
    parser.feed(page)
    assert parser.external == []
    assert len(parser.images) == 4
    assert parser.headings == [
        "Events",
        "Reward over time",
        "Off-policy estimates",
        "Outcome mix",
        "Projection lag",
    ]
    # The totals table names each surface with its slate count.
    for surface in {s for _, s in want_slates}:
        n = sum(v for (_, s), v in want_slates.items() if s == surface)
        assert re.search(rf"<td>{surface}</td><td>test 1</td><td>{n}</td>", page)


async def test_report_on_an_empty_store_says_so(conn: asyncpg.Connection) -> None:
    data = await gather(conn)
    assert data.rewards == []
    assert data.outcomes == []
    assert data.lag == []
    page = render(data)
    assert "has not been built yet" in page
    assert "No served slates in this window." in page
    assert "<img" not in page


async def test_segue_report_writes_the_page_with_the_evaluations_estimates(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await logged_traffic(db_url, conn, 11, start=9, days=5, recommendations=60, organic=10)

    env = {"SEGUE_DATABASE_URL": db_url, "SEGUE_DATA_DIR": str(tmp_path / "data")}
    out = tmp_path / "r.html"
    args = ["report", "--output", str(out), "--target", "uniform", "--reward", "stream_30s"]
    result = await asyncio.to_thread(
        CliRunner().invoke, main, [*args, "--bootstrap", "40"], env=env
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")

    want = await evaluate_log(
        db_url,
        Request("uniform", "stream_30s", Filters(), PolicyParams()),
        OpeConfig(n_bootstrap=40),
        tmp_path / "data" / "index",
    )
    parser = _Page()
    parser.feed(page)
    assert len(parser.images) == 4
    for name, e in want.estimates.items():
        if e.estimate is None or e.ci is None:
            continue
        row = (
            f"<td>uniform</td><td>{name}</td><td>{e.estimate:.5f}</td>"
            f"<td>{e.ci[0]:.5f}</td><td>{e.ci[1]:.5f}</td>"
        )
        assert row in page, name
    assert want.logged.estimate is not None
    assert f"<td>logged</td><td>on-policy</td><td>{want.logged.estimate:.5f}</td>" in page
    assert "Reward stream_30s, per served position" in page


def test_segue_report_refuses_a_target_that_is_not_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["report", "--output", str(tmp_path / "r.html"), "--target", "nonsense"],
        env={"SEGUE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    )
    assert result.exit_code == 2
    assert "'nonsense' is not uniform, current, nor a CSV file" in result.output
    assert not (tmp_path / "r.html").exists()
