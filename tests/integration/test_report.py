"""`segue report` over a real log: the figures it prints are the ones the pure folds give, and the
page is one self-contained HTML document with its plots inline."""

from __future__ import annotations

import asyncio
import base64
import html
import itertools
import re
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from click.testing import CliRunner
from matplotlib.dates import DateFormatter, DayLocator

from domain.events import OutcomeKind, OutcomeRecorded, RecommendationServed
from domain.ope import OpeConfig
from domain.ranking import PolicyParams
from domain.reward_fold import day_number
from gateway.analysis.evaluation import Request, evaluate_log
from gateway.analysis.evaluation_log import Filters
from gateway.analysis.report import (
    DayAxis,
    EstimateRow,
    OutcomePanel,
    charts,
    draw_figures,
    estimate_rows,
    gather,
    render,
)
from gateway.cli.demo_data import SLATE_DAYS, DemoClock, Seeded, seed
from gateway.cli.main import main
from gateway.http.app import create_app
from gateway.http.appkeys import OUTCOMES, RECOMMENDER, RUNNERS
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.runner import Runner
from gateway.serving.requests import OutcomeIn, OutcomesIn, RecommendationIn, Surface
from gateway.settings import Settings
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
    assert len(parser.images) == 3  # no lag: the lag section says so in words
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
    assert len(parser.images) == 3
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


# --- the report on the demo's own data --------------------------------------------------------

DEMO_ITEMS, DEMO_USERS = 120, 12


async def seeded_demo(db_url: str, conn: asyncpg.Connection, data_dir: Path) -> Seeded:
    """`segue demo`'s seeding on a started gateway (its week of slates and outcomes, written all
    at once), plus one slate served just now with an outcome answering it, as the demo's first
    visitor would: so the current day has data, and is unfinished. Returns once every
    projection has applied the whole log."""
    clock = DemoClock()
    settings = Settings(database_url=db_url, data_dir=data_dir, key_cache_seconds=0)
    app = create_app(settings, db_url, clock=clock)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        seeded = await seed(app, clock, DEMO_ITEMS, DEMO_USERS, datetime.now(UTC))
        request = RecommendationIn(user_id="user-1", surface=Surface.HOME, n=4)
        slate = await app[RECOMMENDER].recommend(request)
        outcome = OutcomeIn(
            event_id=uuid.uuid4(),
            user_id="user-1",
            item_id=slate.slate[0].item_id,
            kind=OutcomeKind.STREAM_30S,
            recommendation_id=slate.recommendation_id,
            value=40_000.0,
        )
        await app[OUTCOMES].record(OutcomesIn(outcomes=[outcome]))
        end = await log_end(conn)
        for projection in app[RUNNERS]:
            await projection.wait_for(end, timeout=30)
    finally:
        await runner.cleanup()
    return seeded


def _stacked_counts(panel: OutcomePanel, axis: DayAxis) -> dict[tuple[date, str], int]:
    return {
        (day, kind): n
        for kind, counts in panel.counts.items()
        for day, n in zip(axis.days, counts, strict=True)
        if n
    }


async def test_report_on_the_demos_data_puts_every_chart_on_the_serve_day(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    seeded = await seeded_demo(db_url, conn, tmp_path)
    data = await gather(conn)
    evaluation = await evaluate_log(
        db_url, Request("uniform", "stream_30s"), OpeConfig(n_bootstrap=40), tmp_path / "index"
    )
    rows, logged = estimate_rows(evaluation)
    assert logged is not None
    data.estimates = [logged, *rows]
    c = charts(data)

    # What the log says, by the serve day of the answered slate (organic: the day it occurred).
    events = timed(await committed_events(conn))
    served = {e.recommendation_id: e for _, e in events if isinstance(e, RecommendationServed)}
    outcomes = [e for _, e in events if isinstance(e, OutcomeRecorded)]
    want: dict[bool, dict[tuple[date, str], int]] = {True: Counter(), False: Counter()}
    for o in outcomes:
        slate = served.get(o.recommendation_id) if o.recommendation_id else None
        when = slate.requested_at if slate is not None else o.occurred_at
        want[slate is not None][(when.astimezone(UTC).date(), o.kind.value)] += 1
    assert sum(want[False].values()) == seeded.outcomes
    assert sum(want[True].values()) == seeded.slate_outcomes + 1

    # One axis of whole days, ending today, which alone is partial.
    today = data.generated_at.date()
    axis = c.axis
    assert axis.days[0] == today - timedelta(days=SLATE_DAYS)  # the first day served
    assert axis.days[-1] == today
    assert list(axis.days) == [
        axis.days[0] + timedelta(days=i) for i in range((today - axis.days[0]).days + 1)
    ]
    assert [d for d, p in zip(axis.days, axis.partial, strict=True) if p] == [today]
    serve_days = {s.requested_at.date() for s in served.values()}
    assert serve_days == {today - timedelta(days=d) for d in range(SLATE_DAYS + 1)}

    # Outcome mix: daily buckets over the demo's days (not one bucket on the day it was
    # written), counts adding up to the log's outcomes.
    assert c.outcomes is not None
    assert c.outcomes.axis is axis
    from_slates, organic = c.outcomes.panels
    assert (from_slates.from_slate, organic.from_slate) == (True, False)
    assert _stacked_counts(from_slates, axis) == want[True]
    assert {d for d, _ in want[True]} == serve_days
    # The organic history reaches weeks further back than the first slate: those outcomes are
    # counted beside the chart, not drawn squeezing the served days into a corner.
    drawn = {k: n for k, n in want[False].items() if k[0] >= axis.days[0]}
    assert _stacked_counts(organic, axis) == drawn
    earlier: Counter[str] = Counter()
    for (day, kind), n in want[False].items():
        if day < axis.days[0]:
            earlier[kind] += n
    assert earlier
    assert c.outcomes.earlier == earlier
    assert (
        from_slates.total + organic.total + sum(c.outcomes.earlier.values())
        == len(outcomes)
        == data.event_counts[OutcomeRecorded.TYPE]
    )
    assert "served" in c.outcomes.xlabel
    assert "occurred" in c.outcomes.xlabel
    assert "recorded" not in c.outcomes.xlabel

    # Reward: each point is a day's mean over the slates it counts, n kept beside it; today's
    # point is there, on the partial day.
    assert c.rewards is not None
    assert c.rewards.axis is axis
    assert "served" in c.rewards.title
    assert "served" in c.rewards.xlabel
    want_slates = Counter((s.surface, s.requested_at.date()) for s in served.values())
    for series in c.rewards.series:
        surface = series.label.split(" · ")[0]
        for day, per_slate, n in zip(axis.days, series.per_slate, series.slates, strict=True):
            assert n == want_slates[(surface, day)]
            assert (per_slate is None) == (n == 0)
    home = next(s for s in c.rewards.series if s.label.startswith("home"))
    assert home.slates[-1] == 1
    assert home.per_slate[-1] is not None
    assert sum(sum(s.slates) for s in c.rewards.series) == seeded.slates + 1

    # Lag: every projection caught up, said in words rather than drawn as an empty plot.
    assert data.lag
    assert all(s.lag_events == 0 for s in data.lag)
    assert c.lag.message is not None
    assert "0 events behind" in c.lag.message

    # Estimates: a line for each estimator shown; a warning exactly when two intervals of the
    # same target do not overlap.
    assert c.estimates is not None
    explained = dict(c.estimates.explanations)
    assert {r.estimator for r in data.estimates} == set(explained)
    clash = {
        (a.estimator, b.estimator)
        for a, b in itertools.combinations(rows, 2)
        if a.high < b.low or b.high < a.low
    }
    assert {(d.first.estimator, d.second.estimator) for d in c.estimates.disagreements} == clash

    # The drawn figures: daily date ticks, the axis named, legends outside the axes.
    figures = draw_figures(c)
    assert set(figures) == {"rewards", "estimates", "outcomes"}
    for name in ("rewards", "outcomes"):
        axes = figures[name].axes
        assert "served" in axes[-1].get_xlabel()
        for ax in axes:
            assert isinstance(ax.xaxis.get_major_locator(), DayLocator)
            assert isinstance(ax.xaxis.get_major_formatter(), DateFormatter)
            labels = [t.get_text() for t in ax.get_xticklabels()]
            assert all(re.fullmatch(r"\w{3} \d{2} \w{3}", t) for t in labels if t), labels
        legend = axes[0].get_legend()
        assert legend is not None
        figures[name].canvas.draw()
        inside = axes[0].get_window_extent()
        assert legend.get_window_extent().x0 >= inside.x1  # to the right of the plot

    page = render(data, c)
    parser = _Page()
    parser.feed(page)
    assert parser.external == []
    assert parser.images == [
        "reward per slate by the UTC day the slate was served",
        "off-policy estimates with confidence intervals",
        "outcome mix per day, by the UTC day the answered slate was served "
        "(organic outcomes: the day they occurred)",
    ]
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    assert "Time axis of every chart: the UTC day the slate was served" in page
    assert f"{today.isoformat()} (partial)" in page
    assert c.lag.message in page
    assert ("Warning: the estimators disagree" in page) == bool(clash)
    for name in explained:
        assert html.escape(explained[name]) in page
    # n per point in the table beside the chart: today's home slate, one of it.
    today_row = rf"<td>{today.isoformat()} \(partial\)</td>(<td>[^<]*</td>)*?<td>[^<]*\(1\)</td>"
    assert re.search(today_row, page)
