"""Access logging that names the route, never the path: paths carry listeners' own ids
(`/v1/users/{user_id}/...`), and logs outlive an erasure."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from gateway.http.middleware import REQUEST_ID_KEY


def route_of(request: BaseRequest) -> str:
    """The matched route's template (`/v1/users/{user_id}/forget`), or `unmatched`."""
    if isinstance(request, web.Request):
        try:
            resource = request.match_info.route.resource
        except AssertionError:
            # A request the HTTP parser refused never reached the router: aiohttp answers it
            # itself (a plain 400) and still logs its access, with no match_info set.
            return "unmatched"
        if resource is not None:
            return resource.canonical
    return "unmatched"


class RouteAccessLogger(AbstractAccessLogger):
    """`METHOD route status seconds` per request; no path, query, peer address or headers."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_of(request)
        self.logger.info(
            "%s %s %d %.4f s",
            request.method,
            route,
            response.status,
            time,
            extra={
                "request_id": request.get(REQUEST_ID_KEY),
                "method": request.method,
                "route": route,
                "status": response.status,
                "seconds": round(time, 6),
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(20)  # INFO
