"""RFC 9457 problem+json responses, and the middleware that turns every error into one.

Every 4xx names what was wrong (`field`) and has a stable `type`; a 5xx never leaks internals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.http.access_log import route_of
from gateway.serving.errors import Refused
from gateway.store.api import StoreUnavailable
from gateway.store.database import UNAVAILABLE_ERRORS
from gateway.store.reads import NotSettled

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://segue.dev/problems/"


class ProblemError(Exception):
    """Raise from anywhere in a request to answer with a problem."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        errors: Sequence[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.field = field
        self.errors = list(errors) if errors is not None else None
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            body["field"] = self.field
        if self.errors is not None:
            body["errors"] = self.errors
        return body

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """('outcomes', 3, 'kind') -> 'outcomes[3].kind'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def from_validation(exc: ValidationError, prefix: str = "") -> ProblemError:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"].startswith("json_") for e in errors):
        return ProblemError(
            400, "malformed-json", "Malformed JSON", "the body is not valid JSON", field="body"
        )
    details = [
        {
            "field": field_path(e["loc"], prefix),
            "message": e["msg"],
            "type": e["type"],
        }
        for e in errors
    ]
    first = details[0]
    return ProblemError(
        422,
        "validation",
        "Invalid request",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        errors=details[:50],
    )


def unknown_query(name: str, allowed: Sequence[str]) -> ProblemError:
    """The /v1 routes are strict like the bodies: a misspelt `?asof=` must not silently mean
    "now"."""
    takes = ", ".join(sorted(allowed)) or "none"
    return ProblemError(
        422,
        "validation",
        "Invalid request",
        f"unknown query parameter {name!r}; this route takes: {takes}",
        field=name,
    )


_STATUS_KINDS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
    429: "rate-limited",
}


# Errors that mean "the database is out of reach right now": the client should retry later.
UNAVAILABLE: tuple[type[BaseException], ...] = (StoreUnavailable, *UNAVAILABLE_ERRORS)


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Refused as exc:
        return ProblemError(exc.status, exc.code, exc.title, exc.detail, field=exc.field).response()
    except ProblemError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        too_large = exc.status == 413
        return ProblemError(
            exc.status,
            _STATUS_KINDS.get(exc.status, "http-error"),
            exc.reason,
            "the request body is too large" if too_large else f"{exc.reason}: {request.path}",
            field="body" if too_large else None,
            headers={k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")},
        ).response()
    except NotSettled as exc:
        # Events recorded before the instant asked for may still be on their way: the answer
        # would change, so none is given yet (docs/decisions.md §83).
        return ProblemError(
            503,
            "not-settled",
            "Service Unavailable",
            str(exc),
            field="as_of" if "as_of" in request.query else None,
            headers={"Retry-After": "1"},
        ).response()
    except UNAVAILABLE as exc:
        log.warning("database unavailable: %r", exc)
        return ProblemError(
            503,
            "unavailable",
            "Service Unavailable",
            "the event store cannot be reached; retry later (resending is safe)",
            headers={"Retry-After": "1"},
        ).response()
    except Exception:
        # The route, not the path: paths carry listeners' ids, and logs outlive an erasure.
        log.exception("unhandled error in %s %s", request.method, route_of(request))
        return ProblemError(
            500, "internal", "Internal Server Error", "an unexpected error; it has been logged"
        ).response()
