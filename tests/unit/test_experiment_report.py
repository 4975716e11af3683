"""The experiment's page: the daily looks become the series the plots draw (checked without
pixels), and the page says what it must, escaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from domain.events import OutcomeKind
from domain.experiments import (
    Arm,
    Experiment,
    Lifecycle,
    Metric,
    Outcome,
    Slate,
    analyse,
    assign,
    daily,
    listener_records,
)
from gateway.analysis.experiment_report import charts, render

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def experiment() -> Experiment:
    return Experiment(
        name="page",
        hypothesis="<script>alert(1)</script> explores too much",
        arms=(Arm("control", 1.0), Arm("treatment", 1.0, {"epsilon": 0.3})),
        surfaces=("home",),
        primary=Metric("reward"),
        minimum_detectable_effect=0.1,
        salt="s",
    )


def log(e: Experiment, days: int) -> tuple[list[Slate], list[Outcome]]:
    """200 new listeners a day, one slate each, a stream on 40% of control slates and 20% of
    treatment ones."""
    rng = np.random.default_rng(3)
    slates, outcomes = [], []
    for d in range(days):
        for u in range(200):
            user = f"d{d}-u{u}"
            at = START + timedelta(days=d, hours=1)
            slates.append(Slate(user, user, assign(e, user).name, at))
            p = 0.4 if assign(e, user).name == "control" else 0.2
            if rng.random() < p:
                outcomes.append(Outcome(user, OutcomeKind.STREAM_30S, None, at))
    return slates, outcomes


def test_daily_looks_accumulate_and_become_series() -> None:
    e = experiment()
    slates, outcomes = log(e, 4)
    history = daily(e, slates, outcomes, START + timedelta(days=3, hours=5))
    assert [d.isoformat() for d, _ in history] == [
        "2026-12-01",
        "2026-12-02",
        "2026-12-03",
        "2026-12-04",
    ]
    totals = [sum(a.listeners for a in analysis.arms) for _, analysis in history]
    assert totals == [200, 400, 600, 800]
    c = charts(Lifecycle(e, START), history)
    assert c.days == [d for d, _ in history]
    assert [s.arm for s in c.differences] == ["treatment"]
    series = c.differences[0]
    assert len(series.difference) == 4
    # More listeners every evening: the interval narrows, and the last one is below 0.
    widths = [h - lo for lo, h in zip(series.low, series.high, strict=True)]
    assert widths == sorted(widths, reverse=True)
    assert series.high[-1] < 0
    assert [sum(v[k] for v in c.listeners.values()) for k in range(4)] == totals
    assert c.expected["control"] == [t / 2 for t in totals]


def test_the_page_escapes_and_shows_plots_only_with_data() -> None:
    e = experiment()
    lc = Lifecycle(e, START)
    empty = render(lc, [], analyse(e, {}))
    assert "<script>" not in empty
    assert "&lt;script&gt;" in empty
    assert "No slates have been served" in empty
    assert "<img" not in empty
    slates, outcomes = log(e, 2)
    history = daily(e, slates, outcomes, START + timedelta(days=1))
    now = analyse(e, listener_records(e, slates, outcomes))
    page = render(lc, history, now)
    assert page.count("<img") == 2
    assert "data:image/png;base64," in page
    assert "consistent with the split" in page
    assert "worse" in page
