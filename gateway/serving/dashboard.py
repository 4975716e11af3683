"""What the admin dashboard charts, read from the analysts' views (`analytics`, migration 0003):
served slates and the outcomes attributed to them, in daily buckets of the day each slate was
served (its `requested_at`, UTC).

One time axis for both charts: an outcome counts on the day its slate was served, not the day it
happened or was recorded, so a day's reward per slate is exactly the weights of that day's
outcome mix over that day's slates, and a late outcome moves an old day, never today's.
Organic outcomes (naming no slate, or not attributable to it) have no serve day and are not
charted. The views apply the rewards projection's attribution rules and reward definition, and
read the log itself, so the charts still move while a projection is failed or rebuilt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

# $2 and $3 bound the serve time. Both statements also filter on `recorded_at` ($1, a day
# earlier), which the events table's BRIN index serves, so two weeks of dashboard read about two
# weeks of the log however long it is. A slate is recorded when it is served (the day's margin
# covers clocks that disagree) and an outcome after its slate, so that filter drops nothing the
# serve-time one keeps.
_SLATES = """
SELECT (requested_at AT TIME ZONE 'UTC')::date AS day, surface,
       count(DISTINCT recommendation_id) AS slates
FROM analytics.recommendations
WHERE recorded_at >= $1 AND requested_at >= $2 AND requested_at < $3
GROUP BY 1, 2
"""

_ATTRIBUTED = """
SELECT (requested_at AT TIME ZONE 'UTC')::date AS day, surface, kind,
       count(*) AS n, coalesce(sum(reward), 0) AS reward
FROM analytics.attributed_outcomes
WHERE recorded_at >= $1 AND requested_at >= $2 AND requested_at < $3
GROUP BY 1, 2, 3
"""

_DAY = timedelta(days=1)
_DEFINITION = "SELECT version FROM analytics.reward_definition"


@dataclass(frozen=True, slots=True)
class SurfaceDay:
    """Slates one surface served on one UTC day, and what the outcomes attributed to them are
    worth under the current reward definition."""

    day: date
    surface: str
    slates: int
    outcomes: int
    reward: float

    @property
    def per_slate(self) -> float:
        return self.reward / self.slates if self.slates else 0.0


@dataclass(frozen=True, slots=True)
class KindDay:
    """Outcomes of one kind attributed to the slates served on one UTC day (every surface)."""

    day: date
    kind: str
    count: int


@dataclass(frozen=True, slots=True)
class ServeDays:
    first: date  # the window's first day
    last: date  # and its last (today), both inclusive
    definition_version: str | None
    surfaces: list[SurfaceDay]
    kinds: list[KindDay]


async def serve_days(
    pool: Any,  # asyncpg's pool, or a connection of the caller's own
    today: date,
    days: int,
    *,
    timeout: float | None = None,  # noqa: ASYNC109  (the statements' own bound)
) -> ServeDays:
    """The `days` UTC days up to and including `today`, by the day each slate was served."""
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, time(), UTC)
    bounds = (start - _DAY, start, datetime.combine(today, time(), UTC) + _DAY)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # One snapshot: an outcome counted is never missing its slate (or the other way).
        slates = await conn.fetch(_SLATES, *bounds, timeout=timeout)
        attributed = await conn.fetch(_ATTRIBUTED, *bounds, timeout=timeout)
        definition = await conn.fetchval(_DEFINITION, timeout=timeout)

    served: dict[tuple[date, str], int] = {(r["day"], r["surface"]): r["slates"] for r in slates}
    outcomes: dict[tuple[date, str], int] = defaultdict(int)
    reward: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    kinds: dict[tuple[date, str], int] = defaultdict(int)
    for r in attributed:
        outcomes[(r["day"], r["surface"])] += r["n"]
        reward[(r["day"], r["surface"])] += r["reward"]
        kinds[(r["day"], r["kind"])] += r["n"]
    return ServeDays(
        first=first,
        last=today,
        definition_version=definition,
        # An outcome is only attributed to a slate that was served, so every key with outcomes
        # has slates too.
        surfaces=[
            SurfaceDay(day, surface, n, outcomes[(day, surface)], float(reward[(day, surface)]))
            for (day, surface), n in sorted(served.items())
        ],
        kinds=[KindDay(day, kind, n) for (day, kind), n in sorted(kinds.items())],
    )
