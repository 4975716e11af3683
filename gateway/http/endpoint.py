"""What describes one route: the router, the scope check and /openapi.json all read these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.http.auth import Scope

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Param:
    """A query or path parameter as published; `example` is what the docs page fills in."""

    name: str
    schema: dict[str, object]
    description: str = ""
    required: bool = False
    example: object = None


@dataclass(frozen=True, slots=True)
class Variant:
    """Another request body worth showing, picked from a list on the docs page."""

    name: str
    summary: str
    request: Any


@dataclass(frozen=True, slots=True)
class Example:
    """One call of a route as /openapi.json shows it: the body sent (for routes that take one)
    and the success answer. The tests check both against the published schemas and send the
    request to a real gateway, so "Try it out" with an example works as shown."""

    response: Any
    request: Any = None
    # With variants, the docs page offers the request under this summary, then the variants.
    summary: str = ""
    variants: tuple[Variant, ...] = field(default=())
    # For routes that take an Idempotency-Key: one of their own, since a key sent again with
    # another body is refused.
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    scope: Scope | None = None
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: tuple[Param, ...] = field(default=())
    content_type: str = "application/json"
    # Takes an `Idempotency-Key` header: a retry with the same key is answered with the
    # original result instead of being done again.
    idempotent: bool = False
    example: Example | None = None
    # Path parameters whose schema is not the default id text (see openapi.path_param).
    path_params: tuple[Param, ...] = field(default=())
    # Every content type the success answer may have, when there are several (the assets of
    # /docs); else `content_type` alone.
    content_types: tuple[str, ...] = field(default=())
