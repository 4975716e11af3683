"""Prometheus metrics of this process, and how a scrape reads them.

Under `segue serve --workers N` each worker is a process of its own: the supervisor gives them a
shared directory (prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`), every
worker writes its samples there, and a scrape of any worker reads all of them. Counters and
histograms add up across workers (a dead worker's counts stay); each gauge says how its workers'
values combine (`multiprocess_mode`), over live workers only where a dead one's last value would
mislead.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "segue_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "segue_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
APPENDED = Counter("segue_events_appended_total", "Events appended (duplicates excluded)")
FLUSHES = Counter("segue_append_flushes_total", "Group-commit transactions committed")
APPEND_BATCH = Histogram(
    "segue_append_batch_events",
    "Events per group-commit transaction (how many appends one commit carried)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
APPEND_COMMIT = Histogram(
    "segue_append_commit_seconds",
    "Time to write and commit one group-commit transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OUTCOMES = Counter(
    "segue_outcomes_total", "Outcomes recorded, by kind (duplicates excluded)", ["kind"]
)
SLATES = Counter(
    "segue_slates_total",
    "Slates served, by surface and by the variant drawn: greedy, uniform (epsilon) or tail "
    "(tail_epsilon); the exploration rate is the share not greedy",
    ["surface", "branch"],
)
POOL_CONNECTIONS = Gauge(
    "segue_pool_connections",
    "The gateway's database connections: in_use, idle, and max (the pool's size), summed over "
    "live workers",
    ["state"],
    multiprocess_mode="livesum",
)
LAG_EVENTS = Gauge(
    "segue_projection_lag_events",
    "Events not yet applied",
    ["projection"],
    multiprocess_mode="livemax",
)
PROJECTION_FAILED = Gauge(
    "segue_projection_failed",
    "1 while the projector cannot fold the next event (it retries, never skips)",
    ["projection"],
    multiprocess_mode="livemax",
)
LAG_SECONDS = Gauge(
    "segue_projection_lag_seconds",
    "Age of the oldest event not yet applied",
    ["projection"],
    multiprocess_mode="livemax",
)
SCORES_REFRESHED = Gauge(
    "segue_item_scores_refreshed_timestamp_seconds",
    "When this process last read every item's reward posterior (Unix time; the oldest worker's)",
    multiprocess_mode="livemin",
)
INDEX_LOADED = Gauge(
    "segue_index_loaded",
    "1 if this process serves an index, 0 if none (the least of the workers)",
    multiprocess_mode="livemin",
)
INDEX_DAMAGED = Gauge(
    "segue_index_degraded",
    "1 while the published index cannot be used as published (see /readyz for why): this "
    "process serves the version it loaded before, or no index (popularity fallback)",
    multiprocess_mode="livemax",
)
INDEX_LOAD_FAILURES = Counter(
    "segue_index_load_failures_total", "Published index versions found damaged or unloadable"
)
INDEX_BUILT = Gauge(
    "segue_index_built_timestamp_seconds",
    "When the index served was built (Unix time; the oldest a worker serves); its age is "
    "time() minus this",
    multiprocess_mode="livemin",
)
INDEX_RECALL = Gauge(
    "segue_index_recall",
    "recall@10 of the index served against exact search, measured on a sample at build",
    multiprocess_mode="livemin",
)
INDEX_INFO = Gauge(
    "segue_index_info",
    "1 for the index version a worker serves",
    ["version"],
    multiprocess_mode="livemax",
)


def registry() -> CollectorRegistry:
    """What a scrape reads: every worker's samples in multiprocess mode, this process's
    otherwise."""
    if os.environ.get(MULTIPROC_ENV):
        gathered = CollectorRegistry()
        multiprocess.MultiProcessCollector(gathered)  # type: ignore[no-untyped-call]
        return gathered
    return REGISTRY


def scrape() -> tuple[bytes, str]:
    """The body and content type of a scrape."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters stay: they were counted)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
