"""The one place the serving graph is wired: the gateway's app and offline evaluation both
build their services here, so the policy they run is assembled the same way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from domain.ranking import PolicyParams
from gateway.index.holder import IndexHolder
from gateway.projections.rewards import LiveVersions
from gateway.serving.catalog import Catalog
from gateway.serving.erasure import Erasure
from gateway.serving.experiments import Experiments
from gateway.serving.items import ItemTable
from gateway.serving.listeners import Pseudonyms
from gateway.serving.outcomes import OutcomeRecorder, SlateLookup
from gateway.serving.recommendations import Recommender, follow
from gateway.serving.scores import ItemScores
from gateway.store.api import EventStore


@dataclass(frozen=True)
class Serving:
    versions: LiveVersions
    scores: ItemScores
    catalog: Catalog
    pseudonyms: Pseudonyms
    erasure: Erasure
    recommender: Recommender
    outcomes: OutcomeRecorder
    experiments: Experiments


@dataclass(frozen=True, slots=True)
class ServingParams:
    policy: PolicyParams
    catalog_cache_seconds: float = 1.0
    pseudonym_cache_seconds: float = 60.0
    scores_refresh_seconds: float = 10.0
    slow_query_timeout_seconds: float | None = None


def build_serving(
    pool: asyncpg.Pool,
    store: EventStore,
    index: IndexHolder,
    clock: Callable[[], datetime],
    params: ServingParams,
) -> Serving:
    """The services over one database and index holder, wired to keep the item table current
    (index swaps and score refreshes call into it; `run` keeps the catalogue current)."""
    versions = LiveVersions(pool)
    scores = ItemScores(
        pool,
        versions,
        every=params.scores_refresh_seconds,
        timeout=params.slow_query_timeout_seconds,
    )
    table = ItemTable(params.policy.w_long_term, scores.unseen)
    catalog = Catalog(pool, store, params.catalog_cache_seconds, table)
    follow(table, index, scores)
    pseudonyms = Pseudonyms(pool, ttl_seconds=params.pseudonym_cache_seconds)
    experiments = Experiments(pool, store, clock)
    recommender = Recommender(
        pool, store, catalog, pseudonyms, clock, index, versions, params.policy, experiments
    )
    return Serving(
        versions=versions,
        scores=scores,
        catalog=catalog,
        pseudonyms=pseudonyms,
        erasure=Erasure(store, pseudonyms),
        recommender=recommender,
        outcomes=OutcomeRecorder(store, SlateLookup(pool), pseudonyms, clock),
        experiments=experiments,
    )


@contextlib.asynccontextmanager
async def running(serving: Serving) -> AsyncIterator[None]:
    """The background tasks that keep a long-lived graph current: scores and catalogue."""
    tasks = [
        asyncio.create_task(serving.scores.watch(), name="item-scores"),
        asyncio.create_task(serving.catalog.watch(), name="catalogue-changes"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
