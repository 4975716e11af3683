"""Prometheus metrics of this process and the middleware that records request figures."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
LAG_EVENTS = Gauge("segue_projection_lag_events", "Events not yet applied", ["projection"])
PROJECTION_FAILED = Gauge(
    "segue_projection_failed",
    "1 while the projector cannot fold the next event (it retries, never skips)",
    ["projection"],
)
LAG_SECONDS = Gauge(
    "segue_projection_lag_seconds", "Age of the oldest event not yet applied", ["projection"]
)
SCORES_REFRESHED = Gauge(
    "segue_item_scores_refreshed_timestamp_seconds",
    "When this process last read every item's reward posterior (Unix time)",
)
INDEX_LOADED = Gauge("segue_index_loaded", "1 if this process serves an index, 0 if none")
INDEX_DAMAGED = Gauge(
    "segue_index_degraded",
    "1 while the published index cannot be used as published (see /readyz for why): this "
    "process serves the version it loaded before, or no index (popularity fallback)",
)
INDEX_LOAD_FAILURES = Counter(
    "segue_index_load_failures_total", "Published index versions found damaged or unloadable"
)
