"""`segue experiment report`: one self-contained HTML page about an online experiment.

As `segue report`, the page has no external assets (plots are inline PNGs). It shows the
definition, the analysis as it stands, and two plots over the experiment's days: each arm's
difference from the control on the primary metric with its always-valid interval as it stood
every evening (valid at all those looks at once, so reading it daily is allowed), and the
listeners in each arm beside what the split expects (a broken split shows as a gap).

`charts` turns the daily analyses into plain series (tested without pixels); `render` draws them.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from domain.experiments import Analysis, Lifecycle

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True, slots=True)
class DifferenceSeries:
    arm: str
    days: list[date]
    difference: list[float]
    low: list[float]
    high: list[float]


@dataclass(frozen=True, slots=True)
class Charts:
    metric: str
    mde: float
    differences: list[DifferenceSeries]
    days: list[date]
    listeners: dict[str, list[int]]  # per arm, per day
    expected: dict[str, list[float]]  # what the split expects of the day's total


def charts(lc: Lifecycle, history: list[tuple[date, Analysis]]) -> Charts:
    e = lc.experiment
    days = [d for d, _ in history]
    differences = []
    for arm in e.arms[1:]:
        points = [
            (d, c.interval)
            for d, a in history
            for c in a.comparisons
            if c.arm == arm.name and c.metric == e.primary.name and c.interval is not None
        ]
        differences.append(
            DifferenceSeries(
                arm.name,
                [d for d, _ in points],
                [i.difference for _, i in points],
                [i.low for _, i in points],
                [i.high for _, i in points],
            )
        )
    listeners = {a.name: [0] * len(days) for a in e.arms}
    expected = {a.name: [0.0] * len(days) for a in e.arms}
    for k, (_, a) in enumerate(history):
        for s, want in zip(a.arms, a.sample_ratio.expected, strict=True):
            listeners[s.name][k] = s.listeners
            expected[s.name][k] = want
    return Charts(
        e.primary.name, e.minimum_detectable_effect, differences, days, listeners, expected
    )


def _figure() -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(8.0, 3.6), dpi=100, layout="constrained")


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _day_ticks(ax: Axes, days: list[date]) -> None:
    # Days as positions with their dates as labels: a UTC day is the unit, not an instant.
    step = max(1, len(days) // 14 + 1)
    ax.set_xticks(range(0, len(days), step), [d.isoformat() for d in days[::step]], rotation=30)


def draw_differences(c: Charts) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    position = {d: k for k, d in enumerate(c.days)}
    for s in c.differences:
        x = [position[d] for d in s.days]
        (line,) = ax.plot(x, s.difference, marker="o", label=f"{s.arm} - control")
        ax.fill_between(x, s.low, s.high, alpha=0.2, color=line.get_color())
    ax.axhline(0.0, color="black", linewidth=0.8)
    for sign in (1, -1):
        ax.axhline(sign * c.mde, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylabel(f"{c.metric} per slate, per listener")
    ax.set_title("Difference from the control, always-valid 1 - alpha interval at each evening")
    ax.legend(loc="upper left")
    _day_ticks(ax, c.days)
    return fig


def draw_listeners(c: Charts) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    x = list(range(len(c.days)))
    for arm, counts in c.listeners.items():
        (line,) = ax.plot(x, counts, marker="o", label=arm)
        ax.plot(x, c.expected[arm], linestyle=":", color=line.get_color())
    ax.set_ylabel("listeners exposed")
    ax.set_title("Listeners per arm (dotted: what the split expects)")
    ax.legend(loc="upper left")
    _day_ticks(ax, c.days)
    return fig


def render(lc: Lifecycle, history: list[tuple[date, Analysis]], now: Analysis) -> str:
    """The page. Plots only when there is at least one day with slates."""
    e = lc.experiment
    esc = html.escape
    c = charts(lc, history)
    rows = "".join(
        f"<tr><td>{esc(a.name)}</td><td>{a.weight:g}</td><td>{esc(a.policy().logged_version)}"
        f"</td><td>{esc(str(dict(a.params)) if a.params else 'the policy as it is')}</td></tr>"
        for a in e.arms
    )
    arms = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{s.listeners}</td><td>{s.slates}</td>"
        + "".join(f"<td>{v:.4f}</td>" for v in s.means.values())
        + "</tr>"
        for s in now.arms
    )
    metric_heads = "".join(f"<th>{esc(m)}</th>" for m in (now.arms[0].means if now.arms else {}))
    comparisons = "".join(
        f"<tr><td>{esc(x.arm)}</td><td>{esc(x.metric)}{' (guardrail)' if x.guardrail else ''}"
        "</td>"
        + (
            f"<td>{x.interval.difference:+.4f}</td><td>[{x.interval.low:+.4f}, "
            f"{x.interval.high:+.4f}]</td>"
            if x.interval is not None
            else "<td></td><td></td>"
        )
        + f"<td>{'yes' if x.cuped else 'no'}</td><td><b>{esc(x.verdict)}</b></td></tr>"
        for x in now.comparisons
    )
    srm = now.sample_ratio
    srm_text = (
        f"<p class='{'bad' if srm.mismatch else 'ok'}'>Sample ratio: counts {list(srm.counts)} "
        f"against {[round(x, 1) for x in srm.expected]} expected, chi-square "
        f"{srm.statistic:.3f}, p = {srm.p_value:.4g}: "
        + (
            "<b>MISMATCH: the split is broken; the differences below cannot be trusted.</b>"
            if srm.mismatch
            else "consistent with the split."
        )
        + "</p>"
    )
    plots = ""
    if c.days:
        plots = (
            f"<img alt='difference from the control per day' src='data:image/png;base64,"
            f"{_png(draw_differences(c))}'>"
            f"<img alt='listeners per arm per day' src='data:image/png;base64,"
            f"{_png(draw_listeners(c))}'>"
        )
    started = f"{lc.started_at:%Y-%m-%d %H:%M} UTC"
    ended = f", ended {lc.ended_at:%Y-%m-%d %H:%M} UTC" if lc.ended_at else ""
    shipped = f"; shipped arm <b>{esc(lc.shipped_arm)}</b>" if lc.shipped_arm else ""
    reason = f"; reason: {esc(lc.reason)}" if lc.reason else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Experiment {esc(e.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }}
.bad {{ color: #a00; }} .ok {{ color: #060; }} img {{ display: block; margin: 1rem 0; }}
</style></head><body>
<h1>Experiment {esc(e.name)}</h1>
<p>{esc(e.hypothesis)}</p>
<p>Status <b>{esc(lc.status)}</b>: started {started}{ended}{shipped}{reason}.
Surfaces: {esc(", ".join(e.surfaces))}. Primary metric: {esc(e.primary.name)}
(reward definition {esc(e.primary.reward.version)}); guardrails:
{esc(", ".join(g.name for g in e.guardrails) or "none")}. Minimum detectable effect
{e.minimum_detectable_effect:g}, alpha {e.alpha:g}.</p>
<table><tr><th>arm</th><th>weight</th><th>logged version</th><th>parameters</th></tr>{rows}</table>
<h2>Now</h2>
<p>Method: {esc(now.method)}. Each listener counts once (their mean reward per slate).</p>
{srm_text}
<table><tr><th>arm</th><th>listeners</th><th>slates</th>{metric_heads}</tr>{arms}</table>
<table><tr><th>arm</th><th>metric</th><th>difference</th><th>always-valid interval</th>
<th>CUPED</th><th>verdict</th></tr>{comparisons}</table>
<h2>Every evening</h2>
{plots or "<p>No slates have been served in the experiment yet.</p>"}
</body></html>
"""
