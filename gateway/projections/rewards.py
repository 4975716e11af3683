"""Reading the reward projections: an item's aggregates now or as they stood at any instant.

Aggregates are stored as deltas keyed by the `recorded_at` of the events that caused them, so
"as of T" is the sum of the deltas recorded up to T: what a rebuild from the events recorded up
to T would hold. The long-term estimate conditions a prior fitted on the items whose traces were
complete at T.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg
import numpy as np

from domain.longterm import (
    LongTermEstimate,
    TracePrior,
    fit_prior,
    observed_days,
    posterior,
    uninformed_prior,
)
from domain.reward_fold import ORGANIC, day_number
from domain.rewards import RewardDefinition
from gateway.projections.definitions import q
from gateway.projections.runner import Version, live_version
from gateway.store.reads import NotSettled


@dataclass(frozen=True, slots=True)
class SurfaceRewards:
    served: int
    outcomes: dict[str, int]
    reward_sum: Decimal
    reward_sq: Decimal

    @property
    def mean(self) -> float:
        return float(self.reward_sum / self.served) if self.served else 0.0


@dataclass(frozen=True, slots=True)
class ItemRewards:
    item_id: str
    as_of: datetime
    definition_version: str
    total: SurfaceRewards
    by_surface: dict[str, SurfaceRewards]
    positions: dict[int, int]
    long_term: LongTermEstimate
    horizon_days: int
    projected_through: datetime | None


def total_of(
    surfaces: Iterable[SurfaceRewards], outcomes: Mapping[str, Mapping[str, int]]
) -> SurfaceRewards:
    """An item's totals: the sum over surfaces, with outcomes attributed or not."""
    every = list(surfaces)
    kinds: dict[str, int] = defaultdict(int)
    for counts in outcomes.values():
        for kind, n in counts.items():
            kinds[kind] += n
    return SurfaceRewards(
        sum(s.served for s in every),
        dict(kinds),
        sum((s.reward_sum for s in every), Decimal(0)),
        sum((s.reward_sq for s in every), Decimal(0)),
    )


class LiveVersions:
    """Which schema holds each projection's live version; re-read every few seconds, so a
    rebuild's swap reaches every process quickly."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 2.0) -> None:
        self._pool = pool
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Version]] = {}

    async def get(self, name: str, *, fresh: bool = False) -> Version | None:
        hit = self._cache.get(name)
        if hit is not None and not fresh and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        async with self._pool.acquire() as conn:
            version = await live_version(conn, name)
        if version is not None:
            self._cache[name] = (time.monotonic(), version)
        return version


class RewardsReader:
    def __init__(
        self,
        pool: asyncpg.Pool,
        versions: LiveVersions,
        prior_ttl: float = 60.0,
        *,
        prior_timeout: float | None = None,
        settle_seconds: float = 3.0,
    ) -> None:
        """`prior_timeout` bounds fitting the trace prior, which reads every item's traces,
        instead of the pool's `command_timeout` (None: the pool's)."""
        self._pool = pool
        self._versions = versions
        self._prior_ttl = prior_ttl
        self._prior_timeout = prior_timeout
        self._settle_seconds = settle_seconds
        self._prior: dict[tuple[str, int], tuple[float, TracePrior]] = {}

    async def item(self, item_id: str, as_of: datetime, *, current: bool) -> ItemRewards | None:
        """None while the rewards projection has no live version yet."""
        for attempt in range(2):
            version = await self._versions.get("rewards", fresh=attempt > 0)
            if version is None:
                return None
            try:
                return await self._item(version, item_id, as_of, current=current)
            except asyncpg.UndefinedTableError:
                continue  # swapped by a rebuild since the version was cached
        raise RuntimeError("the rewards projection keeps moving; try again")

    async def _item(
        self, version: Version, item_id: str, as_of: datetime, *, current: bool
    ) -> ItemRewards:
        s = q(version.schema)
        definition = version.definition
        if not current:
            await self._settled(version, as_of)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            rewards = await conn.fetch(
                f"SELECT surface, sum(served), sum(reward_sum), sum(reward_sq) "
                f"FROM {s}.item_rewards WHERE item_id = $1 AND at <= $2 GROUP BY surface",
                item_id,
                as_of,
            )
            outcomes = await conn.fetch(
                f"SELECT surface, kind, sum(n) FROM {s}.item_outcomes "
                "WHERE item_id = $1 AND at <= $2 GROUP BY surface, kind",
                item_id,
                as_of,
            )
            positions = await conn.fetch(
                f"SELECT position, sum(served) FROM {s}.item_positions "
                "WHERE item_id = $1 AND at <= $2 GROUP BY position",
                item_id,
                as_of,
            )
            starts = await conn.fetch(
                f"SELECT start_day, sum(traces) FROM {s}.lt_starts "
                "WHERE item_id = $1 AND at <= $2 GROUP BY start_day",
                item_id,
                as_of,
            )
            active = await conn.fetch(
                f"SELECT start_day, day_offset, sum(active) FROM {s}.lt_active "
                "WHERE item_id = $1 AND at <= $2 GROUP BY start_day, day_offset",
                item_id,
                as_of,
            )
            through = await conn.fetchval(
                "SELECT settled_through FROM projections WHERE name = $1 AND version = $2",
                version.name,
                version.version,
            )
            prior = await self._prior_for(conn, version, definition, as_of, current=current)
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for surface, kind, n in outcomes:
            counts[surface][kind] = int(n)
        by_surface = {
            surface: SurfaceRewards(int(served), counts.get(surface, {}), total, sq)
            for surface, served, total, sq in rewards
        }
        for surface in counts:
            if surface != ORGANIC:
                by_surface.setdefault(
                    surface, SurfaceRewards(0, counts[surface], Decimal(0), Decimal(0))
                )
        total = total_of(by_surface.values(), counts)
        sums, observed = observed_days(
            {int(r[0]): int(r[1]) for r in starts},
            {(int(r[0]), int(r[1])): int(r[2]) for r in active},
            day_number(as_of),
            definition.horizon_days,
        )
        return ItemRewards(
            item_id=item_id,
            as_of=as_of,
            definition_version=definition.version,
            total=total,
            by_surface=by_surface,
            positions={int(p): int(n) for p, n in positions},
            long_term=posterior(prior, sums, observed),
            horizon_days=definition.horizon_days,
            projected_through=through,
        )

    async def _settled(self, version: Version, as_of: datetime) -> None:
        """Wait (briefly) until every event recorded up to `as_of` is applied, so that the
        answer is what a rebuild of the log truncated there gives, and never changes; raise
        NotSettled if that takes longer than `settle_seconds`."""
        deadline = time.monotonic() + self._settle_seconds
        wait = 0.02
        while True:
            through = await self._pool.fetchval(
                "SELECT settled_through FROM projections WHERE name = $1 AND version = $2",
                version.name,
                version.version,
            )
            # Strictly after: an event stamped at that very microsecond may not be applied.
            if through is not None and through > as_of:
                return
            if time.monotonic() > deadline:
                settled = through.isoformat() if through is not None else "no instant yet"
                raise NotSettled(
                    f"the rewards are settled through {settled}, not yet past as_of "
                    f"{as_of.isoformat()}; retry shortly"
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, 0.2)

    async def _prior_for(
        self,
        conn: asyncpg.pool.PoolConnectionProxy,
        version: Version,
        definition: RewardDefinition,
        as_of: datetime,
        *,
        current: bool,
    ) -> TracePrior:
        key = (version.schema, day_number(as_of))
        hit = self._prior.get(key)
        if current and hit is not None and time.monotonic() - hit[0] < self._prior_ttl:
            return hit[1]
        prior = await fit_prior_at(
            conn, version.schema, definition, as_of, statement_timeout=self._prior_timeout
        )
        if current:
            self._prior = {key: (time.monotonic(), prior)}
        return prior


async def fit_prior_at(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    schema: str,
    definition: RewardDefinition,
    as_of: datetime,
    *,
    statement_timeout: float | None = None,
) -> TracePrior:
    """The trace prior fitted on every item's traces as they stood at `as_of`;
    `statement_timeout` bounds each statement (None: the connection's `command_timeout`)."""
    s = q(schema)
    horizon = definition.horizon_days
    starts: dict[str, dict[int, int]] = defaultdict(dict)
    for item, start, n in await conn.fetch(
        f"SELECT item_id, start_day, sum(traces) FROM {s}.lt_starts WHERE at <= $1 "
        "GROUP BY item_id, start_day",
        as_of,
        timeout=statement_timeout,
    ):
        starts[item][int(start)] = int(n)
    active: dict[str, dict[tuple[int, int], int]] = defaultdict(dict)
    for item, start, offset, n in await conn.fetch(
        f"SELECT item_id, start_day, day_offset, sum(active) FROM {s}.lt_active WHERE at <= $1 "
        "GROUP BY item_id, start_day, day_offset",
        as_of,
        timeout=statement_timeout,
    ):
        active[item][(int(start), int(offset))] = int(n)
    today = day_number(as_of)
    items = sorted(starts)
    if not items:
        return uninformed_prior(horizon)
    sums = np.zeros((len(items), horizon))
    counts = np.zeros((len(items), horizon))
    for i, item in enumerate(items):
        sums[i], counts[i] = observed_days(starts[item], active.get(item, {}), today, horizon)
    return fit_prior(sums, counts) or uninformed_prior(horizon)
