"""The report's chart data on hand-made figures: the shared day axis and its partial days, the
reward points with their counts, the outcome mix's buckets, the lag said in words, and the
estimator disagreement warning (exactly when two intervals of one target do not overlap)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from domain.ope import ESTIMATORS, OpeConfig
from gateway.analysis import report
from gateway.analysis.report import (
    EstimateRow,
    OutcomeDay,
    ReportData,
    RewardDay,
    charts,
    day_axis,
    disagreements,
    draw_figures,
    explanations,
    lag_chart,
    overlap,
    render,
)
from gateway.projections.runner import Status
from gateway.store.api import Position


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def row(estimator: str, estimate: float, low: float, high: float, target: str = "t") -> EstimateRow:
    return EstimateRow(target, estimator, estimate, low, high)


def data(**fields: object) -> ReportData:
    base: dict[str, object] = {
        "generated_at": at(5, 14, 30),
        "since": None,
        "until": None,
        "event_counts": {},
        "rewards": [],
        "outcomes": [],
        "lag": [],
    }
    return ReportData(**{**base, **fields})  # type: ignore[arg-type]


# --- the disagreement warning ------------------------------------------------------------------


def test_intervals_overlap_when_they_share_a_point() -> None:
    assert overlap(row("ipw", 0.5, 0.0, 1.0), row("dm", 1.5, 1.0, 2.0))  # touching
    assert overlap(row("ipw", 0.5, 0.0, 3.0), row("dm", 1.5, 1.0, 2.0))  # nested
    assert not overlap(row("ipw", 0.5, 0.0, 0.99), row("dm", 1.5, 1.0, 2.0))
    assert not overlap(row("dm", 1.5, 1.0, 2.0), row("ipw", 0.5, 0.0, 0.99))


def test_ipw_below_zero_and_dm_above_is_a_disagreement_blamed_on_the_model() -> None:
    ipw = row("ipw", -0.023, -0.051, 0.004)
    dm = row("dm", 0.193, 0.181, 0.205)
    dr = row("dr", -0.010, -0.040, 0.020)  # agrees with IPW
    found = disagreements([ipw, dm, dr])
    assert [(d.first.estimator, d.second.estimator) for d in found] == [
        ("ipw", "dm"),
        ("dm", "dr"),
    ]
    assert found[0].meaning == report.MODEL_VS_WEIGHTS
    assert found[1].meaning == report.MODEL_VS_CORRECTED
    assert "misspecified" in found[0].meaning


def test_only_estimates_of_one_target_are_compared_and_never_the_logged_value() -> None:
    rows = [
        row("on-policy", 0.05, 0.04, 0.06, target="logged"),
        row("ipw", 0.50, 0.45, 0.55, target="uniform"),
        row("dm", 0.90, 0.85, 0.95, target="current"),
        row("dr", 0.91, 0.80, 1.00, target="current"),
    ]
    assert disagreements(rows) == []


@pytest.mark.parametrize(
    ("a", "b", "meaning"),
    [
        ("ipw", "snipw", report.IPW_VS_SNIPW),
        ("snipw", "dm", report.MODEL_VS_WEIGHTS),
        ("ipw", "dr", report.WEIGHTS_VS_CORRECTED),
        ("snipw", "switch_dr", report.WEIGHTS_VS_CORRECTED),
        ("dm", "switch_dr", report.MODEL_VS_CORRECTED),
        ("dr", "switch_dr", report.DR_VS_SWITCH),
        ("replay", "dr", report.REPLAY_VS_OTHERS),
    ],
)
def test_each_kind_of_pair_gets_its_meaning(a: str, b: str, meaning: str) -> None:
    (found,) = disagreements([row(a, 0.0, -0.1, 0.1), row(b, 1.0, 0.9, 1.1)])
    assert found.meaning == meaning
    assert report.meaning(b, a) == meaning


def test_the_page_warns_exactly_when_intervals_do_not_overlap() -> None:
    agreeing = [row("on-policy", 0.1, 0.08, 0.12, "logged"), row("ipw", 0.1, 0.0, 0.2)]
    agreeing.append(row("dm", 0.19, 0.18, 0.2))
    page = render(data(estimates=agreeing))
    assert "Warning" not in page
    assert 'class="warning"' not in page

    clashing = [*agreeing, row("dr", 0.5, 0.45, 0.55)]
    page = render(data(estimates=clashing))
    assert page.count('class="warning"') == 1
    assert "Warning: the estimators disagree about t beyond their intervals." in page
    assert "IPW +0.1000 [+0.0000, +0.2000] vs DR +0.5000 [+0.4500, +0.5500]" in page
    assert "DM +0.1900 [+0.1800, +0.2000] vs DR +0.5000 [+0.4500, +0.5500]" in page


def test_every_estimator_shown_is_explained_with_the_settings_used() -> None:
    lines = explanations(OpeConfig(clip=20.0, tau=2.5))
    assert set(lines) == {"on-policy", *ESTIMATORS}
    assert "clipped at 20" in lines["ipw"]
    assert "w <= 2.5" in lines["switch_dr"]
    assert "no clipping" in explanations(OpeConfig())["ipw"]
    rows = [row("on-policy", 0.1, 0.0, 0.2, "logged"), row("snipw", 0.1, 0.0, 0.2)]
    c = charts(data(estimates=rows))
    assert c.estimates is not None
    assert [name for name, _ in c.estimates.explanations] == ["on-policy", "snipw"]
    page = render(data(estimates=rows), c)
    assert "<dt>SNIPW</dt><dd>Self-normalised IPW" in page
    assert "<dt>DM</dt>" not in page


# --- the day axis ------------------------------------------------------------------------------


def test_a_day_is_partial_when_the_window_covers_only_part_of_it() -> None:
    axis = day_axis(date(2026, 3, 1), date(2026, 3, 4), at(1, 6), at(4, 12))
    assert axis.days == tuple(date(2026, 3, d) for d in (1, 2, 3, 4))
    assert axis.partial == (True, False, False, True)
    whole = day_axis(date(2026, 3, 1), date(2026, 3, 3), at(1), at(4))
    assert whole.partial == (False, False, False)


def test_the_charts_share_one_axis_of_serve_days_with_today_partial() -> None:
    rewards = [
        RewardDay(at(1), "home", "p 1", 4, 2.0),
        RewardDay(at(3), "home", "p 1", 2, 0.5),
        RewardDay(at(3), "", "p 1", 1, 0.0),
        RewardDay(at(5), "home", "p 1", 1, 1.0),  # today, at 14:30: unfinished
    ]
    outcomes = [
        OutcomeDay(at(1), "skip", 3, from_slate=True),
        OutcomeDay(at(3), "save", 2, from_slate=True),
        OutcomeDay(at(2), "complete", 5, from_slate=False),
        OutcomeDay(datetime(2026, 2, 10, tzinfo=UTC), "complete", 7, from_slate=False),
    ]
    c = charts(data(rewards=rewards, outcomes=outcomes))

    days = tuple(date(2026, 3, d) for d in range(1, 6))
    assert c.axis.days == days
    assert c.axis.partial == (False, False, False, False, True)
    assert c.rewards is not None
    assert c.rewards.axis is c.axis
    assert "served" in c.rewards.title
    assert "served" in c.rewards.xlabel
    home, organic = (
        next(s for s in c.rewards.series if s.label.startswith(name))
        for name in ("home", "(organic)")
    )
    assert home.per_slate == (0.5, None, 0.25, None, 1.0)
    assert home.slates == (4, 0, 2, 0, 1)
    assert organic.slates == (0, 0, 1, 0, 0)

    assert c.outcomes is not None
    from_slates, answering_none = c.outcomes.panels
    assert from_slates.counts == {
        "complete": (0, 0, 0, 0, 0),
        "save": (0, 0, 2, 0, 0),
        "skip": (3, 0, 0, 0, 0),
    }
    assert answering_none.counts["complete"] == (0, 5, 0, 0, 0)
    # Organic listening from before the first slate is counted, not drawn.
    assert c.outcomes.earlier == {"complete": 7}
    assert "7 earlier ones" in answering_none.title
    page = render(data(rewards=rewards, outcomes=outcomes), c)
    assert "<tr><td>complete</td><td>0</td><td>12</td><td>12</td></tr>" in page
    assert "<tr><td>all</td><td>5</td><td>12</td><td>17</td></tr>" in page
    assert "2026-03-05 (partial)" in page

    # The partial day is drawn apart: a dashed, hollow last segment; bars hatched.
    figures = draw_figures(c)
    lines = figures["rewards"].axes[0].get_lines()
    assert any(line.get_linestyle() == "--" for line in lines)
    hatched = [p for p in figures["outcomes"].axes[1].patches if p.get_hatch()]
    assert hatched


def test_an_until_in_the_past_leaves_no_day_partial() -> None:
    rewards = [RewardDay(at(1), "home", "p 1", 4, 2.0), RewardDay(at(2), "home", "p 1", 2, 1.0)]
    c = charts(data(rewards=rewards, until=at(3)))
    assert c.axis.days == (date(2026, 3, 1), date(2026, 3, 2))
    assert c.axis.partial == (False, False)


# --- lag ---------------------------------------------------------------------------------------


def status(lag_events: int, lag_seconds: float) -> Status:
    return Status("rewards", 1, "live", "d1", Position(1, 10), 10, lag_events, lag_seconds)


def test_no_lag_is_said_in_words_and_lag_is_drawn() -> None:
    caught_up = lag_chart([status(0, 0.0), status(0, 0.0)])
    assert caught_up.message is not None
    assert "0 events behind" in caught_up.message
    page = render(data(lag=[status(0, 0.0)]))
    assert "No lag: all 1 projection versions" in page
    assert 'alt="projection lag"' not in page

    behind = lag_chart([status(0, 0.0), status(40, 3.5)])
    assert behind.message is None
    assert 'alt="projection lag"' in render(data(lag=[status(40, 3.5)]))
    assert lag_chart([]).message == "No projections yet."
