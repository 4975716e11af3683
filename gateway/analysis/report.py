"""`segue report`: one self-contained HTML page about what was served and what happened next.

The page has no external assets (plots are inline PNGs), so it can be mailed or attached to a
ticket. Everything in it is read from the event store and the live projections at the moment the
report is made; it never writes.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np

from domain.events import OutcomeRecorded
from gateway.projections.runner import Status
from gateway.projections.runner import status as projection_status
from gateway.store import reads


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
    day: datetime
    kind: str
    count: int


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


async def gather(
    conn: asyncpg.Connection, since: datetime | None = None, until: datetime | None = None
) -> ReportData:
    """Read everything the report shows (one connection, read-only statements)."""
    counts = await reads.counts_by_type(conn, since, until)
    outcomes = [
        OutcomeDay(day, kind, n)
        for day, kind, n in await reads.daily_field_counts(
            conn, OutcomeRecorded.TYPE, "kind", since, until
        )
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


# --- rendering ---------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _dates(days: Sequence[datetime]) -> np.ndarray[Any, np.dtype[np.datetime64]]:
    """UTC instants as numpy datetimes, which matplotlib puts on a date axis by itself."""
    return np.array([d.astimezone(UTC).replace(tzinfo=None) for d in days], dtype="datetime64[s]")


def _plots(data: ReportData) -> dict[str, str]:
    """The report's figures as base64 PNGs, keyed by section."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    if data.rewards:
        series: dict[tuple[str, str], list[RewardDay]] = defaultdict(list)
        for row in data.rewards:
            series[(row.surface or "(organic)", row.policy)].append(row)
        fig, ax = plt.subplots(figsize=(9, 4))
        for (surface, policy), rows in sorted(series.items()):
            ax.plot(
                _dates([r.day for r in rows]),
                [r.per_slate for r in rows],
                marker="o",
                label=f"{surface} · {policy}",
            )
        ax.set_ylabel("attributed reward per slate")
        ax.set_title("Short-term reward over time, per surface and policy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.autofmt_xdate()
        out["rewards"] = _png(fig)
        plt.close(fig)
    if data.estimates:
        fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * len(data.estimates)))
        labels = [f"{e.target} · {e.estimator}" for e in data.estimates]
        ys = list(range(len(data.estimates)))
        ax.errorbar(
            [e.estimate for e in data.estimates],
            ys,
            xerr=[
                [max(e.estimate - e.low, 0.0) for e in data.estimates],
                [max(e.high - e.estimate, 0.0) for e in data.estimates],
            ],
            fmt="o",
            capsize=4,
        )
        for e in data.estimates:
            if e.target == "logged":
                ax.axvline(e.estimate, color="grey", linestyle="--", linewidth=1)
                ax.axvspan(e.low, e.high, color="grey", alpha=0.12)
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        ax.set_xlabel("estimated reward per slate position (confidence interval)")
        ax.set_title("Off-policy estimates")
        ax.grid(alpha=0.3, axis="x")
        out["estimates"] = _png(fig)
        plt.close(fig)
    if data.outcomes:
        days = sorted({o.day for o in data.outcomes})
        kinds = sorted({o.kind for o in data.outcomes})
        table = {(o.day, o.kind): o.count for o in data.outcomes}
        fig, ax = plt.subplots(figsize=(9, 4))
        bottom = [0] * len(days)
        for kind in kinds:
            heights = [table.get((d, kind), 0) for d in days]
            ax.bar(_dates(days), heights, bottom=bottom, label=kind, width=0.8)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_ylabel("outcomes")
        ax.set_title("Outcome mix per day")
        ax.legend(fontsize="small", ncols=3)
        fig.autofmt_xdate()
        out["outcomes"] = _png(fig)
        plt.close(fig)
    if data.lag:
        fig, ax = plt.subplots(figsize=(9, 0.8 + 0.5 * len(data.lag)))
        labels = [f"{s.name} v{s.version} ({s.status})" for s in data.lag]
        ax.barh(labels, [s.lag_seconds for s in data.lag])
        for y, s in enumerate(data.lag):
            ax.annotate(f" {s.lag_events} events", (s.lag_seconds, y), va="center")
        ax.set_xlabel("seconds behind the log")
        ax.set_title("Projection lag when the report was made")
        ax.invert_yaxis()
        out["lag"] = _png(fig)
        plt.close(fig)
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.note{color:#666}
"""


def render(data: ReportData) -> str:
    """The report as one HTML document."""
    plots = _plots(data)
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
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in data.notes]
    parts += [
        "<h2>Events</h2>",
        _table(["event type", "count"], sorted(data.event_counts.items())),
    ]

    parts.append("<h2>Reward over time</h2>")
    if "rewards" in plots:
        parts.append(_img(plots["rewards"], "reward per slate over time"))
        totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in data.rewards:
            t = totals[(r.surface or "(organic)", r.policy)]
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
    else:
        parts.append('<p class="note">No served slates in this window.</p>')

    parts.append("<h2>Off-policy estimates</h2>")
    if data.estimates_about:
        parts.append(f"<p>{html.escape(data.estimates_about)}</p>")
    if "estimates" in plots:
        parts.append(_img(plots["estimates"], "off-policy estimates"))
        parts.append(
            _table(
                ["target", "estimator", "estimate", "CI low", "CI high"],
                [
                    (e.target, e.estimator, f"{e.estimate:.5f}", f"{e.low:.5f}", f"{e.high:.5f}")
                    for e in data.estimates
                ],
            )
        )
    else:
        parts.append('<p class="note">No estimates: nothing was evaluated.</p>')

    parts.append("<h2>Outcome mix</h2>")
    if "outcomes" in plots:
        parts.append(_img(plots["outcomes"], "outcome mix per day"))
        by_kind: dict[str, int] = defaultdict(int)
        for o in data.outcomes:
            by_kind[o.kind] += o.count
        parts.append(_table(["kind", "outcomes"], sorted(by_kind.items())))
    else:
        parts.append('<p class="note">No outcomes in this window.</p>')

    parts.append("<h2>Projection lag</h2>")
    if "lag" in plots:
        parts.append(_img(plots["lag"], "projection lag"))
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
                    for s in data.lag
                ],
            )
        )
    else:
        parts.append('<p class="note">No projections yet.</p>')
    parts.append("</body></html>")
    return "".join(parts)


__all__ = [
    "EstimateRow",
    "OutcomeDay",
    "ReportData",
    "RewardDay",
    "gather",
    "render",
]
