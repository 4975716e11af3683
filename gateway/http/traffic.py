"""Request rates and latencies for the admin dashboard, read back from the Prometheus registry
that `http.middleware` records into.

Read through the registry's collection API (metric families and samples, by the names the
metrics describe themselves with), never the metric objects' insides, so a registry that gathers
several processes' figures (prometheus_client's multiprocess mode) can be handed in unchanged.
Counters only grow, so a rate needs two readings: `RequestWindow` keeps a few, taken when the
dashboard is read, and answers over the span since the newest reading at least a minute old
(or since this app started, while it is younger).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry

from gateway.metrics import LATENCY, REQUESTS

Key = tuple[str, str]  # (method, route template)


@dataclass(slots=True)
class Counts:
    """One route's counters at one reading (or the difference of two)."""

    statuses: dict[str, float] = field(default_factory=dict)
    # Cumulative counts per upper bound, ascending, the last one +Inf.
    buckets: dict[float, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def requests(self) -> float:
        return sum(self.statuses.values())

    def minus(self, before: Counts | None) -> Counts:
        if before is None:
            return self

        def less(now: float, then: float) -> float:
            # A counter below its earlier reading was reset (a worker replaced): count afresh.
            return now - then if now >= then else now

        return Counts(
            {s: less(n, before.statuses.get(s, 0.0)) for s, n in self.statuses.items()},
            {b: less(n, before.buckets.get(b, 0.0)) for b, n in self.buckets.items()},
            less(self.seconds, before.seconds),
        )

    def add(self, other: Counts) -> None:
        for s, n in other.statuses.items():
            self.statuses[s] = self.statuses.get(s, 0.0) + n
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0.0) + n
        self.seconds += other.seconds

    def quantile(self, q: float) -> float | None:
        """The `q` quantile of latency in seconds, interpolated within its bucket as
        Prometheus's histogram_quantile does; None without requests. A quantile in the +Inf
        bucket is reported as the highest finite bound."""
        bounds = sorted(self.buckets.items())
        if not bounds or bounds[-1][1] <= 0:
            return None
        rank = q * bounds[-1][1]
        lower, below = 0.0, 0.0
        for bound, cumulative in bounds:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower
                if cumulative == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return lower

    @property
    def mean(self) -> float | None:
        count = max(self.buckets.values(), default=0.0)
        return self.seconds / count if count else None


Reading = dict[Key, Counts]


# The names the metrics give themselves: segue_http_requests (its samples end in _total) and
# segue_http_request_seconds.
REQUESTS_FAMILY = next(iter(REQUESTS.describe())).name
LATENCY_FAMILY = next(iter(LATENCY.describe())).name


def read(registry: CollectorRegistry) -> Reading:
    """Every (method, route)'s request counters and latency histogram, as now."""
    out: dict[Key, Counts] = defaultdict(Counts)
    for family in registry.collect():
        if family.name == REQUESTS_FAMILY:
            for s in family.samples:
                if s.name == f"{REQUESTS_FAMILY}_total":
                    counts = out[(s.labels["method"], s.labels["route"])]
                    status = s.labels["status"]
                    counts.statuses[status] = counts.statuses.get(status, 0.0) + s.value
        elif family.name == LATENCY_FAMILY:
            for s in family.samples:
                counts = out[(s.labels["method"], s.labels["route"])]
                if s.name == f"{LATENCY_FAMILY}_bucket":
                    bound = float(s.labels["le"])
                    counts.buckets[bound] = counts.buckets.get(bound, 0.0) + s.value
                elif s.name == f"{LATENCY_FAMILY}_sum":
                    counts.seconds += s.value
    return dict(out)


@dataclass(frozen=True, slots=True)
class Window:
    seconds: float  # what the figures span
    routes: dict[Key, Counts]  # requests answered within it, by route

    def total(self) -> Counts:
        every = Counts()
        for counts in self.routes.values():
            every.add(counts)
        return every


class RequestWindow:
    """Readings of the registry, the first when the app starts; `figures()` answers with the
    requests since the newest reading at least `span` seconds old (else since the first), and
    keeps a reading every `step` seconds, so a dashboard polled every few seconds shows about
    the last minute."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        span: float = 60.0,
        step: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._span = span
        self._step = step
        self._clock = clock
        self._readings: deque[tuple[float, Reading]] = deque([(clock(), read(registry))])

    def figures(self) -> Window:
        now, current = self._clock(), read(self._registry)
        while len(self._readings) > 1 and now - self._readings[1][0] >= self._span:
            self._readings.popleft()
        then, before = self._readings[0]
        if now - self._readings[-1][0] >= self._step:
            self._readings.append((now, current))
        routes = {key: counts.minus(before.get(key)) for key, counts in current.items()}
        return Window(now - then, {k: c for k, c in routes.items() if c.requests > 0})
