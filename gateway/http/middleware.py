"""The middleware that records each request's figures in the process's metrics."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.metrics import LATENCY, REQUESTS


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    # The route template, not the path, so item ids don't explode the label set.
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    start = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        REQUESTS.labels(request.method, route, str(status)).inc()
        LATENCY.labels(request.method, route).observe(time.perf_counter() - start)
