"""The application factory. Nothing is built at import; resources live in `cleanup_ctx` so a
failure half-way through start-up unwinds what was already opened, in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
from aiohttp import web

from domain.embeddings import AlsParams
from gateway.http import handlers, personalize, redaction
from gateway.http.admin import admin_context
from gateway.http.appkeys import (
    CATALOG,
    CLOCK,
    DSN,
    ERASURE,
    EXPERIMENTS,
    INDEX,
    INDEX_SERVICE,
    KEYS,
    LIMITER,
    OPENAPI,
    OUTCOMES,
    POOL,
    PSEUDONYMS,
    RECOMMENDER,
    REWARDS,
    RUNNERS,
    SCORES,
    SETTINGS,
    STORE,
    VERSIONS,
)
from gateway.http.auth import KeyVerifier
from gateway.http.middleware import metrics_middleware, request_id_middleware
from gateway.http.openapi import build_spec
from gateway.http.personalizer import setup_personalizer
from gateway.http.problems import UNAVAILABLE, problem_middleware
from gateway.http.ratelimit import RateLimiter, SharedSpend
from gateway.http.routes import served_endpoints, setup_routes
from gateway.index.build import IndexParams
from gateway.index.holder import IndexHolder
from gateway.index.service import IndexService
from gateway.metrics import FLUSHES, POOL_CONNECTIONS
from gateway.projections.catalog import CatalogProjection
from gateway.projections.rewards import RewardsReader
from gateway.projections.runner import Runner, all_projections, publish_lag
from gateway.projections.runner import status as projection_status
from gateway.serving.graph import ServingParams, build_serving, running
from gateway.serving.recommendations import settle_heap
from gateway.settings import Settings
from gateway.store.database import UNAVAILABLE_ERRORS, create_pool, wait_for_database
from gateway.store.postgres import PostgresEventStore

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # The database may still be starting (a container, a failover): wait for it, bounded.
    # Every statement on the pool is bounded too (decision 50): a server that accepts but does
    # not answer makes a request a 503, not a hang.
    pool = await wait_for_database(
        "opening the connection pool",
        lambda: create_pool(
            app[DSN],
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            command_timeout=settings.query_timeout_seconds,
        ),
        settings.startup_wait_seconds,
    )
    app[POOL] = pool
    yield
    await pool.close()


async def _event_store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    projection = CatalogProjection()

    def committed() -> None:
        FLUSHES.inc()
        # Wake the in-process projectors now rather than at their next poll.
        for runner in app.get(RUNNERS, ()):
            runner.wake()

    store = PostgresEventStore(
        app[POOL],
        max_batch_events=settings.group_commit_max_events,
        flushers=settings.group_commit_flushers,
        inline=[projection],
        on_commit=committed,
    )
    await store.start()
    app[STORE] = store
    yield
    await store.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings, pool, store = app[SETTINGS], app[POOL], app[STORE]
    serving = build_serving(
        pool,
        store,
        app[INDEX],
        app[CLOCK],
        ServingParams(
            policy=settings.policy,
            catalog_cache_seconds=settings.catalog_cache_seconds,
            pseudonym_cache_seconds=settings.pseudonym_cache_seconds,
            scores_refresh_seconds=settings.scores_refresh_seconds,
            slow_query_timeout_seconds=settings.slow_query_timeout_seconds,
        ),
    )
    app[VERSIONS] = serving.versions
    app[SCORES] = serving.scores
    app[CATALOG] = serving.catalog
    app[PSEUDONYMS] = serving.pseudonyms
    app[ERASURE] = serving.erasure
    app[RECOMMENDER] = serving.recommender
    app[OUTCOMES] = serving.outcomes
    app[EXPERIMENTS] = serving.experiments
    with contextlib.suppress(*UNAVAILABLE_ERRORS):
        # Loaded before the first request where possible; else the first request loads it.
        await serving.catalog.catch_up()
        serving.catalog.items.refresh_pools()
    settle_heap()
    async with running(serving):
        yield


async def _edge(app: web.Application) -> AsyncIterator[None]:
    """What the HTTP edge keeps besides the services: keys, rate limits, the rewards reader."""
    settings, pool = app[SETTINGS], app[POOL]
    app[KEYS] = KeyVerifier(pool, settings.key_cache_seconds)
    app[LIMITER] = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    app[REWARDS] = RewardsReader(
        pool, app[VERSIONS], prior_timeout=settings.slow_query_timeout_seconds
    )
    shared: SharedSpend | None = None
    sharing: asyncio.Task[None] | None = None
    if settings.rate_limit_sync_seconds > 0:
        shared = SharedSpend(pool, app[LIMITER], every=settings.rate_limit_sync_seconds)
        sharing = asyncio.create_task(shared.run(), name="rate-limit-sharing")
    yield
    if shared is not None and sharing is not None:
        sharing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sharing
        # Leaving rows behind only costs others nothing: they stop growing, and are swept.
        with contextlib.suppress(*UNAVAILABLE_ERRORS):
            await shared.close()


async def _observability(app: web.Application) -> AsyncIterator[None]:
    """The pool's gauges, kept current; and /metrics on a port of its own when one is set."""
    settings, pool = app[SETTINGS], app[POOL]
    gauges = asyncio.create_task(_watch_pool(pool), name="pool-gauges")
    runner: web.AppRunner | None = None
    if settings.metrics_port is not None:
        scrapes = web.Application()
        scrapes.router.add_get("/metrics", handlers.metrics)
        runner = web.AppRunner(scrapes, access_log=None)
        await runner.setup()
        # Shared by every worker of `--workers`, as the API port is: any of them answers a
        # scrape with all of their samples (multiprocess mode).
        await web.TCPSite(runner, settings.host, settings.metrics_port, reuse_port=True).start()
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    yield
    gauges.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gauges
    if runner is not None:
        await runner.cleanup()


async def _watch_pool(pool: asyncpg.Pool, every: float = 1.0) -> None:
    while True:
        size, idle = pool.get_size(), pool.get_idle_size()
        POOL_CONNECTIONS.labels("in_use").set(size - idle)
        POOL_CONNECTIONS.labels("idle").set(idle)
        POOL_CONNECTIONS.labels("max").set(pool.get_max_size())
        await asyncio.sleep(every)


async def _projectors(app: web.Application) -> AsyncIterator[None]:
    """Single-node mode: the projectors run in the gateway process."""
    settings = app[SETTINGS]
    runners = (
        [Runner(app[DSN], p, batch_size=settings.projector_batch_size) for p in all_projections()]
        if settings.run_projectors
        else []
    )
    app[RUNNERS] = runners
    tasks = [asyncio.create_task(r.run(), name=f"projector-{r.projection.name}") for r in runners]
    lag = _watch_lag(app[POOL], settings.slow_query_timeout_seconds)
    tasks.append(asyncio.create_task(lag, name="lag-monitor"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _indexes(app: web.Application) -> AsyncIterator[None]:
    """Every process loads published indexes; in single-node mode this one also builds them."""
    settings = app[SETTINGS]
    holder = IndexHolder(settings.index_root, cache=settings.index_cache_dir)
    await holder.refresh()
    service = IndexService(
        app[DSN],
        holder,
        params=IndexParams(als=AlsParams(solver=settings.index_als_solver)),
        interval_seconds=settings.index_build_interval_seconds,
        min_new_events=settings.index_min_new_events,
    )
    app[INDEX] = holder
    app[INDEX_SERVICE] = service
    tasks = [asyncio.create_task(holder.watch(), name="index-watch")]
    if settings.run_index_builder:
        tasks.append(asyncio.create_task(service.schedule(), name="index-schedule"))
    yield
    for task in tasks:
        task.cancel()
    await service.close()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _watch_lag(pool: asyncpg.Pool, slow_timeout: float, every: float = 5.0) -> None:
    """Keep the lag gauges current even when nobody asks for the status."""
    while True:
        try:
            publish_lag(await projection_status(pool, lag_timeout=slow_timeout))
        except UNAVAILABLE:
            pass  # the gauges keep their last values until the database is back
        except Exception:
            log.exception("could not read the projections' lag")
        await asyncio.sleep(every)


def create_app(
    settings: Settings, dsn: str, *, clock: Callable[[], datetime] = utc_now
) -> web.Application:
    """The gateway for an already migrated database at `dsn`."""
    redaction.install()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_id_middleware, metrics_middleware, problem_middleware],
    )
    app[SETTINGS] = settings
    app[DSN] = dsn
    app[CLOCK] = clock
    app[OPENAPI] = build_spec(served_endpoints(settings))
    app.cleanup_ctx.extend(
        [
            _database,
            _event_store,
            _indexes,
            _services,
            _edge,
            _observability,
            _projectors,
            admin_context,
        ]
    )
    setup_routes(app)
    personalize.setup(app)
    setup_personalizer(app)
    return app
