"""What the policy knows about items, read from the rewards projection: served items get a
reward posterior, and an item never served looks like an average one on the long-term part."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from domain.events import (
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
    to_payload,
)
from domain.longterm import uninformed_prior
from domain.rewards import DEFAULT
from gateway.projections.definitions import PROJECTIONS
from gateway.projections.rewards import LiveVersions
from gateway.projections.runner import Runner
from gateway.serving.scores import PRIOR_IMPRESSIONS, PRIOR_VARIANCE, ItemScores
from gateway.store.api import NewEvent
from gateway.store.postgres import PostgresEventStore
from tests.integration.projection_helpers import log_end


def _event(e: RecommendationServed | OutcomeRecorded) -> NewEvent:
    return NewEvent(uuid.uuid4(), e.stream_id(), e.TYPE, e.SCHEMA_VERSION, to_payload(e))


async def test_unseen_items_get_the_prior_and_the_long_term_baseline(
    pg_store: PostgresEventStore, pool: asyncpg.Pool, db_url: str
) -> None:
    at = datetime.now(UTC) - timedelta(hours=1)
    events: list[RecommendationServed | OutcomeRecorded] = []
    for u in range(10):
        rec = uuid.uuid4()
        slate = (SlateEntry("liked", 0, 1.0, 0.9), SlateEntry("ignored", 1, 0.5, 0.9))
        events.append(
            RecommendationServed(rec, f"p{u}", "home", {}, slate, "test", "1", "none", at)
        )
        events.append(
            OutcomeRecorded(uuid.uuid4(), f"p{u}", "liked", OutcomeKind.STREAM_30S, at, rec)
        )
    await pg_store.append([_event(e) for e in events])
    runner = Runner(db_url, PROJECTIONS["rewards"], batch_size=500)
    task = asyncio.create_task(runner.run())
    try:
        async with pool.acquire() as conn:
            await runner.wait_for(await log_end(conn), timeout=30)
    finally:
        task.cancel()

    scores = ItemScores(pool, LiveVersions(pool))
    await scores.refresh()
    liked, ignored, unseen = (scores.get(i) for i in ("liked", "ignored", "never-served"))
    assert (liked.served, ignored.served, unseen.served) == (10, 10, 0)
    assert liked.reward_mean > 0 == ignored.reward_mean == unseen.reward_mean
    # Ten impressions make the posterior narrower than the prior's.
    assert unseen.reward_sd == math.sqrt(PRIOR_VARIANCE / PRIOR_IMPRESSIONS)
    assert liked.reward_sd < unseen.reward_sd
    assert ignored.reward_sd < unseen.reward_sd
    # No item has complete traces yet: every item is at the prior's estimate, including the one
    # never served, which must not be ranked below served items merely for being unseen.
    baseline = float(np.sum(uninformed_prior(DEFAULT.horizon_days).mean))
    assert baseline > 0
    for s in (liked, ignored, unseen):
        assert math.isclose(s.long_term, baseline)
    assert scores.best(1, w_long_term=0.2) == ["liked"]
