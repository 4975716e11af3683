"""The middlewares that give each request its id and record its figures in the metrics."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.metrics import LATENCY, REQUESTS
from gateway.tracing import HEADER, REQUEST_ID, request_id_from

REQUEST_ID_KEY = web.RequestKey("request_id", str)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The caller's `X-Request-Id` (or a new one) for the request's log lines, the metadata of
    the events it appends, and the answer's header: a client, a log line and an event can be
    joined on it."""
    rid = request_id_from(request.headers.get(HEADER))
    # Kept on the request too: the access log is written after this context has ended.
    request[REQUEST_ID_KEY] = rid
    token = REQUEST_ID.set(rid)
    try:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            # aiohttp's own answers (a 404 for no route, a redirect) reach here as exceptions.
            exc.headers[HEADER] = rid
            raise
        response.headers[HEADER] = rid
        return response
    finally:
        REQUEST_ID.reset(token)


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
