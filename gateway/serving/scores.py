"""What the policy knows about every item, kept in memory and refreshed in the background.

Per item: the posterior of the mean short-term reward of one impression (a Gaussian with a weak
prior centred on zero, so an item served twice is not trusted like one served two thousand
times), and the progressive long-term estimate. Reading the aggregates means summing their
time-keyed deltas, so this is done every few seconds for all items at once, never per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import numpy as np

from domain.longterm import TracePrior, observed_days, posterior
from domain.reward_fold import day_number
from gateway.metrics import SCORES_REFRESHED
from gateway.projections.definitions import q
from gateway.projections.rewards import LiveVersions, fit_prior_at
from gateway.serving.items import ItemScore
from gateway.store.background import run_every

log = logging.getLogger(__name__)

# Pseudo-impressions of the prior: how much evidence it takes to move away from zero.
PRIOR_IMPRESSIONS = 20.0
PRIOR_VARIANCE = 1.0


UNSEEN_SD = math.sqrt(PRIOR_VARIANCE / PRIOR_IMPRESSIONS)


def reward_posterior(served: int, total: float, squares: float) -> tuple[float, float]:
    """Posterior mean and standard deviation of an item's mean impression reward."""
    weight = served + PRIOR_IMPRESSIONS
    mean = total / weight
    variance = max(squares / served - (total / served) ** 2, 0.0) if served else PRIOR_VARIANCE
    # The observed spread, shrunk towards the prior's for items with little evidence.
    spread = (served * variance + PRIOR_IMPRESSIONS * PRIOR_VARIANCE) / weight
    return mean, math.sqrt(spread / weight)


class ItemScores:
    def __init__(
        self,
        pool: asyncpg.Pool,
        versions: LiveVersions,
        every: float = 10.0,
        *,
        timeout: float | None = None,
    ) -> None:
        """`timeout` bounds each statement of a refresh, which reads every item's rewards and
        traces, instead of the pool's `command_timeout` (None: the pool's)."""
        self._pool = pool
        self._timeout = timeout
        self._versions = versions
        self.every = every
        self.scores: dict[str, ItemScore] = {}
        # What an item never served scores: the reward prior, and the long-term estimate of an
        # item with no traces (the trace prior's), which every served item without traces
        # gets too, so being unseen is neither a penalty nor a bonus on the long-term part.
        self.unseen = ItemScore(0, 0.0, UNSEEN_SD, 0.0)
        self.refreshed_at: float | None = None
        # Called after each refresh: the serving table copies the scores into its arrays.
        self.on_refresh: list[Callable[[ItemScores], Awaitable[None]]] = []

    def get(self, item_id: str) -> ItemScore:
        return self.scores.get(item_id, self.unseen)

    def best(self, n: int, w_long_term: float) -> list[str]:
        """The items with the best expected reward (requests use `ItemTable.best`, computed
        at each refresh among live items; this sorts every scored item)."""
        ranked = sorted(
            self.scores.items(),
            key=lambda kv: (-(kv[1].reward_mean + w_long_term * kv[1].long_term), kv[0]),
        )
        return [item for item, _ in ranked[:n]]

    async def refresh(self) -> None:
        version = await self._versions.get("rewards")
        if version is None:
            return
        s = q(version.schema)
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT item_id, sum(served)::bigint, sum(reward_sum)::float8, "
                f"sum(reward_sq)::float8 FROM {s}.item_rewards GROUP BY item_id",
                timeout=self._timeout,
            )
            starts = await conn.fetch(
                f"SELECT item_id, start_day, sum(traces) FROM {s}.lt_starts "
                "GROUP BY item_id, start_day",
                timeout=self._timeout,
            )
            active = await conn.fetch(
                f"SELECT item_id, start_day, day_offset, sum(active) FROM {s}.lt_active "
                "GROUP BY item_id, start_day, day_offset",
                timeout=self._timeout,
            )
            prior = await fit_prior_at(
                conn, version.schema, version.definition, now, statement_timeout=self._timeout
            )
        # The arithmetic is per scored item in Python (~1 s at a hundred thousand items): in a
        # worker thread, so that the event loop keeps answering meanwhile.
        scores, baseline = await asyncio.to_thread(
            _scores,
            rows,
            starts,
            active,
            prior,
            day_number(now),
            version.definition.horizon_days,
        )
        self.scores = scores
        self.unseen = ItemScore(0, 0.0, UNSEEN_SD, baseline)
        self.refreshed_at = time.monotonic()
        SCORES_REFRESHED.set_to_current_time()
        for hook in self.on_refresh:
            await hook(self)

    async def watch(self) -> None:
        """Refresh every `every` seconds for as long as the process runs; an outage or a bad
        refresh keeps the last scores and tries again, sooner while the database is away."""
        # The last scores stay in use meanwhile; a dead refresher would freeze them.
        await run_every(
            self.every,
            self.refresh,
            "refresh item scores",
            log,
            initial=min(self.every, 0.5),
            maximum=self.every,
        )


def _scores(
    rows: Sequence[asyncpg.Record],
    start_rows: Sequence[asyncpg.Record],
    active_rows: Sequence[asyncpg.Record],
    prior: TracePrior,
    today: int,
    horizon: int,
) -> tuple[dict[str, ItemScore], float]:
    """Every scored item's posteriors and long-term estimate, and the estimate of an item with
    no traces (the prior's)."""
    starts: dict[str, dict[int, int]] = defaultdict(dict)
    for item, start, n in start_rows:
        starts[item][int(start)] = int(n)
    active: dict[str, dict[tuple[int, int], int]] = defaultdict(dict)
    for item, start, offset, n in active_rows:
        active[item][(int(start), int(offset))] = int(n)
    long_term = {
        item: posterior(
            prior, *observed_days(starts[item], active.get(item, {}), today, horizon)
        ).estimate
        for item in starts
    }
    baseline = float(np.sum(prior.mean))
    scores: dict[str, ItemScore] = {}
    for item, served, total, squares in rows:
        mean, sd = reward_posterior(int(served), float(total), float(squares))
        scores[item] = ItemScore(int(served), mean, sd, long_term.get(item, baseline))
    return scores, baseline
