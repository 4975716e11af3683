"""`segue report`: one self-contained HTML page about what was served and what happened next.

The page has no external assets (plots are inline PNGs), so it can be mailed or attached to a
ticket. Everything in it is read from the event store and the live projections at the moment the
report is made; it never writes.

Three steps, so that what each chart shows can be checked without looking at pixels:
`gather` reads the figures, `charts` turns them into chart data (pure: days, values, counts per
point, partial-day flags, warnings), and `render` draws that data and writes the page.

One time axis for every chart: the UTC day the slate was served (`requested_at`). An outcome is
placed on the day of the slate it answers; one that answers no slate in the log (organic
listening) on the day it occurred (`occurred_at`). Never `recorded_at`, which is when the store
wrote the event: the demo, an import or a backfill writes weeks of history in one minute.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import combinations
from typing import TYPE_CHECKING

import asyncpg

from domain.ope import ESTIMATORS, OpeConfig
from gateway.analysis.evaluation import Evaluation
from gateway.projections.runner import Status
from gateway.projections.runner import status as projection_status
from gateway.store import reads

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ORGANIC = "(organic)"  # the surface label of outcomes and slates with no surface


@dataclass(frozen=True, slots=True)
class RewardDay:
    """Short-term reward attributed to the slates one policy version served on one surface in
    one day (UTC, by the slate's request time)."""

    day: datetime
    surface: str
    policy: str
    slates: int
    reward: float

    @property
    def per_slate(self) -> float:
        return self.reward / self.slates if self.slates else 0.0


@dataclass(frozen=True, slots=True)
class OutcomeDay:
    """Outcomes of one kind on one UTC day: the request day of the slate they answer
    (`from_slate`), else the day they occurred."""

    day: datetime
    kind: str
    count: int
    from_slate: bool = True


@dataclass(frozen=True, slots=True)
class EstimateRow:
    """One off-policy estimate of a target policy's value per served position, with its
    confidence interval (`target` "logged" is the logging policy's own value)."""

    target: str
    estimator: str
    estimate: float
    low: float
    high: float


@dataclass(slots=True)
class ReportData:
    generated_at: datetime
    since: datetime | None
    until: datetime | None
    event_counts: dict[str, int]
    rewards: list[RewardDay]
    outcomes: list[OutcomeDay]
    lag: list[Status]
    estimates: list[EstimateRow] = field(default_factory=list)
    reward_definition: str | None = None
    estimates_about: str | None = None
    notes: list[str] = field(default_factory=list)
    # The estimators' settings, which their explanations quote (clipping, switch-DR's tau).
    ope_config: OpeConfig = field(default_factory=OpeConfig)

    @property
    def window_end(self) -> datetime:
        """Where the report's figures stop: `until`, or the moment it was made if earlier."""
        return min(self.until, self.generated_at) if self.until else self.generated_at


async def gather(
    conn: asyncpg.Connection, since: datetime | None = None, until: datetime | None = None
) -> ReportData:
    """Read everything the report shows (one connection, read-only statements)."""
    counts = await reads.counts_by_type(conn, since, until)
    outcomes = [
        OutcomeDay(day, kind, n, from_slate)
        for day, from_slate, kind, n in await reads.daily_outcome_counts(conn, since, until)
    ]
    live = await conn.fetchrow(
        "SELECT schema_name, definition_version FROM projections "
        "WHERE name = 'rewards' AND status = 'live'"
    )
    rewards: list[RewardDay] = []
    notes: list[str] = []
    definition = None
    if live is None:
        notes.append("The rewards projection has not been built yet: no reward figures.")
    else:
        definition = str(live["definition_version"])
        schema = '"' + str(live["schema_name"]).replace('"', '""') + '"'
        rewards = [
            RewardDay(r["day"], r["surface"], r["policy"], int(r["slates"]), float(r["reward"]))
            for r in await reads.rewards_by_policy(conn, schema, since, until)
        ]
    return ReportData(
        generated_at=datetime.now(UTC),
        since=since,
        until=until,
        event_counts=counts,
        rewards=rewards,
        outcomes=outcomes,
        lag=await projection_status(conn),
        reward_definition=definition,
        notes=notes,
    )


def estimate_rows(result: Evaluation) -> tuple[list[EstimateRow], EstimateRow | None]:
    """An evaluation's estimates as report rows (those the estimator could make), and the
    logging policy's own value as a row, if there is one."""
    rows = [
        EstimateRow(result.target, name, e.estimate, *e.ci)
        for name, e in result.estimates.items()
        if e.estimate is not None and e.ci is not None
    ]
    logged = result.logged
    if logged.estimate is None or logged.ci is None:
        return rows, None
    return rows, EstimateRow("logged", "on-policy", logged.estimate, *logged.ci)


# --- chart data (pure) -------------------------------------------------------------------------

SERVED_AXIS = "UTC day the slate was served"
OUTCOME_AXIS = "UTC day the answered slate was served (organic outcomes: the day they occurred)"


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DayAxis:
    """The days every dated chart shares, one per UTC day with none left out (a day without
    data shows as a gap, not as two neighbours joined), and which of them the report's window
    covers only in part: the current, unfinished day, or a day cut by --since or --until."""

    days: tuple[date, ...]
    partial: tuple[bool, ...]
    end: datetime  # where the window stops (for the partial day's label)

    def index(self, day: date) -> int:
        return (day - self.days[0]).days


def day_axis(first: date, last: date, since: datetime | None, end: datetime) -> DayAxis:
    """Every day from `first` to `last`, each flagged partial if the window [since, end) does
    not cover all of it."""
    every = tuple(first + timedelta(days=i) for i in range((last - first).days + 1))
    partial = tuple(
        (since is not None and since > _start(d)) or end < _start(d) + timedelta(days=1)
        for d in every
    )
    return DayAxis(every, partial, end)


@dataclass(frozen=True, slots=True)
class RewardSeries:
    """One line: a surface and policy's reward per slate on each axis day (None where it
    served nothing) and the slates each point averages."""

    label: str
    per_slate: tuple[float | None, ...]
    slates: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RewardChart:
    axis: DayAxis
    series: tuple[RewardSeries, ...]
    title: str = f"Reward per slate, by the {SERVED_AXIS}"
    xlabel: str = f"{SERVED_AXIS} (shaded: partial day)"
    ylabel: str = "attributed reward per slate\n(labels: slates averaged)"


@dataclass(frozen=True, slots=True)
class OutcomePanel:
    """Stacked bars: outcomes of each kind on each axis day."""

    title: str
    counts: dict[str, tuple[int, ...]]
    from_slate: bool

    @property
    def total(self) -> int:
        return sum(sum(c) for c in self.counts.values())


@dataclass(frozen=True, slots=True)
class OutcomeChart:
    axis: DayAxis
    panels: tuple[OutcomePanel, ...]  # answering a slate, then organic (empty ones left out)
    # Organic outcomes from before the axis (the first day a slate was served), by kind: kept
    # out of the bars so that weeks of history do not squeeze the served days into a corner.
    earlier: dict[str, int] = field(default_factory=dict)
    title: str = "Outcome mix per day"
    xlabel: str = f"{OUTCOME_AXIS}; shaded: partial day"
    ylabel: str = "outcomes"


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Two estimates of one target whose intervals do not overlap, and what that usually
    means."""

    target: str
    first: EstimateRow
    second: EstimateRow
    meaning: str


@dataclass(frozen=True, slots=True)
class EstimateChart:
    rows: tuple[EstimateRow, ...]
    explanations: tuple[tuple[str, str], ...]  # (estimator, plain-language line), those shown
    disagreements: tuple[Disagreement, ...]
    title: str = "Off-policy estimates (bars: confidence intervals)"
    xlabel: str = "estimated reward per slate position"


@dataclass(frozen=True, slots=True)
class LagChart:
    """The projections' lag; `message` instead of a plot when no projection is behind (a plot
    of zero-length bars would say nothing)."""

    rows: tuple[Status, ...]
    message: str | None
    title: str = "Projection lag when the report was made"
    xlabel: str = "seconds behind the log (labels: events behind)"


@dataclass(frozen=True, slots=True)
class Charts:
    axis: DayAxis
    rewards: RewardChart | None
    outcomes: OutcomeChart | None
    estimates: EstimateChart | None
    lag: LagChart


def reward_chart(rewards: Sequence[RewardDay], axis: DayAxis) -> RewardChart | None:
    if not rewards or not axis.days:
        return None
    cells: dict[str, dict[date, RewardDay]] = defaultdict(dict)
    for r in rewards:
        cells[f"{r.surface or ORGANIC} · {r.policy}"][day_of(r.day)] = r
    series = []
    for label, by_day in sorted(cells.items()):
        per_slate: list[float | None] = [None] * len(axis.days)
        slates = [0] * len(axis.days)
        for day, r in by_day.items():
            i = axis.index(day)
            slates[i] = r.slates
            per_slate[i] = r.per_slate if r.slates else None
        series.append(RewardSeries(label, tuple(per_slate), tuple(slates)))
    return RewardChart(axis, tuple(series))


def outcome_chart(outcomes: Sequence[OutcomeDay], axis: DayAxis) -> OutcomeChart | None:
    if not outcomes or not axis.days:
        return None
    kinds = sorted({o.kind for o in outcomes})
    earlier: dict[str, int] = defaultdict(int)
    for o in outcomes:
        if day_of(o.day) < axis.days[0]:
            earlier[o.kind] += o.count
    panels = []
    for from_slate, title in (
        (True, "answering a served slate: by the UTC day that slate was served"),
        (False, "answering no served slate (organic): by the UTC day they occurred"),
    ):
        counts = {k: [0] * len(axis.days) for k in kinds}
        for o in outcomes:
            if o.from_slate is from_slate and day_of(o.day) >= axis.days[0]:
                counts[o.kind][axis.index(day_of(o.day))] += o.count
        if not from_slate and earlier:
            title += (
                f";\n{sum(earlier.values())} earlier ones, before the first slate "
                f"({axis.days[0]:%a %d %b}), are counted in the table, not drawn"
            )
        panel = OutcomePanel(title, {k: tuple(v) for k, v in counts.items()}, from_slate)
        if panel.total:
            panels.append(panel)
    return OutcomeChart(axis, tuple(panels), dict(earlier))


def explanations(config: OpeConfig) -> dict[str, str]:
    """A plain-language line per estimator (and the logged value), true to `domain.ope` with
    `config`'s settings."""
    clip = (
        "no clipping here"
        if math.isinf(config.clip)
        else f"weights clipped at {config.clip:g}, which trades noise for bias"
    )
    return {
        "on-policy": "The mean reward the logging policy actually earned per served position: "
        "no model, no weights. The yardstick (dashed line and grey band).",
        "replay": "The mean reward of only those logged positions where the target would "
        "certainly have shown the same item. Unbiased for a deterministic target, but it keeps "
        "few positions, and it is left out for a randomised target such as uniform.",
        "ipw": "Inverse propensity weighting: each logged reward times w = the target's "
        "probability of that item at that position / the logging policy's. Unbiased if the "
        "logged propensities are right and the logging policy could show everything the target "
        "would (else it counts what the log never showed as zero); noisy when a few positions "
        f"carry large weights ({clip}).",
        "snipw": "Self-normalised IPW: IPW divided by the mean weight. A little biased, far less "
        "noisy, and never outside the range of observed rewards; where the target favours items "
        "the log never showed, it assumes they do as well as the ones it did show.",
        "dm": "Direct method: a reward model fitted on the log (each item's mean reward at each "
        "position, shrunk towards the item's mean, then the overall mean), averaged over what "
        "the target would show. Steady, but only as right as that model: items the log has "
        "little or no data on score near the overall logged mean, so for a target that shows "
        "other items than the log did, DM drifts towards the logged value.",
        "dr": "Doubly robust: DM plus an IPW correction of the model's error on the logged "
        "positions. Unbiased if either the propensities or the model are right, usually less "
        "noisy than IPW: the one to prefer when the logging policy covered the target's choices.",
        "switch_dr": f"Switch-DR: DR, but the IPW correction is used only where w <= "
        f"{config.tau:g}; positions with larger weights fall back to DM. Less noisy than DR, with "
        "DM's bias where the target departs most from the log.",
    }


# What two estimators disagreeing beyond their intervals usually means, by the kind of pair:
# estimators that only weigh logged rewards (replay, IPW, SNIPW), the one that only models
# them (DM), and those that model then correct by weighting (DR, switch-DR).
MODEL_VS_WEIGHTS = (
    "DM rests entirely on its reward model, the weighted estimators not at all. DM is usually "
    "the wrong one: its model is misspecified for this target, typically because the target "
    "shows items the log has little data on, which DM scores near the logged average."
)
MODEL_VS_CORRECTED = (
    "DR and switch-DR are DM corrected by the logged rewards; a correction this large means "
    "DM's reward model is misspecified for this target. Prefer DR."
)
WEIGHTS_VS_CORRECTED = (
    "Where the log has little on the target's choices, DR and switch-DR fall back on DM's "
    "model, while IPW counts those choices as zero and SNIPW as if they did like the rest. So "
    "either support is poor (the logging policy rarely showed what the target would), or the "
    "weights are large (variance), or the model is off. DR and SNIPW are the ones to prefer "
    "when support is good; when it is not, trust none and log with more exploration."
)
IPW_VS_SNIPW = (
    "They differ only by SNIPW's division by the mean weight: the target puts much of its "
    "probability on items the logging policy never showed there (poor support), or a few "
    "large weights dominate. Neither is reliable then; DR is steadier."
)
REPLAY_VS_OTHERS = (
    "Replay keeps only the positions where the target would certainly show the logged item, "
    "a small and particular sample, so it is often the odd one out."
)
DR_VS_SWITCH = (
    "Switch-DR uses DM alone where the weight exceeds tau, so DM's model is off on exactly "
    "those positions. Prefer DR, unless its interval is much wider."
)
_FAMILY = {
    "replay": "weights",
    "ipw": "weights",
    "snipw": "weights",
    "dm": "model",
    "dr": "corrected",
    "switch_dr": "corrected",
}


def meaning(a: str, b: str) -> str:
    """What estimators `a` and `b` disagreeing beyond their intervals usually means."""
    pair = {a, b}
    if "replay" in pair:
        return REPLAY_VS_OTHERS
    if pair == {"ipw", "snipw"}:
        return IPW_VS_SNIPW
    if pair == {"dr", "switch_dr"}:
        return DR_VS_SWITCH
    families = {_FAMILY.get(a, "weights"), _FAMILY.get(b, "weights")}
    if families == {"model", "weights"}:
        return MODEL_VS_WEIGHTS
    if families == {"model", "corrected"}:
        return MODEL_VS_CORRECTED
    return WEIGHTS_VS_CORRECTED


def overlap(a: EstimateRow, b: EstimateRow) -> bool:
    """Whether the two closed intervals share a point."""
    return a.low <= b.high and b.low <= a.high


def disagreements(rows: Sequence[EstimateRow]) -> list[Disagreement]:
    """Every pair of estimates of the same target (the logged value aside) whose intervals do
    not overlap, in the rows' order."""
    by_target: dict[str, list[EstimateRow]] = defaultdict(list)
    for r in rows:
        if r.target != "logged":
            by_target[r.target].append(r)
    return [
        Disagreement(target, a, b, meaning(a.estimator, b.estimator))
        for target, group in by_target.items()
        for a, b in combinations(group, 2)
        if not overlap(a, b)
    ]


def estimate_chart(rows: Sequence[EstimateRow], config: OpeConfig) -> EstimateChart | None:
    if not rows:
        return None
    lines = explanations(config)
    shown = {r.estimator for r in rows}
    order = ["on-policy", *ESTIMATORS]
    return EstimateChart(
        tuple(rows),
        tuple((name, lines[name]) for name in order if name in shown),
        tuple(disagreements(rows)),
    )


def lag_chart(lag: Sequence[Status]) -> LagChart:
    if not lag:
        return LagChart((), "No projections yet.")
    if all(s.lag_events == 0 for s in lag):
        return LagChart(
            tuple(lag),
            f"No lag: all {len(lag)} projection versions had applied every event in the log "
            "when the report was made (0 events behind).",
        )
    return LagChart(tuple(lag), None)


def charts(data: ReportData) -> Charts:
    """What each chart of the report shows, on one shared day axis: from the first day a slate
    was served (the first outcome's, if none was) to the window's last day, even if that has no
    data yet, so that a day without slates so far shows as an empty partial day, not as the end
    of the data."""
    end = data.window_end
    served = [day_of(r.day) for r in data.rewards]
    served += [day_of(o.day) for o in data.outcomes if o.from_slate]
    every = served + [day_of(o.day) for o in data.outcomes]
    if every:
        first = min(served) if served else min(every)
        last = max([*every, day_of(end - timedelta(microseconds=1))])
        axis = day_axis(first, last, data.since, end)
    else:
        axis = DayAxis((), (), end)
    return Charts(
        axis,
        reward_chart(data.rewards, axis),
        outcome_chart(data.outcomes, axis),
        estimate_chart(data.estimates, data.ope_config),
        lag_chart(data.lag),
    )


# --- drawing -----------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas of its own: no pyplot, so no display, whatever backend the
    process chose, and no global state to leak between reports."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _x(day: date) -> float:
    """A day (its midnight UTC) as matplotlib's date number."""
    import matplotlib.dates as mdates

    return float(mdates.date2num(_start(day)))  # type: ignore[no-untyped-call]


def _partial_label(axis: DayAxis, i: int) -> str:
    end = axis.end.astimezone(UTC)
    if day_of(end) == axis.days[i] and end.time() != time():
        return f"partial day\n(to {end:%H:%M} UTC)"
    return "partial day"


def _day_axis(ax: Axes, axis: DayAxis) -> None:
    """Daily ticks with dates, the same limits on every chart, and the partial days shaded."""
    import matplotlib.dates as mdates

    step = max(1, math.ceil(len(axis.days) / 14))
    # matplotlib.dates has no type annotations.
    ax.xaxis.set_major_locator(mdates.DayLocator(interval=step))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%a %d %b"))  # type: ignore[no-untyped-call]
    ax.set_xlim(_x(axis.days[0]) - 0.6, _x(axis.days[-1]) + 0.6)
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    for i, partial in enumerate(axis.partial):
        if partial:
            x = _x(axis.days[i])
            ax.axvspan(x - 0.5, x + 0.5, color="grey", alpha=0.12, linewidth=0)
            ax.text(
                x,
                1.01,
                _partial_label(axis, i),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color="dimgrey",
            )


def _legend_outside(ax: Axes) -> None:
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _draw_rewards(chart: RewardChart) -> Figure:
    fig = _figure(10, 4.4)
    ax = fig.add_subplot()
    xs = [_x(d) for d in chart.axis.days]
    partial = chart.axis.partial
    for s in chart.series:
        ys = [math.nan if v is None else v for v in s.per_slate]
        whole = [math.nan if p else y for y, p in zip(ys, partial, strict=True)]
        (line,) = ax.plot(xs, whole, marker="o", markersize=4, label=s.label)
        colour = line.get_color()
        for i, p in enumerate(partial):
            if not p or math.isnan(ys[i]):
                continue
            # A partial day is drawn dashed and hollow: its slates may still earn reward, so
            # the point is provisional, not a fall.
            before = [j for j in range(i) if not math.isnan(ys[j])][-1:]
            after = [j for j in range(i + 1, len(ys)) if not math.isnan(ys[j])][:1]
            for j in before + after:
                ax.plot([xs[j], xs[i]], [ys[j], ys[i]], linestyle="--", color=colour)
            ax.plot(xs[i], ys[i], marker="o", markersize=5, mfc="white", color=colour)
        for x, y, n in zip(xs, ys, s.slates, strict=True):
            if n and not math.isnan(y):
                ax.annotate(
                    str(n),
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 5),
                    ha="center",
                    fontsize=6.5,
                    color=colour,
                )
    ax.set_title(chart.title, loc="left")
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.grid(alpha=0.3)
    _day_axis(ax, chart.axis)
    _legend_outside(ax)
    return fig


def _draw_outcomes(chart: OutcomeChart) -> Figure:
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    panels = chart.panels
    fig = _figure(10, 1.0 + 2.8 * len(panels))
    # Room between the panels for the lower one's two-line title.
    grid = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"hspace": 0.45})
    axes = grid[:, 0]
    xs = [_x(d) for d in chart.axis.days]
    kinds = sorted({k for p in panels for k in p.counts})
    # One colour per kind in both panels; tab20 only when there are more kinds than tab10 has.
    palette = colormaps["tab10" if len(kinds) <= 10 else "tab20"]
    colours = {k: palette(i) for i, k in enumerate(kinds)}
    for ax, panel in zip(axes, panels, strict=True):
        bottom = [0] * len(xs)
        for kind in kinds:
            heights = panel.counts.get(kind, (0,) * len(xs))
            if not any(heights):
                continue
            whole = [0 if p else h for h, p in zip(heights, chart.axis.partial, strict=True)]
            part = [h if p else 0 for h, p in zip(heights, chart.axis.partial, strict=True)]
            ax.bar(xs, whole, bottom=bottom, width=0.8, color=colours[kind], label=kind)
            # The partial day's bar is hatched and pale: a count that is still growing.
            ax.bar(
                xs,
                part,
                bottom=bottom,
                width=0.8,
                color=colours[kind],
                alpha=0.4,
                hatch="///",
                edgecolor="white",
            )
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_title(panel.title, fontsize="medium", loc="left")
        ax.set_ylabel(chart.ylabel)
        ax.grid(alpha=0.3, axis="y")
        _day_axis(ax, chart.axis)
    handles = [Patch(color=colours[k], label=k) for k in kinds]
    axes[0].legend(
        handles=handles,
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        title="kind",
    )
    axes[-1].set_xlabel(chart.xlabel)
    fig.suptitle(chart.title)
    return fig


def _draw_estimates(chart: EstimateChart) -> Figure:
    rows = chart.rows
    fig = _figure(10, 0.9 + 0.45 * len(rows))
    ax = fig.add_subplot()
    clashing = {(d.target, e.estimator) for d in chart.disagreements for e in (d.first, d.second)}
    for y, e in enumerate(rows):
        colour = "tab:red" if (e.target, e.estimator) in clashing else "tab:blue"
        ax.errorbar(
            [e.estimate],
            [y],
            xerr=[[max(e.estimate - e.low, 0.0)], [max(e.high - e.estimate, 0.0)]],
            fmt="o",
            capsize=4,
            color=colour,
        )
        if e.target == "logged":
            ax.axvline(e.estimate, color="grey", linestyle="--", linewidth=1)
            ax.axvspan(e.low, e.high, color="grey", alpha=0.12)
    ax.set_yticks(range(len(rows)), [f"{e.target} · {e.estimator}" for e in rows])
    ax.invert_yaxis()
    title = chart.title
    if chart.disagreements:
        title += "\nred: estimators whose intervals do not overlap (see the warning)"
    ax.set_title(title, loc="left")
    ax.set_xlabel(chart.xlabel)
    ax.grid(alpha=0.3, axis="x")
    return fig


def _draw_lag(chart: LagChart) -> Figure:
    fig = _figure(10, 0.9 + 0.5 * len(chart.rows))
    ax = fig.add_subplot()
    labels = [f"{s.name} v{s.version} ({s.status})" for s in chart.rows]
    ax.barh(labels, [s.lag_seconds for s in chart.rows])
    for y, s in enumerate(chart.rows):
        ax.annotate(f" {s.lag_events} events", (s.lag_seconds, y), va="center")
    ax.set_xlabel(chart.xlabel)
    ax.set_title(chart.title, loc="left")
    ax.invert_yaxis()
    return fig


def draw_figures(c: Charts) -> dict[str, Figure]:
    """The charts drawn, keyed by section (none for a chart with nothing to show)."""
    figures: dict[str, Figure] = {}
    if c.rewards is not None:
        figures["rewards"] = _draw_rewards(c.rewards)
    if c.estimates is not None:
        figures["estimates"] = _draw_estimates(c.estimates)
    if c.outcomes is not None and c.outcomes.panels:
        figures["outcomes"] = _draw_outcomes(c.outcomes)
    if c.lag.message is None:
        figures["lag"] = _draw_lag(c.lag)
    return figures


def draw(c: Charts) -> dict[str, str]:
    """The charts as base64 PNGs, keyed by section."""
    return {name: _png(fig) for name, fig in draw_figures(c).items()}


# --- the page ----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.note{color:#666}
.warning{background:#fff4e5;border-left:4px solid #e67700;padding:.5em .8em;margin:.8em 0}
dl.estimators dt{font-weight:600;margin-top:.4em}dl.estimators dd{margin-left:1.2em}
"""

_NAMES = {
    "on-policy": "logged (on-policy)",
    "replay": "Replay",
    "ipw": "IPW",
    "snipw": "SNIPW",
    "dm": "DM",
    "dr": "DR",
    "switch_dr": "Switch-DR",
}


def _day_label(axis: DayAxis, i: int) -> str:
    return axis.days[i].isoformat() + (" (partial)" if axis.partial[i] else "")


def _interval(e: EstimateRow) -> str:
    return f"{e.estimate:+.4f} [{e.low:+.4f}, {e.high:+.4f}]"


def _rewards_section(data: ReportData, chart: RewardChart | None, plot: str | None) -> list[str]:
    parts = ["<h2>Reward over time</h2>"]
    if chart is None or plot is None:
        return [*parts, '<p class="note">No served slates in this window.</p>']
    parts.append(_img(plot, f"reward per slate by the {SERVED_AXIS}"))
    # Each point with the number of slates it averages: the page has no hover.
    days = [i for i in range(len(chart.axis.days)) if any(s.slates[i] for s in chart.series)]
    parts.append(
        _table(
            ["day served (UTC)", *(f"{s.label}: reward/slate (n slates)" for s in chart.series)],
            [
                (
                    _day_label(chart.axis, i),
                    *(
                        "-" if v is None else f"{v:.4f} ({s.slates[i]})"
                        for s in chart.series
                        for v in [s.per_slate[i]]
                    ),
                )
                for i in days
            ],
        )
    )
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in data.rewards:
        t = totals[(r.surface or ORGANIC, r.policy)]
        t[0] += r.slates
        t[1] += r.reward
    parts.append(
        _table(
            ["surface", "policy", "slates", "reward", "reward per slate"],
            [
                (s, p, int(n), f"{rw:.3f}", f"{rw / n:.4f}" if n else "-")
                for (s, p), (n, rw) in sorted(totals.items())
            ],
        )
    )
    return parts


def _estimates_section(
    data: ReportData, chart: EstimateChart | None, plot: str | None
) -> list[str]:
    parts = ["<h2>Off-policy estimates</h2>"]
    if data.estimates_about:
        parts.append(f"<p>{html.escape(data.estimates_about)}</p>")
    if chart is None or plot is None:
        return [*parts, '<p class="note">No estimates: nothing was evaluated.</p>']
    by_target: dict[str, list[Disagreement]] = defaultdict(list)
    for d in chart.disagreements:
        by_target[d.target].append(d)
    for target, found in by_target.items():
        pairs: dict[str, list[str]] = defaultdict(list)
        for d in found:
            pairs[d.meaning].append(
                f"{_NAMES[d.first.estimator]} {_interval(d.first)} vs "
                f"{_NAMES[d.second.estimator]} {_interval(d.second)}"
            )
        items = "".join(
            f"<li>{html.escape('; '.join(named))}: {html.escape(text)}</li>"
            for text, named in pairs.items()
        )
        parts.append(
            f'<div class="warning"><strong>Warning: the estimators disagree about '
            f"{html.escape(target)} beyond their intervals.</strong> The intervals cover "
            "sampling noise only, not an estimator's bias, so at least one of each pair is "
            "biased here, or rarely it is chance (if one interval is much wider than the other, "
            f"that one's variance is the likelier cause). What it usually means:<ul>{items}</ul>"
            "</div>"
        )
    parts.append(_img(plot, "off-policy estimates with confidence intervals"))
    parts.append(
        _table(
            ["target", "estimator", "estimate", "CI low", "CI high"],
            [
                (e.target, e.estimator, f"{e.estimate:.5f}", f"{e.low:.5f}", f"{e.high:.5f}")
                for e in chart.rows
            ],
        )
    )
    lines = "".join(
        f"<dt>{html.escape(_NAMES[name])}</dt><dd>{html.escape(text)}</dd>"
        for name, text in chart.explanations
    )
    parts.append(
        "<p>What each estimator does, and when to trust it. Rule of thumb: when DR and SNIPW "
        "agree with narrow intervals, trust them; DM alone only for a target that shows the "
        "kind of items the log shows; IPW when its interval is narrow.</p>"
        f'<dl class="estimators">{lines}</dl>'
    )
    return parts


def _outcomes_section(chart: OutcomeChart | None, plot: str | None) -> list[str]:
    parts = ["<h2>Outcome mix</h2>"]
    if chart is None or plot is None:
        return [*parts, '<p class="note">No outcomes in this window.</p>']
    parts.append(_img(plot, f"outcome mix per day, by the {OUTCOME_AXIS}"))
    kinds = sorted({k for p in chart.panels for k in p.counts} | set(chart.earlier))
    by_kind: dict[tuple[bool, str], int] = defaultdict(int)
    for p in chart.panels:
        for kind, counts in p.counts.items():
            by_kind[(p.from_slate, kind)] += sum(counts)
    for kind, n in chart.earlier.items():
        by_kind[(False, kind)] += n
    rows: list[tuple[object, ...]] = [
        (
            kind,
            by_kind[(True, kind)],
            by_kind[(False, kind)],
            by_kind[(True, kind)] + by_kind[(False, kind)],
        )
        for kind in kinds
    ]
    slates, organic = (sum(n for (f, _), n in by_kind.items() if f is w) for w in (True, False))
    rows.append(("all", slates, organic, slates + organic))
    parts.append(_table(["kind", "answering a slate", "organic", "outcomes"], rows))
    return parts


def _lag_section(chart: LagChart, plot: str | None) -> list[str]:
    parts = ["<h2>Projection lag</h2>"]
    if chart.message is not None:
        parts.append(f"<p>{html.escape(chart.message)}</p>")
    elif plot is not None:
        parts.append(_img(plot, "projection lag"))
    if chart.rows:
        parts.append(
            _table(
                ["projection", "version", "status", "position", "lag events", "lag seconds"],
                [
                    (
                        s.name,
                        s.version,
                        s.status,
                        s.position.global_position,
                        s.lag_events,
                        f"{s.lag_seconds:.1f}",
                    )
                    for s in chart.rows
                ],
            )
        )
    return parts


def render(data: ReportData, c: Charts | None = None) -> str:
    """The report as one HTML document (`c`: the chart data, if already computed)."""
    c = c if c is not None else charts(data)
    plots = draw(c)
    window = (
        f"{data.since.isoformat() if data.since else 'the first event'} to "
        f"{data.until.isoformat() if data.until else 'now'}"
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Segue report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Segue report</h1>",
        f"<p>Generated {html.escape(data.generated_at.isoformat(timespec='seconds'))}, "
        f"covering {html.escape(window)}.",
    ]
    if data.reward_definition:
        definition = html.escape(data.reward_definition)
        parts.append(f" Rewards under definition <code>{definition}</code>.")
    parts.append("</p>")
    if c.axis.days:
        partial = [_day_label(c.axis, i) for i, p in enumerate(c.axis.partial) if p]
        parts.append(
            "<p>Time axis of every chart: the UTC day the slate was served. Outcomes count on "
            "the day of the slate they answer; outcomes that answer no served slate (organic "
            "listening) on the day they occurred. Never the day the event was written."
            + (
                f" Shaded, hatched or dashed: {html.escape(', '.join(partial))}, which the "
                "window covers only in part, so its figures are still growing."
                if partial
                else ""
            )
            + "</p>"
        )
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in data.notes]
    parts += [
        "<h2>Events</h2>",
        _table(["event type", "events recorded"], sorted(data.event_counts.items())),
    ]
    parts += _rewards_section(data, c.rewards, plots.get("rewards"))
    parts += _estimates_section(data, c.estimates, plots.get("estimates"))
    parts += _outcomes_section(c.outcomes, plots.get("outcomes"))
    parts += _lag_section(c.lag, plots.get("lag"))
    parts.append("</body></html>")
    return "".join(parts)


__all__ = [
    "Charts",
    "DayAxis",
    "Disagreement",
    "EstimateChart",
    "EstimateRow",
    "LagChart",
    "OutcomeChart",
    "OutcomeDay",
    "OutcomePanel",
    "ReportData",
    "RewardChart",
    "RewardDay",
    "RewardSeries",
    "charts",
    "day_axis",
    "disagreements",
    "draw",
    "draw_figures",
    "estimate_rows",
    "explanations",
    "gather",
    "overlap",
    "render",
]
